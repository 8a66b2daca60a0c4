//! Adam (Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015), its
//! infinity-norm variant Adamax (same paper, §7.1) and AdamW's decoupled weight decay
//! (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019) over tensors,
//! written out so their moments can be checkpointed and restored exactly.

use tch::{Device, Kind, Tensor};

use crate::config::Optimizer;
use crate::fused;

/// Parameters are laid out in one flat buffer (see [`Adam::new`]), so each update is a handful
/// of tensor ops over all parameters at once, whatever their number.
const ALIGN: i64 = 16; // elements: 64 bytes of f32

/// The optimiser's state for one set of parameters, in a fixed (name-sorted) order.
///
/// [`Adam::new`] moves the parameters' data into one flat, 64-byte-aligned buffer (each
/// parameter becomes a view of it) and keeps the moments flat the same way, so a step costs
/// about ten tensor ops in all instead of about ten per parameter: a multi-tensor Adam, as
/// PyTorch's `foreach` implementation, which tch does not expose. On the CPU, Adam and AdamW
/// steps go through libtorch's fused kernel instead where the build has it (see [`Adam::step`]).
#[derive(Debug)]
pub struct Adam {
    /// Parameter names, sorted.
    names: Vec<String>,
    params: Vec<Tensor>,
    /// First moments, one per parameter (views of one flat buffer).
    m: Vec<Tensor>,
    /// Second moments (Adamax: the exponentially weighted infinity norms), one per parameter
    /// (views of one flat buffer).
    v: Vec<Tensor>,
    /// Steps taken (t in the paper).
    t: u64,
    lr: f64,
    betas: (f64, f64),
    eps: f64,
    kind: Optimizer,
    weight_decay: f64,
    flat: Option<Flat>,
    /// Whether libtorch's fused kernel may take the step (see [`Adam::step`]).
    pub(crate) allow_fused: bool,
}

/// The flat buffers behind the parameters and moments.
#[derive(Debug)]
struct Flat {
    params: Tensor,
    m: Tensor,
    v: Tensor,
    /// Zero tensors that fill the alignment gaps when gradients are concatenated: entry i
    /// follows parameter i (empty when none is needed).
    pads: Vec<Tensor>,
}

impl Flat {
    /// The gradients laid out as the flat parameters (one concatenation).
    fn grads(&self, grads: &[Tensor]) -> Tensor {
        Tensor::cat(&self.pieces(grads), 0)
    }

    /// The pieces [`grads`](Self::grads) concatenates: each gradient flattened, then its
    /// alignment gap.
    fn pieces(&self, grads: &[Tensor]) -> Vec<Tensor> {
        let mut pieces = Vec::with_capacity(2 * grads.len() + 1);
        for (g, pad) in grads.iter().zip(&self.pads) {
            pieces.push(g.reshape([-1]));
            if pad.numel() > 0 {
                pieces.push(pad.shallow_clone());
            }
        }
        pieces
    }
}

