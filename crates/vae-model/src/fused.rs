//! Convolutions with their element-wise epilogue (an added tensor, then an activation) fused
//! into one oneDNN kernel: libtorch's `mkldnn::_convolution_pointwise` family, the kernels
//! torch.compile's CPU backend emits, which tch does not bind. `build.rs` compiles
//! `conv_pointwise.cpp` against the libtorch tch links and sets `cfg(conv_pointwise)`.
//!
//! The kernels have no backward: they serve inference (the importance-weighted evaluation)
//! only. Off the CPU, for other than f32, or without the kernels, each function computes the
//! same with separate libtorch ops.

use std::sync::OnceLock;

use tch::{Device, Kind, Tensor};

/// The activation applied last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Epilogue {
    /// None.
    Identity,
    /// SiLU (oneDNN's `swish`).
    Silu,
}

impl Epilogue {
    fn onednn_name(self) -> &'static std::ffi::CStr {
        match self {
            Self::Identity => c"none",
            Self::Silu => c"swish",
        }
    }

    fn apply(self, t: Tensor) -> Tensor {
        match self {
            Self::Identity => t,
            Self::Silu => t.silu(),
        }
    }
}

/// Whether the fused kernels are used: built with them, and this libtorch registers them.
pub(crate) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(ffi::available)
}

/// Whether `x` takes the fused path.
fn fused_for(x: &Tensor) -> bool {
    x.device() == Device::Cpu && x.kind() == Kind::Float && available()
}

/// epilogue(conv2d(x, w) + b) with `stride` and `padding`.
pub(crate) fn conv(
    x: &Tensor,
    (w, b): (&Tensor, &Tensor),
    (stride, padding): (i64, i64),
    epilogue: Epilogue,
) -> Tensor {
    if fused_for(x)
        && let Ok(y) = ffi::conv(
            x,
            None,
            w,
            b,
            [padding; 2],
            [stride; 2],
            Mode::Conv,
            epilogue,
        )
    {
        return y;
    }
    epilogue.apply(x.conv2d(w, Some(b), [stride, stride], [padding, padding], [1, 1], 1))
}

/// `acc += conv2d(x, w) + b` with `stride` and `padding`, in place: the fused kernel writes
/// into `acc` (channels-last) without reading a copy of it.
pub(crate) fn conv_accumulate(
    acc: &mut Tensor,
    x: &Tensor,
    (w, b): (&Tensor, &Tensor),
    (stride, padding): (i64, i64),
) {
    if fused_for(x)
        && is_channels_last(acc)
        && ffi::conv(
            x,
            Some(acc),
            w,
            b,
            [padding; 2],
            [stride; 2],
            Mode::Accumulate,
            Epilogue::Identity,
        )
        .is_ok()
    {
        return;
    }
    let _ = acc.g_add_(&x.conv2d(w, Some(b), [stride, stride], [padding, padding], [1, 1], 1));
}

/// Whether `t` (4-D) is dense with channels-last strides.
fn is_channels_last(t: &Tensor) -> bool {
    t.stride() == crate::blocks::channels_last_strides(&t.size())
}

/// Which kernel [`ffi::conv`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Conv,
    /// Into the added tensor, in place.
    Accumulate,
    Transposed,
}

/// epilogue(conv_transpose2d(x, w) + b) with `stride` and `padding` (w `[in, out, kh, kw]`).
pub(crate) fn conv_transpose(
    x: &Tensor,
    (w, b): (&Tensor, &Tensor),
    (stride, padding): (i64, i64),
    epilogue: Epilogue,
) -> Tensor {
    if fused_for(x)
        && let Ok(y) = ffi::conv(
            x,
            None,
            w,
            b,
            [padding; 2],
            [stride; 2],
            Mode::Transposed,
            epilogue,
        )
    {
        return y;
    }
    epilogue.apply(x.conv_transpose2d(
        w,
        Some(b),
        [stride, stride],
        [padding, padding],
        [0, 0],
        1,
        [1, 1],
    ))
}

