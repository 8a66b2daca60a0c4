//! Adam (Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015) over tensors,
//! written out so its moments can be checkpointed and restored exactly.

use tch::{Kind, Tensor};

/// Adam's state for one set of parameters, in a fixed (name-sorted) order.
#[derive(Debug)]
pub struct Adam {
    /// Parameter names, sorted.
    pub names: Vec<String>,
    params: Vec<Tensor>,
    /// First moments, one per parameter.
    pub m: Vec<Tensor>,
    /// Second moments, one per parameter.
    pub v: Vec<Tensor>,
    /// Steps taken (t in the paper).
    pub t: u64,
    lr: f64,
    betas: (f64, f64),
    eps: f64,
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
        }
    }

    /// Sets the learning rate for the next steps.
    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// The current learning rate.
    pub fn lr(&self) -> f64 {
        self.lr
    }

    /// Zeroes the parameters' gradients.
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.zero_grad();
        }
    }

    /// Scales gradients so their global L2 norm is at most `max_norm`, without reading the
    /// norm back to the host (no device sync).
    pub fn clip_grad_norm(&mut self, max_norm: f64) {
        let grads: Vec<Tensor> = self
            .params
            .iter()
            .map(Tensor::grad)
            .filter(Tensor::defined)
            .collect();
        if grads.is_empty() {
            return;
        }
        let sq: Vec<Tensor> = grads.iter().map(|g| g.square().sum(Kind::Float)).collect();
        let total = Tensor::stack(&sq, 0).sum(Kind::Float).sqrt();
        let coef = (max_norm / (total + 1e-6)).clamp_max(1.0);
        for mut g in grads {
            let _ = g.g_mul_(&coef);
        }
    }

    /// One Adam step: m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g², p ← p − lr·m̂/(√v̂ + ε) with the
    /// bias corrections m̂ = m/(1−β₁ᵗ), v̂ = v/(1−β₂ᵗ).
    pub fn step(&mut self) {
        self.t += 1;
        let (b1, b2) = self.betas;
        let bc1 = 1.0 - b1.powi(self.t as i32);
        let bc2 = 1.0 - b2.powi(self.t as i32);
        let step_size = self.lr / bc1;
        let bc2_sqrt = bc2.sqrt();
        tch::no_grad(|| {
            for ((p, m), v) in self.params.iter_mut().zip(&mut self.m).zip(&mut self.v) {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let _ = m.lerp_(&g, 1.0 - b1);
                let _ = v.lerp_(&g.square(), 1.0 - b2);
                let denom = (v.sqrt() / bc2_sqrt) + self.eps;
                let _ = p.addcdiv_(&(&*m * -step_size), &denom);
            }
        });
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
        let loss = w.square().sum(Kind::Float);
        loss.backward();
        adam.step();
        let after: Vec<f32> = Vec::try_from(&w.detach()).unwrap();
        for x in after {
            assert!((x - 0.9).abs() < 1e-6, "{x}");
        }
        // Second step by hand.
        adam.zero_grad();
        w.square().sum(Kind::Float).backward();
        adam.step();
        let (g1, g2) = (2.0f64, 1.8f64);
        let m = 0.9 * (0.1 * g1) + 0.1 * g2;
        let v = 0.999 * (0.001 * g1 * g1) + 0.001 * g2 * g2;
        let want = 0.9 - 0.1 * (m / (1.0 - 0.81)) / ((v / (1.0 - 0.999f64.powi(2))).sqrt() + 1e-8);
        let got = w.double_value(&[0]);
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let vs = nn::VarStore::new(Device::Cpu);
        let a = vs.root().var("a", &[3], nn::Init::Const(1.0));
        let b = vs.root().var("b", &[4], nn::Init::Const(1.0));
        ((&a * 10.0).sum(Kind::Float) + (&b * 10.0).sum(Kind::Float)).backward();
        let mut adam = Adam::new(&vs, 0.1, (0.9, 0.999), 1e-8);
        adam.clip_grad_norm(1.0);
        let norm = (a.grad().square().sum(Kind::Float) + b.grad().square().sum(Kind::Float)).sqrt();
        assert!((norm.double_value(&[]) - 1.0).abs() < 1e-4);
        // Below the bound nothing changes.
        adam.clip_grad_norm(100.0);
        assert!((a.grad().double_value(&[0]) - 10.0 / 700f64.sqrt()).abs() < 1e-4);
    }
}
