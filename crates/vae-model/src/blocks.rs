//! The pieces every model kind is built from: layer constructors with PyTorch's
//! initialisation, layers computed in a chosen precision, the residual cell, and the checks
//! of the [`Vae`](crate::Vae) methods' arguments.

use tch::{Device, Kind, Tensor, nn};

use crate::error::ModelError;

/// PyTorch's default initialisation (kaiming-uniform with a = √5): U(−1/√fan_in, 1/√fan_in)
/// for weights and biases alike, so a fresh model matches a fresh `torch.nn` one in law.
pub fn torch_default(fan_in: i64) -> nn::Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    nn::Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// A dense layer `i → o` with PyTorch's initialisation.
pub fn linear(p: nn::Path<'_>, i: i64, o: i64) -> nn::Linear {
    let init = torch_default(i);
    nn::linear(
        p,
        i,
        o,
        nn::LinearConfig {
            ws_init: init,
            bs_init: Some(init),
            bias: true,
        },
    )
}

/// A `k`×`k` conv `i → o` with `stride` and `padding` and PyTorch's initialisation.
fn conv_k(p: nn::Path<'_>, i: i64, o: i64, k: i64, stride: i64, padding: i64) -> nn::Conv2D {
    let init = torch_default(i * k * k);
    let cfg = nn::ConvConfig {
        stride,
        padding,
        ws_init: init,
        bs_init: init,
        ..Default::default()
    };
    nn::conv2d(p, i, o, k, cfg)
}

/// A stride-2 4×4 conv with padding 1 `i → o`: halves the resolution.
pub fn conv_down(p: nn::Path<'_>, i: i64, o: i64) -> nn::Conv2D {
    conv_k(p, i, o, 4, 2, 1)
}

/// A 3×3 conv with padding 1 `i → o`: keeps the resolution.
pub fn conv3(p: nn::Path<'_>, i: i64, o: i64) -> nn::Conv2D {
    conv_k(p, i, o, 3, 1, 1)
}

/// A 1×1 conv `i → o`.
pub fn conv1(p: nn::Path<'_>, i: i64, o: i64) -> nn::Conv2D {
    conv_k(p, i, o, 1, 1, 0)
}

/// A stride-2 4×4 transposed conv with padding 1 `i → o`: doubles the resolution.
pub fn conv_up(p: nn::Path<'_>, i: i64, o: i64) -> nn::ConvTranspose2D {
    // PyTorch takes a transposed conv's fan-in from weight dim 1: out_channels · k².
    let init = torch_default(o * 16);
    let cfg = nn::ConvTransposeConfig {
        stride: 2,
        padding: 1,
        ws_init: init,
        bs_init: init,
        ..Default::default()
    };
    nn::conv_transpose2d(p, i, o, 4, cfg)
}

/// `t` in `kind` (a shallow copy when it already is).
pub fn cast(t: &Tensor, kind: Kind) -> Tensor {
    if t.kind() == kind {
        t.shallow_clone()
    } else {
        t.to_kind(kind)
    }
}

/// `t` (4-D) with channels-last (NHWC) strides: a differentiable copy, or `t` itself when
/// it already has them. Unlike permute + contiguous, it also gives a size-1 channel
/// dimension unit stride, which libtorch reads to choose the layout of a one-channel conv.
pub fn to_channels_last(t: &Tensor) -> Tensor {
    let size = t.size();
    let strides = channels_last_strides(&size);
    if t.stride() == strides {
        return t.shallow_clone();
    }
    let mut out = Tensor::empty_strided(&size, strides, (t.kind(), t.device()));
    out.copy_(t);
    out
}

/// The weight `[4·o, i, 3, 3]` and bias `[4·o]` of the 3×3 conv (padding 1) whose output,
/// pixel-shuffled by 2, is the stride-2 k4 p1 transposed conv with `weight` `[i, o, 4, 4]` and
/// `bias` `[o]` (the sub-pixel convolution of Shi et al., "Real-Time Single Image and Video
/// Super-Resolution Using an Efficient Sub-Pixel Convolutional Neural Network", CVPR 2016).
///
/// Output pixel (2p + a, 2q + b) of the transposed conv sums input pixel (p + di, q + dj) times
/// kernel tap (a + 1 − 2·di, b + 1 − 2·dj) over the taps inside the 4×4 kernel, which is the 3×3
/// conv's tap (di + 1, dj + 1) on output channel 4·o + 2·a + b.
pub fn subpixel_weight(weight: &Tensor, bias: &Tensor) -> (Tensor, Tensor) {
    let (i, o) = (weight.size()[0], weight.size()[1]);
    let w = Tensor::zeros([o, 2, 2, i, 3, 3], (weight.kind(), weight.device()));
    for a in 0..2i64 {
        for b in 0..2i64 {
            for di in -1..=1i64 {
                for dj in -1..=1i64 {
                    let (kh, kw) = (a + 1 - 2 * di, b + 1 - 2 * dj);
                    if (0..4).contains(&kh) && (0..4).contains(&kw) {
                        let mut tap = w
                            .select(1, a)
                            .select(1, b)
                            .select(2, di + 1)
                            .select(2, dj + 1);
                        tap.copy_(&weight.select(2, kh).select(2, kw).tr());
                    }
                }
            }
        }
    }
    (
        w.reshape([4 * o, i, 3, 3]),
        bias.repeat_interleave_self_int(4, None, None),
    )
}