/// While it lives, libtorch's oneDNN convolutions of f32 tensors take their products in bf16:
/// inputs and weights rounded to bf16, sums in f32 (oneDNN's bf16 math mode, what
/// `torch.backends.mkldnn.conv.fp32_precision = "bf16"` sets), which AMX tiles run several
/// times faster than f32 products. The mode is libtorch's, for the whole process: hold one only
/// around convolutions of one thread. Dropping it restores the mode before.
#[derive(Debug)]
pub(crate) struct Bf16Products {
    /// libtorch's mode before, as the C++ side encodes it.
    before: std::ffi::c_int,
}

impl Bf16Products {
    /// Sets the mode; `None` where this build or libtorch has none.
    pub(crate) fn enter() -> Option<Self> {
        if !available() {
            return None;
        }
        ffi::bf16_products_enter().map(|before| Self { before })
    }
}

impl Drop for Bf16Products {
    fn drop(&mut self) {
        ffi::bf16_products_exit(self.before);
    }
}

/// Whether libtorch's f32 convolutions take their products in bf16 now ([`Bf16Products`]).
#[cfg(test)]
pub(crate) fn bf16_products_on() -> bool {
    available() && ffi::bf16_products_on()
}

#[cfg(conv_pointwise)]
#[allow(unsafe_code)]
mod ffi {
    use std::ffi::{CStr, c_char, c_int};

    use tch::Tensor;
    use torch_sys::C_tensor;

    use super::{Epilogue, Mode};

    unsafe extern "C" {
        fn vae_model_conv_pointwise_available() -> c_int;
        fn vae_model_conv_pointwise(
            out: *mut *mut C_tensor,
            x: *const C_tensor,
            other: *const C_tensor,
            w: *const C_tensor,
            b: *const C_tensor,
            padding: *const i64,
            stride: *const i64,
            transposed: c_int,
            in_place: c_int,
            unary: *const c_char,
        ) -> *mut c_char;
        fn vae_model_free_error(message: *mut c_char);
        fn vae_model_conv_bf16_products_enter() -> c_int;
        fn vae_model_conv_bf16_products_exit(before: c_int);
        #[cfg(test)]
        fn vae_model_conv_bf16_products_on() -> c_int;
    }

    /// Sets the f32 convolutions' bf16 math mode; gives the mode before, or `None` where
    /// libtorch refuses.
    pub(super) fn bf16_products_enter() -> Option<c_int> {
        // SAFETY: no arguments; the C++ side catches every exception.
        match unsafe { vae_model_conv_bf16_products_enter() } {
            -1 => None,
            before => Some(before),
        }
    }

    pub(super) fn bf16_products_exit(before: c_int) {
        // SAFETY: an integer the C++ side returned from `enter`; it catches every exception.
        unsafe { vae_model_conv_bf16_products_exit(before) }
    }

    #[cfg(test)]
    pub(super) fn bf16_products_on() -> bool {
        // SAFETY: no arguments; a read of libtorch's global context.
        unsafe { vae_model_conv_bf16_products_on() != 0 }
    }

    pub(super) fn available() -> bool {
        // SAFETY: no arguments; the C++ side only queries libtorch's op registry.
        unsafe { vae_model_conv_pointwise_available() != 0 }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn conv(
        x: &Tensor,
        add: Option<&Tensor>,
        w: &Tensor,
        b: &Tensor,
        padding: [i64; 2],
        stride: [i64; 2],
        mode: Mode,
        epilogue: Epilogue,
    ) -> Result<Tensor, String> {
        let mut out: *mut C_tensor = std::ptr::null_mut();
        let other = add.map_or(std::ptr::null(), |a| a.as_ptr());
        // SAFETY: each tensor pointer is a live tch tensor (a `torch::Tensor*`) borrowed for the
        // call, the arrays hold two values each, and the name is NUL-terminated. The C++ side
        // catches every exception; on success it stores a tensor it allocated with `new`, which
        // `Tensor::from_ptr` takes ownership of; on failure it returns a message allocated with
        // `strdup`, freed once here.
        unsafe {
            let err = vae_model_conv_pointwise(
                &mut out,
                x.as_ptr(),
                other,
                w.as_ptr(),
                b.as_ptr(),
                padding.as_ptr(),
                stride.as_ptr(),
                c_int::from(mode == Mode::Transposed),
                c_int::from(mode == Mode::Accumulate),
                epilogue.onednn_name().as_ptr(),
            );
            if err.is_null() {
                Ok(Tensor::from_ptr(out))
            } else {
                let message = CStr::from_ptr(err).to_string_lossy().into_owned();
                vae_model_free_error(err);
                Err(message)
            }
        }
    }
}

/// Without the C++ part (no libtorch headers at build time): never available.
#[cfg(not(conv_pointwise))]
mod ffi {
    use tch::Tensor;

