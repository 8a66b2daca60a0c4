//! Adam (Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015), its
//! infinity-norm variant Adamax (same paper, §7.1) and AdamW's decoupled weight decay
//! (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019) over tensors,
//! written out so their moments can be checkpointed and restored exactly.

use tch::{Kind, Tensor};

use crate::config::Optimizer;

/// The optimiser's state for one set of parameters, in a fixed (name-sorted) order.
#[derive(Debug)]
pub struct Adam {
    /// Parameter names, sorted.
    pub names: Vec<String>,
    params: Vec<Tensor>,
    /// First moments, one per parameter.
    pub m: Vec<Tensor>,
    /// Second moments (Adamax: the exponentially weighted infinity norms), one per parameter.
    pub v: Vec<Tensor>,
    /// Steps taken (t in the paper).
    pub t: u64,
    lr: f64,
    betas: (f64, f64),
    eps: f64,
    kind: Optimizer,
    weight_decay: f64,
}

impl Adam {
    /// Zero moments for the trainable variables of `vs`.
    pub fn new(vs: &tch::nn::VarStore, lr: f64, betas: (f64, f64), eps: f64) -> Self {
        let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let (names, params): (Vec<_>, Vec<_>) = named.into_iter().unzip();
        let m = params.iter().map(Tensor::zeros_like).collect();
        let v = params.iter().map(Tensor::zeros_like).collect();
        Self {
            names,
            params,
            m,
            v,
            t: 0,
            lr,
            betas,
            eps,
            kind: Optimizer::Adam,
            weight_decay: 0.0,
        }
    }

    /// Switches the update rule: Adam, AdamW with decoupled `weight_decay`, or Adamax.
    pub fn with_rule(mut self, kind: Optimizer, weight_decay: f64) -> Self {
        self.kind = kind;
        self.weight_decay = weight_decay;
        self
    }

    /// The parameters it updates, in [`names`](Self::names) order.
    pub fn params(&self) -> &[Tensor] {
        &self.params
    }

    /// Sets the learning rate for the next steps.
    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// The current learning rate.
    pub fn lr(&self) -> f64 {
        self.lr
    }

    /// Gradients of `loss` with respect to the parameters, freshly computed (as PyTorch's
    /// `zero_grad(set_to_none=True)` then `backward()`: nothing is zero-filled or accumulated).
    /// A parameter the loss does not reach gets a zero gradient.
    pub fn gradients(&self, loss: &Tensor) -> Vec<Tensor> {
        Tensor::run_backward(&[loss], &self.params, false, false)
            .into_iter()
            .zip(&self.params)
            .map(|(g, p)| if g.defined() { g } else { p.zeros_like() })
            .collect()
    }