/// The strides of a dense channels-last (NHWC) tensor of `size` `[N, C, H, W]`.
pub(crate) fn channels_last_strides(size: &[i64]) -> [i64; 4] {
    let (c, h, w) = (size[1], size[2], size[3]);
    [c * h * w, 1, w * c, c]
}

/// How a conv's input is laid out in memory; the function computed is the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// libtorch's default, NCHW.
    Plain,
    /// Channels-last (NHWC): the weight goes to the conv in NHWC strides, so libtorch runs
    /// the conv and its output in NHWC (see [`ConvVae`](crate::ConvVae)'s layout note).
    ChannelsLast,
}

impl Layout {
    /// The layout of a model's convs computing in `kind`: channels-last in bf16 where
    /// `bf16_channels_last` (the model was built on a CPU whose bf16 kernels compute in NHWC,
    /// [`CpuFeatures::bf16_channels_last`](crate::CpuFeatures::bf16_channels_last)), plain
    /// otherwise.
    pub(crate) fn for_kind(kind: Kind, bf16_channels_last: bool) -> Self {
        if bf16_channels_last && kind == Kind::BFloat16 {
            Self::ChannelsLast
        } else {
            Self::Plain
        }
    }
}

/// A conv with `stride` and `padding` computed in `kind`: the weights are cast per call, so
/// with bf16 the arithmetic is reduced-precision while the f32 weights receive the gradients
/// (autocast's rule). With f32 and [`Layout::Plain`] this is exactly `nn::Conv2D`'s forward.
pub fn conv_in(
    c: &nn::Conv2D,
    x: &Tensor,
    (stride, padding): (i64, i64),
    kind: Kind,
    layout: Layout,
) -> Tensor {
    let bias = c.bs.as_ref().map(|b| cast(b, kind));
    let weight = cast(&c.ws, kind);
    let weight = match layout {
        Layout::Plain => weight,
        Layout::ChannelsLast => to_channels_last(&weight),
    };
    x.conv2d(
        &weight,
        bias.as_ref(),
        [stride, stride],
        [padding, padding],
        [1, 1],
        1,
    )
}

/// A dense layer computed in `kind` (see [`conv_in`]).
pub fn linear_in(l: &nn::Linear, x: &Tensor, kind: Kind) -> Tensor {
    let bias = l.bs.as_ref().map(|b| cast(b, kind));
    x.linear(&cast(&l.ws, kind), bias.as_ref())
}

/// A stride-2, k4, p1 transposed conv whose weight may be borrowed from an encoder conv.
#[derive(Debug)]
pub struct Deconv {
    weight: Tensor,
    bias: Tensor,
}

impl Deconv {
    /// With its own weight, `i → o`.
    pub fn own(p: nn::Path<'_>, i: i64, o: i64) -> Self {
        let d = conv_up(p, i, o);
        Self {
            weight: d.ws,
            bias: d.bs.expect("deconvs have biases"),
        }
    }

    /// Shares `weight` (an encoder conv's `[o_enc, i_enc, 4, 4]`, which is exactly the shape
    /// of the mirrored `ConvTranspose(o_enc → i_enc)`); only the bias is new.
    pub fn tied(p: nn::Path<'_>, weight: &Tensor) -> Self {
        let out = weight.size()[1];
        let bias = p.var("bias", &[out], torch_default(out * 16));
        Self {
            weight: weight.shallow_clone(),
            bias,
        }
    }

    /// The weight `[i, o, 4, 4]` and bias `[o]`.
    pub(crate) fn weight_bias(&self) -> (&Tensor, &Tensor) {
        (&self.weight, &self.bias)
    }

    /// The transposed conv of `x`, computed in `kind`; with [`Layout::ChannelsLast`] the
    /// weight goes to it in NHWC strides, as in [`conv_in`] (for a bf16 input on the CPU only:
    /// f32's native kernel for few channels, below, needs NCHW).
    pub fn forward(&self, x: &Tensor, kind: Kind, layout: Layout) -> Tensor {
        let (weight, bias) = (cast(&self.weight, kind), cast(&self.bias, kind));
        // On the CPU, libtorch's default (oneDNN) transposed conv is slow for very few output
        // channels (the last layer, to 1 channel; docs/performance.md); its native im2col path
        // is faster there in f32 (oneDNN keeps bf16). Both compute the same function.
        let cpu = x.device() == Device::Cpu;
        let weight = match layout {
            Layout::ChannelsLast if cpu && kind == Kind::BFloat16 => to_channels_last(&weight),
            _ => weight,
        };
        if cpu && self.weight.size()[1] <= 4 && kind == Kind::Float {
            x.slow_conv_transpose2d(&weight, [4, 4], Some(&bias), [2, 2], [1, 1], [0, 0], [1, 1])
        } else if cpu && kind == Kind::BFloat16 {
            bias_added_apart(
                &x.conv_transpose2d(&weight, None::<&Tensor>, [2, 2], [1, 1], [0, 0], 1, [1, 1]),
                &bias,
            )
        } else {
            x.conv_transpose2d(&weight, Some(&bias), [2, 2], [1, 1], [0, 0], 1, [1, 1])
        }
    }
}