impl Adam {
    /// Zero moments for the trainable variables of `vs`.
    ///
    /// When all variables share one kind and device (always, for the models here), their data
    /// is moved into one flat buffer first: each variable keeps its name, shape, value and
    /// identity (it becomes a view), so modules built on `vs` see no difference.
    pub fn new(vs: &tch::nn::VarStore, lr: f64, betas: (f64, f64), eps: f64) -> Self {
        let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let (names, mut params): (Vec<_>, Vec<_>) = named.into_iter().unzip();
        let flat = flatten(&mut params);
        let (m, v) = match &flat {
            Some(f) => (views(&f.m, &params), views(&f.v, &params)),
            None => (
                params.iter().map(Tensor::zeros_like).collect(),
                params.iter().map(Tensor::zeros_like).collect(),
            ),
        };
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
            flat,
            allow_fused: true,
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

    /// The parameters' names, sorted: the order of every per-parameter list here.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The first and second moments (Adamax: the infinity norms), one tensor per parameter in
    /// [`names`](Self::names) order, as a checkpoint stores them.
    pub fn moments(&self) -> (&[Tensor], &[Tensor]) {
        (&self.m, &self.v)
    }

    /// Steps taken (t in the paper).
    pub fn steps(&self) -> u64 {
        self.t
    }

    /// Restores a saved state: the moments (one per parameter, in [`names`](Self::names)
    /// order, of the parameters' shapes) and the step count, so the next step continues
    /// exactly where the saved optimiser stopped.
    pub fn restore(&mut self, m: &[Tensor], v: &[Tensor], steps: u64) -> Result<(), String> {
        if m.len() != self.m.len() || v.len() != self.v.len() {
            return Err(format!(
                "{} and {} moments given for {} parameters",
                m.len(),
                v.len(),
                self.m.len()
            ));
        }
        for (name, (dst, src)) in self
            .names
            .iter()
            .zip(self.m.iter().zip(m).chain(self.v.iter().zip(v)))
        {
            if dst.size() != src.size() {
                return Err(format!(
                    "moment of {name} has shape {:?}, the parameter {:?}",
                    src.size(),
                    dst.size()
                ));
            }
        }
        tch::no_grad(|| {
            for (dst, src) in self.m.iter_mut().zip(m).chain(self.v.iter_mut().zip(v)) {
                dst.copy_(src);
            }
        });
        self.t = steps;
        Ok(())
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
    /// corrections m̂ = m/(1−β₁ᵗ), v̂ = v/(1−β₂ᵗ). AdamW: first p ← p·(1 − lr·λ), then the
    /// Adam step. Adamax: u ← max(β₂u, |g| + ε), p ← p − (lr/(1−β₁ᵗ))·m/u (PyTorch's
    /// `Adamax`).
    ///
    /// Adam and AdamW on f32 CPU parameters run libtorch's fused kernel (PyTorch's
    /// `Adam(fused=True)`: one pass over each parameter, no gradient concatenation) where the
    /// build has it; otherwise, and for Adamax and on GPUs, about ten tensor ops over the flat
    /// buffers.
    pub fn step(&mut self, grads: &[Tensor]) {
        if self.fused_step(grads) {
            return;
        }
        let flat_g = self.flat.as_ref().map(|f| f.grads(grads));
        self.step_with(grads, flat_g.as_ref());
    }

    /// Whether [`step`](Self::step) uses libtorch's fused kernel for these parameters.
    pub fn is_fused(&self) -> bool {
        fused::AVAILABLE
            && self.allow_fused
            && self.kind != Optimizer::Adamax
            && !self.params.is_empty()
            && self
                .params
                .iter()
                .all(|p| p.device() == Device::Cpu && p.kind() == Kind::Float)
    }

    /// The step through libtorch's fused kernel, when [`is_fused`](Self::is_fused).
    fn fused_step(&mut self, grads: &[Tensor]) -> bool {
        if !self.is_fused() {
            return false;
        }
        // The kernel walks each tensor's memory in order: gradients of channels-last
        // weights come back channels-last, so they are made contiguous first.
        let grads: Vec<Tensor> = grads
            .iter()
            .zip(&self.params)
            .map(|(g, p)| {
                assert_eq!(g.size(), p.size(), "one gradient per parameter, same shape");
                g.contiguous()
            })
            .collect();
        let h = fused::Hyper {
            step: self.t + 1,
            lr: self.lr,
            betas: self.betas,
            eps: self.eps,
            adamw_decay: (self.kind == Optimizer::Adamw).then_some(self.weight_decay),
        };
        // Parameters, moments and gradients are contiguous f32 CPU tensors of matching
        // shapes, which is all the kernel checks: a failure here is a bug, not bad input.
        tch::no_grad(|| fused::step(&self.params, &grads, &self.m, &self.v, h))
            .unwrap_or_else(|e| panic!("libtorch's fused Adam failed: {e}"));
        self.t += 1;
        true
    }

    fn step_with(&mut self, grads: &[Tensor], flat_g: Option<&Tensor>) {
        self.t += 1;
        let (b1, b2) = self.betas;
        let bc1 = 1.0 - b1.powi(self.t as i32);
        let step_size = self.lr / bc1;
        let (lr, wd, eps, kind) = (self.lr, self.weight_decay, self.eps, self.kind);
        let bc2_sqrt = (1.0 - b2.powi(self.t as i32)).sqrt();
        let update = |p: &mut Tensor, m: &mut Tensor, v: &mut Tensor, g: &Tensor| match kind {
            Optimizer::Adam | Optimizer::Adamw => {
                if kind == Optimizer::Adamw {
                    let _ = p.g_mul_scalar_(1.0 - lr * wd);
                }
                let _ = m.lerp_(g, 1.0 - b1);
                let _ = v.lerp_(&g.square(), 1.0 - b2);
                // denom = −(√v/√bc2 + ε)/step_size, so p += m/denom is the Adam update.
                let mut denom = v.sqrt();
                let _ = denom.g_div_scalar_(bc2_sqrt);
                let _ = denom.g_add_scalar_(eps);
                let _ = denom.g_mul_scalar_(-1.0 / step_size);
                let _ = p.addcdiv_(m, &denom);
            }
            Optimizer::Adamax => {
                let _ = m.lerp_(g, 1.0 - b1);
                let bound = (&*v * b2).maximum(&(g.abs() + eps));
                v.copy_(&bound);
                let _ = p.addcdiv_(m, &(bound * -(1.0 / step_size)));
            }
        };
        tch::no_grad(|| match (&mut self.flat, flat_g) {
            (Some(f), Some(g)) => update(&mut f.params, &mut f.m, &mut f.v, g),
            _ => {
                for (((p, m), v), g) in self
                    .params
                    .iter_mut()
                    .zip(&mut self.m)
                    .zip(&mut self.v)
                    .zip(grads)
                {
                    update(p, m, v, g);
                }
            }
        });
    }

    /// Gradients of `loss`, clipped to `clip` if given, then one step.
    pub fn backward_step(&mut self, loss: &Tensor, clip: Option<f64>) {
        let mut grads = self.gradients(loss);
        match &self.flat {
            Some(f) if !self.is_fused() => {
                // Clip on the flat gradient the update needs anyway: one norm, one scale.
                let mut g = f.grads(&grads);
                if let Some(c) = clip {
                    Self::clip_grad_norm(std::slice::from_mut(&mut g), c);
                }
                self.step_with(&grads, Some(&g));
            }
            _ => {
                if let Some(c) = clip {
                    Self::clip_grad_norm(&mut grads, c);
                }
                self.step(&grads);
            }
        }
    }

    /// Gradients of `loss` as one flat tensor followed by `tail` (a few f32 values to reduce
    /// with them), handed to `reduce` (a sum over processes, in place); then the gradients are
    /// scaled by `scale`, clipped to `clip` if given, and one step is taken. Returns the
    /// reduced tail. When `reduce` fails nothing is stepped.
    ///
    /// This is data-parallel training's step: one collective per step carries the gradients
    /// (in the parameters' flat layout, so the reduced buffer serves the update directly) and
    /// whatever the ranks must agree on.
    pub fn backward_step_reduced<E>(
        &mut self,
        loss: &Tensor,
        clip: Option<f64>,
        tail: &Tensor,
        scale: f64,
        reduce: impl FnOnce(&Tensor) -> Result<(), E>,
    ) -> Result<Tensor, E> {
        let grads = self.gradients(loss);
        // One concatenation: the gradients (in the flat layout) and the tail after them.
        let mut pieces = match &self.flat {
            Some(f) => f.pieces(&grads),
            None => grads.iter().map(|g| g.reshape([-1])).collect(),
        };
        let n: i64 = pieces.iter().map(|p| p.numel() as i64).sum();
        pieces.push(tail.to_kind(Kind::Float).reshape([-1]));
        let all = Tensor::cat(&pieces, 0);
        reduce(&all)?;
        let mut g = all.narrow(0, 0, n);
        let _ = g.g_mul_scalar_(scale);
        let reduced_tail = all.narrow(0, n, all.numel() as i64 - n);
        if let Some(c) = clip {
            // In place: the per-parameter gradients below are views of `g`.
            Self::clip_grad_norm(std::slice::from_mut(&mut g), c);
        }
        let grads = match &self.flat {
            Some(_) => views(&g, &self.params),
            None => {
                let mut offset = 0;
                self.params
                    .iter()
                    .map(|p| {
                        let k = p.numel() as i64;
                        let v = g.narrow(0, offset, k).view(p.size().as_slice());
                        offset += k;
                        v
                    })
                    .collect()
            }
        };
        if self.flat.is_some() && !self.is_fused() {
            self.step_with(&grads, Some(&g));
        } else {
            self.step(&grads);
        }
        Ok(reduced_tail)
    }

    /// Sets the step counter t, as another process's optimiser had it.
    pub(crate) fn set_steps(&mut self, t: u64) {
        self.t = t;
    }
}

/// Moves the parameters' data into one flat buffer, each at a 64-byte-aligned offset, and
/// returns the buffers; `None` (parameters untouched) when they differ in kind or device.
fn flatten(params: &mut [Tensor]) -> Option<Flat> {
    let first = params.first()?;
    let (kind, device) = (first.kind(), first.device());
    if params
        .iter()
        .any(|p| p.kind() != kind || p.device() != device)
    {
        return None;
    }
    let sizes: Vec<i64> = params.iter().map(|p| p.numel() as i64).collect();
    let padded: Vec<i64> = sizes
        .iter()
        .map(|n| (n + ALIGN - 1) / ALIGN * ALIGN)
        .collect();
    let total: i64 = padded.iter().sum();
    let flat = Tensor::zeros([total], (kind, device));
    let mut offset = 0;
    let mut pads = Vec::with_capacity(params.len());
    tch::no_grad(|| {
        for ((p, n), padded) in params.iter_mut().zip(&sizes).zip(&padded) {
            let view = flat.narrow(0, offset, *n).view(p.size().as_slice());
            view.shallow_clone().copy_(p);
            p.set_data(&view);
            pads.push(Tensor::zeros([padded - n], (kind, device)));
            offset += padded;
        }
    });
    Some(Flat {
        params: flat,
        m: Tensor::zeros([total], (kind, device)),
        v: Tensor::zeros([total], (kind, device)),
        pads,
    })
}

/// Views of `flat` shaped and placed as `params` are in the parameter buffer.
fn views(flat: &Tensor, params: &[Tensor]) -> Vec<Tensor> {
    let mut offset = 0;
    params
        .iter()
        .map(|p| {
            let n = p.numel() as i64;
            let v = flat.narrow(0, offset, n).view(p.size().as_slice());
            offset += (n + ALIGN - 1) / ALIGN * ALIGN;
            v
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, nn};

    #[test]
    fn the_fused_kernel_is_built_and_agrees_with_the_multi_tensor_update() {
        // build.rs compiles the kernel whenever libtorch's headers are beside its libraries
        // (a libtorch download and the PyTorch wheel both have them).
        let has_headers = option_env!("VAE_TRAIN_LIBTORCH_LIB").is_some_and(|lib| {
            std::path::Path::new(lib)
                .join("../include/ATen/ATen.h")
                .exists()
        });
        assert!(
            !has_headers || fused::AVAILABLE,
            "libtorch has headers but the fused kernel was not built"
        );
        for rule in [Optimizer::Adam, Optimizer::Adamw] {
            // Fixed, varied values (no global RNG: other tests run in parallel).
            let wave = |n: i64, f: f64| (Tensor::arange(n, (Kind::Float, Device::Cpu)) * f).sin();
            let run = |fused: bool| {
                let vs = nn::VarStore::new(Device::Cpu);
                let root = vs.root();
                let a = root.var_copy("a", &wave(7, 0.37));
                let w = root.var_copy("w", &wave(288, 0.11).view([6, 3, 4, 4]));
                let mut adam = Adam::new(&vs, 0.01, (0.9, 0.999), 1e-8).with_rule(rule, 0.1);
                adam.allow_fused = fused;
                assert_eq!(adam.is_fused(), fused && fused::AVAILABLE);
                let x = wave(5 * 3 * 9 * 9, 0.07).view([5, 3, 9, 9]);
                for _ in 0..5 {
                    // A channels-last weight, as the NHWC encoder uses: its gradient comes
                    // back channels-last.
                    let wl = channels_last(&w);
                    let y = x.conv2d(&wl, None::<&Tensor>, [1, 1], [0, 0], [1, 1], 1);
                    let loss = y.square().mean(Kind::Float) + (&a * &a).sum(Kind::Float);
                    adam.backward_step(&loss, Some(1.0));
                }
                assert_eq!(adam.t, 5);
                (
                    a.copy(),
                    w.copy(),
                    adam.m.iter().map(Tensor::copy).collect::<Vec<_>>(),
                )
            };
            let (a1, w1, m1) = run(true);
            let (a0, w0, m0) = run(false);
            let close = |x: &Tensor, y: &Tensor| (x - y).abs().max().double_value(&[]) < 1e-5;
            assert!(
                close(&a1, &a0) && close(&w1, &w0),
                "{rule:?}: parameters differ"
            );
            for (x, y) in m1.iter().zip(&m0) {
                assert!(close(x, y), "{rule:?}: moments differ");
            }
        }
    }

    /// `t` with channels-last strides (a differentiable copy).
    fn channels_last(t: &Tensor) -> Tensor {
        t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
    }

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
    fn flat_buffer_keeps_values_and_identity_and_steps_each_parameter() {
        // Sizes that are not multiples of the alignment, so the buffer has gaps.
        let vs = nn::VarStore::new(Device::Cpu);
        let a = vs.root().var("a", &[3], nn::Init::Const(1.0));
        let b = vs.root().var_copy(
            "b",
            &Tensor::arange(10, (Kind::Float, Device::Cpu)).view([2, 5]),
        );
        let mut adam = Adam::new(&vs, 0.1, (0.9, 0.999), 1e-8);
        // Values survive the move into the flat buffer.
        assert_eq!(Vec::<f32>::try_from(&a.detach()).unwrap(), vec![1.0; 3]);
        assert_eq!(b.size(), vec![2, 5]);
        assert_eq!(b.double_value(&[1, 4]), 9.0);
        // loss = Σ a² + Σ 3b: each parameter moves by −lr·sign(g) on the first step, and the
        // modules' handles (here `a`, `b`, and the store's own) see it.
        let loss = a.square().sum(Kind::Float) + (&b * 3.0).sum(Kind::Float);
        adam.backward_step(&loss, None);
        for x in Vec::<f32>::try_from(&a.detach()).unwrap() {
            assert!((x - 0.9).abs() < 1e-6, "{x}");
        }
        let stored = &vs.variables()["b"];
        for (i, x) in Vec::<f32>::try_from(&stored.detach().view([-1]))
            .unwrap()
            .into_iter()
            .enumerate()
        {
            assert!((x - (i as f32 - 0.1)).abs() < 1e-5, "b[{i}] = {x}");
        }
        // The moments are per-parameter views: m = (1 − β₁)g.
        let m_b: Vec<f32> = Vec::try_from(&adam.m[1].view([-1])).unwrap();
        assert_eq!(adam.m[1].size(), vec![2, 5]);
        assert!(m_b.iter().all(|m| (m - 0.3).abs() < 1e-6), "{m_b:?}");
        // With clipping (applied to the flat gradient) the step still moves against g.
        let before = b.double_value(&[0, 0]);
        adam.backward_step(&(&b * 3.0).sum(Kind::Float), Some(1e-3));
        assert!(b.double_value(&[0, 0]) < before);
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

    #[test]
    fn a_reduced_step_is_the_step_on_the_reduced_gradients() {
        // Two "ranks" whose losses differ: summing their flat gradients in `reduce` and
        // scaling by 1/2 must step as one optimiser on the mean loss would, with and without
        // clipping, on the fused and the flat update; the tail comes back reduced.
        let _guard = crate::tests::lock();
        for (fused, clip) in [(true, Some(0.5)), (false, Some(0.5)), (false, None)] {
            let make = |seed| {
                tch::manual_seed(seed);
                let vs = nn::VarStore::new(Device::Cpu);
                let a = vs.root().var(
                    "a",
                    &[3, 5],
                    nn::Init::Randn {
                        mean: 0.0,
                        stdev: 1.0,
                    },
                );
                let b = vs.root().var(
                    "b",
                    &[7],
                    nn::Init::Randn {
                        mean: 0.0,
                        stdev: 1.0,
                    },
                );
                let mut adam = Adam::new(&vs, 0.01, (0.9, 0.999), 1e-8);
                adam.allow_fused = fused;
                (vs, a, b, adam)
            };
            let loss = |a: &Tensor, b: &Tensor, k: f64| {
                (a * k).sin().sum(Kind::Float) + (b.square() * k).sum(Kind::Float)
            };
            let (_v1, a1, b1, mut one) = make(7);
            let (_v2, a2, b2, mut split) = make(7);
            for _ in 0..3 {
                let mean = (loss(&a1, &b1, 1.0) + loss(&a1, &b1, 3.0)) * 0.5;
                one.backward_step(&mean, clip);
                // Rank 1's gradient, as its all-reduce would contribute it.
                let other = split.gradients(&loss(&a2, &b2, 3.0));
                let other_flat = match &split.flat {
                    Some(f) => f.grads(&other),
                    None => Tensor::cat(
                        &other.iter().map(|g| g.reshape([-1])).collect::<Vec<_>>(),
                        0,
                    ),
                };
                let tail = Tensor::from_slice(&[1.0f32, 2.0]);
                let reduced = split
                    .backward_step_reduced(&loss(&a2, &b2, 1.0), clip, &tail, 0.5, |all| {
                        let n = other_flat.numel() as i64;
                        let _ = all.narrow(0, 0, n).g_add_(&other_flat);
                        let _ = all.narrow(0, n, 2).g_mul_scalar_(2.0);
                        Ok::<(), ()>(())
                    })
                    .unwrap();
                assert_eq!(Vec::<f32>::try_from(&reduced).unwrap(), vec![2.0, 4.0]);
            }
            for (p, q) in [(&a1, &a2), (&b1, &b2)] {
                let d = (p - q).abs().max().double_value(&[]);
                assert!(d < 1e-5, "fused {fused}, clip {clip:?}: {d}");
            }
            assert_eq!(one.steps(), split.steps());
        }
    }
}