    /// Scales `grads` so their global L2 norm is at most `max_norm`, without reading the norm
    /// back to the host (no device sync).
    pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) {
        if grads.is_empty() {
            return;
        }
        let sq: Vec<Tensor> = grads.iter().map(|g| g.square().sum(Kind::Float)).collect();
        let total = Tensor::stack(&sq, 0).sum(Kind::Float).sqrt();
        let coef = (max_norm / (total + 1e-6)).clamp_max(1.0);
        for g in grads {
            let _ = g.g_mul_(&coef);
        }
    }

    /// One step with `grads` (one per parameter, in [`names`](Self::names) order).
    ///
    /// Adam: m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g², p ← p − lr·m̂/(√v̂ + ε) with the bias
    /// corrections m̂ = m/(1−β₁ᵗ), v̂ = v/(1−β₂ᵗ). Two temporaries per parameter.
    /// AdamW: first p ← p·(1 − lr·λ), then the Adam step. Adamax: u ← max(β₂u, |g| + ε),
    /// p ← p − (lr/(1−β₁ᵗ))·m/u (PyTorch's `Adamax`).
    pub fn step(&mut self, grads: &[Tensor]) {
        match self.kind {
            Optimizer::Adam => self.adam_step(grads),
            Optimizer::Adamw => {
                let factor = 1.0 - self.lr * self.weight_decay;
                tch::no_grad(|| {
                    for p in &mut self.params {
                        let _ = p.g_mul_scalar_(factor);
                    }
                });
                self.adam_step(grads);
            }
            Optimizer::Adamax => self.adamax_step(grads),
        }
    }

    fn adamax_step(&mut self, grads: &[Tensor]) {
        self.t += 1;
        let (b1, b2) = self.betas;
        let step_size = self.lr / (1.0 - b1.powi(self.t as i32));
        tch::no_grad(|| {
            for (((p, m), u), g) in self
                .params
                .iter_mut()
                .zip(&mut self.m)
                .zip(&mut self.v)
                .zip(grads)
            {
                let _ = m.lerp_(g, 1.0 - b1);
                let bound = (&*u * b2).maximum(&(g.abs() + self.eps));
                u.copy_(&bound);
                let _ = p.addcdiv_(m, &(bound * -(1.0 / step_size)));
            }
        });
    }

    fn adam_step(&mut self, grads: &[Tensor]) {
        self.t += 1;
        let (b1, b2) = self.betas;
        let bc1 = 1.0 - b1.powi(self.t as i32);
        let bc2 = 1.0 - b2.powi(self.t as i32);
        let step_size = self.lr / bc1;
        let bc2_sqrt = bc2.sqrt();
        tch::no_grad(|| {
            for (((p, m), v), g) in self
                .params
                .iter_mut()
                .zip(&mut self.m)
                .zip(&mut self.v)
                .zip(grads)
            {
                let _ = m.lerp_(g, 1.0 - b1);
                let _ = v.lerp_(&g.square(), 1.0 - b2);
                // denom = −(√v/√bc2 + ε)/step_size, so p += m/denom is the Adam update.
                let mut denom = v.sqrt();
                let _ = denom.g_div_scalar_(bc2_sqrt);
                let _ = denom.g_add_scalar_(self.eps);
                let _ = denom.g_mul_scalar_(-1.0 / step_size);
                let _ = p.addcdiv_(m, &denom);
            }
        });
    }

    /// Gradients of `loss`, clipped to `clip` if given, then one step.
    pub fn backward_step(&mut self, loss: &Tensor, clip: Option<f64>) {
        let mut grads = self.gradients(loss);
        if let Some(c) = clip {
            Self::clip_grad_norm(&mut grads, c);
        }
        self.step(&grads);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, nn};

    #[test]
    fn first_steps_match_the_formula() {
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().var("w", &[2], nn::Init::Const(1.0));
        let mut adam = Adam::new(&vs, 0.1, (0.9, 0.999), 1e-8);
        // loss = Σ w² → g = 2w. First Adam step moves each weight by −lr·sign(g).
        adam.backward_step(&w.square().sum(Kind::Float), None);
        let after: Vec<f32> = Vec::try_from(&w.detach()).unwrap();
        for x in after {
            assert!((x - 0.9).abs() < 1e-6, "{x}");
        }
        // Second step by hand.
        adam.backward_step(&w.square().sum(Kind::Float), None);
        let (g1, g2) = (2.0f64, 1.8f64);
        let m = 0.9 * (0.1 * g1) + 0.1 * g2;
        let v = 0.999 * (0.001 * g1 * g1) + 0.001 * g2 * g2;
        let want = 0.9 - 0.1 * (m / (1.0 - 0.81)) / ((v / (1.0 - 0.999f64.powi(2))).sqrt() + 1e-8);
        let got = w.double_value(&[0]);
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }

    #[test]
    fn adamw_decays_then_steps_and_adamax_follows_its_formula() {
        // AdamW: loss 0 ⇒ g = 0 ⇒ only the decay moves w: w(1 − lr·λ).
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().var("w", &[1], nn::Init::Const(2.0));
        let mut opt = Adam::new(&vs, 0.1, (0.9, 0.999), 1e-8).with_rule(Optimizer::Adamw, 0.5);
        opt.backward_step(&(&w * 0.0).sum(Kind::Float), None);
        assert!((w.double_value(&[0]) - 2.0 * (1.0 - 0.05)).abs() < 1e-6);
        // With a gradient: decay first, then Adam's −lr·sign(g) first step.
        opt.backward_step(&w.square().sum(Kind::Float), None);
        let after_decay = 1.9 * 0.95;
        // t = 2 with m, v from a zero first gradient: m = 0.1g, v = 0.001g², m̂/√v̂ = sign(g)·
        // (0.1/0.19)/(√(0.001)/√(1−0.999²)) — computed below.
        let g = 2.0 * after_decay;
        let m = 0.1 * g;
        let v = 0.001 * g * g;
        let want =
            after_decay - 0.1 * (m / (1.0 - 0.81)) / ((v / (1.0 - 0.999f64.powi(2))).sqrt() + 1e-8);
        assert!(
            (w.double_value(&[0]) - want).abs() < 1e-5,
            "{}",
            w.double_value(&[0])
        );

        // Adamax, two steps by hand.
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().var("w", &[1], nn::Init::Const(1.0));
        let mut opt = Adam::new(&vs, 0.1, (0.9, 0.999), 1e-8).with_rule(Optimizer::Adamax, 0.0);
        let (mut m, mut u, mut want) = (0.0f64, 0.0f64, 1.0f64);
        for t in 1..=2 {
            let g = 2.0 * want;
            m = 0.9 * m + 0.1 * g;
            u = (0.999 * u).max(g.abs() + 1e-8);
            want -= 0.1 / (1.0 - 0.9f64.powi(t)) * m / u;
            opt.backward_step(&w.square().sum(Kind::Float), None);
            assert!((w.double_value(&[0]) - want).abs() < 1e-6, "step {t}");
        }
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let vs = nn::VarStore::new(Device::Cpu);
        let a = vs.root().var("a", &[3], nn::Init::Const(1.0));
        let b = vs.root().var("b", &[4], nn::Init::Const(1.0));
        let adam = Adam::new(&vs, 0.1, (0.9, 0.999), 1e-8);
        let loss = (&a * 10.0).sum(Kind::Float) + (&b * 10.0).sum(Kind::Float);
        let mut grads = adam.gradients(&loss);
        Adam::clip_grad_norm(&mut grads, 1.0);
        let norm = grads
            .iter()
            .map(|g| g.square().sum(Kind::Float))
            .fold(Tensor::from(0.0f32), |acc, x| acc + x)
            .sqrt();
        assert!((norm.double_value(&[]) - 1.0).abs() < 1e-4);
        // Below the bound nothing changes.
        Adam::clip_grad_norm(&mut grads, 100.0);
        assert!((grads[0].double_value(&[0]) - 10.0 / 700f64.sqrt()).abs() < 1e-4);
    }
}