    use super::{Epilogue, Mode};

    pub(super) fn available() -> bool {
        false
    }

    pub(super) fn bf16_products_enter() -> Option<std::ffi::c_int> {
        None
    }

    pub(super) fn bf16_products_exit(_before: std::ffi::c_int) {}

    #[cfg(test)]
    pub(super) fn bf16_products_on() -> bool {
        false
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn conv(
        _x: &Tensor,
        _add: Option<&Tensor>,
        _w: &Tensor,
        _b: &Tensor,
        _padding: [i64; 2],
        _stride: [i64; 2],
        _mode: Mode,
        _epilogue: Epilogue,
    ) -> Result<Tensor, String> {
        Err("built without the fused convolutions".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    fn the_fused_kernels_compute_what_the_separate_ops_do() {
        let _g = crate::tests::lock();
        assert!(
            available(),
            "this build links libtorch with its headers: the fused kernels must be there"
        );
        tch::manual_seed(5);
        let opts = (Kind::Float, Device::Cpu);
        let x = Tensor::randn([6, 8, 7, 7], opts);
        let w = Tensor::randn([5, 8, 3, 3], opts) * 0.2;
        let b = Tensor::randn([5], opts);
        let add = Tensor::randn([6, 5, 7, 7], opts);
        let plain = x.conv2d(&w, Some(&b), [1, 1], [1, 1], [1, 1], 1);
        // Channels-last input, the layout the evaluation runs in, and plain NCHW.
        for x in [crate::blocks::to_channels_last(&x), x.shallow_clone()] {
            let fused = |add, e| ffi::conv(&x, add, &w, &b, [1, 1], [1, 1], Mode::Conv, e).unwrap();
            assert!(max_diff(&fused(None, Epilogue::Identity), &plain) < 1e-4);
            assert!(max_diff(&fused(None, Epilogue::Silu), &plain.silu()) < 1e-4);
            assert!(max_diff(&fused(Some(&add), Epilogue::Identity), &(&plain + &add)) < 1e-4);
            let activated = conv(&x, (&w, &b), (1, 1), Epilogue::Silu);
            assert!(max_diff(&activated, &plain.silu()) < 1e-4);
            // In place, into a channels-last tensor (fused) and into a plain one (not).
            for acc in [crate::blocks::to_channels_last(&add), add.copy()] {
                let mut acc = acc;
                let before = acc.data_ptr();
                conv_accumulate(&mut acc, &x, (&w, &b), (1, 1));
                assert_eq!(acc.data_ptr(), before, "in place");
                assert!(max_diff(&acc, &(&plain + &add)) < 1e-4);
            }
        }

        let wt = Tensor::randn([8, 3, 4, 4], opts) * 0.2;
        let bt = Tensor::randn([3], opts);
        let plain = x.conv_transpose2d(&wt, Some(&bt), [2, 2], [1, 1], [0, 0], 1, [1, 1]);
        let fused = ffi::conv(
            &x,
            None,
            &wt,
            &bt,
            [1, 1],
            [2, 2],
            Mode::Transposed,
            Epilogue::Identity,
        )
        .unwrap();
        assert_eq!(fused.size(), [6, 3, 14, 14]);
        assert!(max_diff(&fused, &plain) < 1e-4);
        // A transposed conv adds nothing: the C++ side refuses, in words.
        let err = ffi::conv(
            &x,
            Some(&add),
            &wt,
            &bt,
            [1, 1],
            [2, 2],
            Mode::Transposed,
            Epilogue::Identity,
        )
        .unwrap_err();
        assert!(err.contains("adds no tensor"), "{err}");
    }
}
