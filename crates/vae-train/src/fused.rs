//! libtorch's fused Adam and AdamW kernels (`at::_fused_adam_`, `at::_fused_adamw_`: the whole
//! update in one pass over each parameter), which tch does not bind. `build.rs` compiles
//! `fused_adam.cpp` against the libtorch tch links and sets `cfg(fused_adam)`; without it
//! [`step`] reports that it is unavailable and [`crate::Adam`] keeps its own update.

use tch::Tensor;

/// Whether this build has the fused kernels.
pub(crate) const AVAILABLE: bool = cfg!(fused_adam);

/// Hyper-parameters of one fused step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hyper {
    /// The step number t (1 for the first), for the bias corrections.
    pub step: u64,
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    /// AdamW's decoupled weight decay, or `None` for Adam.
    pub adamw_decay: Option<f64>,
}

/// One Adam (or AdamW) step on `params` in place, updating the moments `m` and `v`: the
/// kernel PyTorch runs for `torch.optim.Adam(fused=True)`. All tensors must be contiguous, of
/// one kind and on one device; `grads` match `params` in shape.
#[cfg(fused_adam)]
#[allow(unsafe_code)]
pub(crate) fn step(
    params: &[Tensor],
    grads: &[Tensor],
    m: &[Tensor],
    v: &[Tensor],
    h: Hyper,
) -> Result<(), String> {
    use std::ffi::{CStr, c_char, c_int};
    use torch_sys::C_tensor;

    unsafe extern "C" {
        fn vae_fused_adam(
            params: *const *const C_tensor,
            grads: *const *const C_tensor,
            exp_avgs: *const *const C_tensor,
            exp_avg_sqs: *const *const C_tensor,
            n: i64,
            step: f64,
            lr: f64,
            beta1: f64,
            beta2: f64,
            weight_decay: f64,
            eps: f64,
            adamw: c_int,
        ) -> *mut c_char;
        fn vae_free_error(message: *mut c_char);
    }

    let n = params.len();
    assert!(
        grads.len() == n && m.len() == n && v.len() == n,
        "one gradient and two moments per parameter"
    );
    let ptrs = |ts: &[Tensor]| ts.iter().map(Tensor::as_ptr).collect::<Vec<_>>();
    let (p, g, m, v) = (ptrs(params), ptrs(grads), ptrs(m), ptrs(v));
    // SAFETY: each pointer is a live tch tensor (a `torch::Tensor*`) borrowed for the call; the
    // C++ side copies the handles, catches every exception and returns a message it allocated
    // with `strdup`, which `vae_free_error` frees.
    let err = unsafe {
        vae_fused_adam(
            p.as_ptr(),
            g.as_ptr(),
            m.as_ptr(),
            v.as_ptr(),
            n as i64,
            h.step as f64,
            h.lr,
            h.betas.0,
            h.betas.1,
            h.adamw_decay.unwrap_or(0.0),
            h.eps,
            c_int::from(h.adamw_decay.is_some()),
        )
    };
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null return is a NUL-terminated string from `strdup`, freed once here.
    let message = unsafe {
        let s = CStr::from_ptr(err).to_string_lossy().into_owned();
        vae_free_error(err);
        s
    };
    Err(message)
}

/// Without the C++ part (no libtorch headers at build time): always unavailable.
#[cfg(not(fused_adam))]
pub(crate) fn step(
    _params: &[Tensor],
    _grads: &[Tensor],
    _m: &[Tensor],
    _v: &[Tensor],
    _h: Hyper,
) -> Result<(), String> {
    Err("built without the fused Adam kernel".into())
}