/// `y + bias` per channel, for a bf16 transposed conv on the CPU computed without its bias:
/// oneDNN computes that bias's gradient with its scalar reference code, libtorch's autograd sums
/// it with vector code (docs/performance.md). The same function.
fn bias_added_apart(y: &Tensor, bias: &Tensor) -> Tensor {
    y + bias.view([1, -1, 1, 1])
}

/// A residual cell keeping width and resolution: x + Conv3x3(σ(Conv3x3(a))), where a is x
/// already activated by the caller and σ the activation (He et al., "Deep Residual Learning
/// for Image Recognition", CVPR 2016; with a = σ(x), the pre-activation cell of "Identity
/// Mappings in Deep Residual Networks", ECCV 2016). Its variables are `conv1` and `conv2`.
#[derive(Debug)]
pub struct ResidualCell {
    conv1: nn::Conv2D,
    conv2: nn::Conv2D,
}

impl ResidualCell {
    /// A cell of width `c` under `p`.
    pub fn new(p: nn::Path<'_>, c: i64) -> Self {
        Self {
            conv1: conv3(&p / "conv1", c, c),
            conv2: conv3(&p / "conv2", c, c),
        }
    }

    /// `n` cells of width `c`, named `name(j)` under `p`.
    pub fn stack(p: &nn::Path<'_>, c: i64, n: usize, name: impl Fn(usize) -> String) -> Vec<Self> {
        (0..n).map(|j| Self::new(p / name(j), c)).collect()
    }

    /// The two convs, in the order they run.
    pub(crate) fn convs(&self) -> [&nn::Conv2D; 2] {
        [&self.conv1, &self.conv2]
    }

    /// x + Conv3x3(σ(Conv3x3(`activated`))) for `activated` = x, or x after its activation.
    pub fn forward(
        &self,
        x: &Tensor,
        activated: &Tensor,
        act: fn(Tensor) -> Tensor,
        kind: Kind,
        layout: Layout,
    ) -> Tensor {
        let inner = act(conv_in(&self.conv1, activated, (1, 1), kind, layout));
        x + conv_in(&self.conv2, &inner, (1, 1), kind, layout)
    }
}

/// `x` must be images of shape `[N, C, H, W]` = `[N, shape...]`, floating point.
pub fn check_images(x: &Tensor, shape: [i64; 3]) -> Result<(), ModelError> {
    let size = x.size();
    if size.len() == 4 && size[1..] == shape && x.is_floating_point() {
        Ok(())
    } else {
        Err(ModelError::Shape {
            what: "images",
            expected: format!(
                "[N, {}, {}, {}] (floating point)",
                shape[0], shape[1], shape[2]
            ),
            found: size,
        })
    }
}

/// `t` (`what`) must be floats of shape `[n, width]` (any number of rows when `n` is `None`).
pub fn check_rows(
    what: &'static str,
    t: &Tensor,
    n: Option<i64>,
    width: i64,
) -> Result<(), ModelError> {
    let size = t.size();
    let rows_ok = n.is_none_or(|n| size.first() == Some(&n));
    if size.len() == 2 && size[1] == width && rows_ok && t.is_floating_point() {
        Ok(())
    } else {
        Err(ModelError::Shape {
            what,
            expected: match n {
                Some(n) => format!("[{n}, {width}] (floating point)"),
                None => format!("[N, {width}] (floating point)"),
            },
            found: size,
        })
    }
}

/// The compute kinds the built-in models support: f32, or bf16 for reduced precision.
pub fn check_compute_kind(kind: Kind) -> Result<Kind, ModelError> {
    match kind {
        Kind::Float | Kind::BFloat16 => Ok(kind),
        other => Err(ModelError::InvalidArgument(format!(
            "compute kind must be Float or BFloat16, got {other:?}"
        ))),
    }
}

/// k importance samples must be at least one.
pub fn check_samples(k: i64) -> Result<(), ModelError> {
    if k < 1 {
        return Err(ModelError::InvalidArgument(format!(
            "importance samples k must be at least 1, got {k}"
        )));
    }
    Ok(())
}

/// At least one image must be asked for (`verb`: what is done with them).
pub fn check_count(n: i64, verb: &str) -> Result<(), ModelError> {
    if n < 1 {
        return Err(ModelError::InvalidArgument(format!(
            "cannot {verb} {n} images"
        )));
    }
    Ok(())
}

/// Image sizes must be positive.
pub fn check_input_size([c, h, w]: [i64; 3]) -> Result<(), ModelError> {
    if c < 1 || h < 1 || w < 1 {
        return Err(ModelError::InvalidConfig(format!(
            "input size must be positive, got {c}x{h}x{w} (C x H x W)"
        )));
    }
    Ok(())
}
