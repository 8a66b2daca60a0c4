use tch::nn;
use tch::{Device, Kind, Tensor};

use crate::config::{ConvVaeConfig, ModelConfig, Prior};
use crate::error::ModelError;
use crate::loss;
use crate::pixel::PixelCnn;
use crate::vae::{
    ElboTerms, IwaeTerms, Posterior, Vae, check_compute_kind, check_images, check_samples,
};

/// PyTorch's default initialisation (kaiming-uniform with a = √5): U(−1/√fan_in, 1/√fan_in)
/// for weights and biases alike, so a fresh model matches a fresh `torch.nn` one in law.
pub(crate) fn torch_default(fan_in: i64) -> nn::Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    nn::Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

pub(crate) fn linear(p: nn::Path<'_>, i: i64, o: i64) -> nn::Linear {
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

pub(crate) fn conv(p: nn::Path<'_>, i: i64, o: i64) -> nn::Conv2D {
    let init = torch_default(i * 16);
    let cfg = nn::ConvConfig {
        stride: 2,
        padding: 1,
        ws_init: init,
        bs_init: init,
        ..Default::default()
    };
    nn::conv2d(p, i, o, 4, cfg)
}

pub(crate) fn deconv(p: nn::Path<'_>, i: i64, o: i64) -> nn::ConvTranspose2D {
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
pub(crate) fn cast(t: &Tensor, kind: Kind) -> Tensor {
    if t.kind() == kind {
        t.shallow_clone()
    } else {
        t.to_kind(kind)
    }
}

/// `t` (4-D) with channels-last (NHWC) strides: a differentiable copy, or `t` itself when
/// it already has them. Unlike permute + contiguous, it also gives a size-1 channel
/// dimension unit stride, which libtorch reads to choose the layout of a one-channel conv.
pub(crate) fn to_channels_last(t: &Tensor) -> Tensor {
    let size = t.size();
    let (c, h, w) = (size[1], size[2], size[3]);
    let strides = [c * h * w, 1, w * c, c];
    if t.stride() == strides {
        return t.shallow_clone();
    }
    let mut out = Tensor::empty_strided(&size, strides, (t.kind(), t.device()));
    out.copy_(t);
    out
}

/// A k×k conv with padding 1 computed in `kind`: the weights are cast per call, so with
/// bf16 the arithmetic is reduced-precision while the f32 weights receive the gradients
/// (autocast's rule). With f32 this is exactly `nn::Conv2D`'s forward.
///
/// With `channels_last`, the weight goes to the conv in NHWC strides, so libtorch runs the
/// conv and its output in NHWC (see [`ConvVae`]'s layout note); the function is the same.
fn conv_in(c: &nn::Conv2D, x: &Tensor, stride: i64, kind: Kind, channels_last: bool) -> Tensor {
    let bias = c.bs.as_ref().map(|b| cast(b, kind));
    let weight = cast(&c.ws, kind);
    let weight = if channels_last {
        to_channels_last(&weight)
    } else {
        weight
    };
    x.conv2d(&weight, bias.as_ref(), [stride, stride], [1, 1], [1, 1], 1)
}

/// A dense layer computed in `kind` (see [`conv_in`]).
pub(crate) fn linear_in(l: &nn::Linear, x: &Tensor, kind: Kind) -> Tensor {
    let bias = l.bs.as_ref().map(|b| cast(b, kind));
    x.linear(&cast(&l.ws, kind), bias.as_ref())
}

/// x ↦ ReLU(x + Conv3x3(ReLU(Conv3x3(x)))): a residual block keeping width and resolution
/// (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016).
#[derive(Debug)]
struct ResBlock {
    conv1: nn::Conv2D,
    conv2: nn::Conv2D,
}

impl ResBlock {
    fn new(p: nn::Path<'_>, c: i64) -> Self {
        let init = torch_default(c * 9);
        let cfg = nn::ConvConfig {
            padding: 1,
            ws_init: init,
            bs_init: init,
            ..Default::default()
        };
        Self {
            conv1: nn::conv2d(&p / "conv1", c, c, 3, cfg),
            conv2: nn::conv2d(&p / "conv2", c, c, 3, cfg),
        }
    }

    fn forward(&self, x: &Tensor, kind: Kind, channels_last: bool) -> Tensor {
        self.pre_activation(x, kind, channels_last).relu_()
    }

    /// x + Conv3x3(ReLU(Conv3x3(x))): the block before its final ReLU.
    fn pre_activation(&self, x: &Tensor, kind: Kind, channels_last: bool) -> Tensor {
        let inner = conv_in(&self.conv1, x, 1, kind, channels_last).relu_();
        x + conv_in(&self.conv2, &inner, 1, kind, channels_last)
    }

    fn stack(p: &nn::Path<'_>, name: &str, c: i64, n: usize) -> Vec<Self> {
        (0..n)
            .map(|j| Self::new(p / name / j.to_string(), c))
            .collect()
    }
}

fn apply_blocks(mut h: Tensor, blocks: &[ResBlock], kind: Kind, channels_last: bool) -> Tensor {
    for b in blocks {
        h = b.forward(&h, kind, channels_last);
    }
    h
}

/// The VampPrior's K pseudo-inputs, stored as logits: u_k = sigmoid(`logits_k`) ∈ (0, 1)ᴰ.
#[derive(Debug)]
struct PseudoInputs {
    logits: Tensor,
}

/// q(z | x): stride-2 convs, an optional dense layer, and one linear head giving [μ, log σ²].
#[derive(Debug)]
struct Encoder {
    convs: Vec<nn::Conv2D>,
    /// Residual blocks after each conv (one list per conv).
    blocks: Vec<Vec<ResBlock>>,
    hidden: Option<nn::Linear>,
    head: nn::Linear,
}

/// A stride-2, k4, p1 transposed conv whose weight may be borrowed from an encoder conv.
#[derive(Debug)]
pub(crate) struct Deconv {
    weight: Tensor,
    bias: Tensor,
}

impl Deconv {
    pub(crate) fn own(p: nn::Path<'_>, i: i64, o: i64) -> Self {
        let d = deconv(p, i, o);
        Self {
            weight: d.ws,
            bias: d.bs.expect("deconvs have biases"),
        }
    }

    /// Shares `weight` (an encoder conv's `[o_enc, i_enc, 4, 4]`, which is exactly the shape
    /// of the mirrored `ConvTranspose(o_enc → i_enc)`); only the bias is new.
    fn tied(p: nn::Path<'_>, weight: &Tensor) -> Self {
        let out = weight.size()[1];
        let bias = p.var("bias", &[out], torch_default(out * 16));
        Self {
            weight: weight.shallow_clone(),
            bias,
        }
    }

    pub(crate) fn forward(&self, x: &Tensor, kind: Kind) -> Tensor {
        let (weight, bias) = (cast(&self.weight, kind), cast(&self.bias, kind));
        // On the CPU, libtorch's default (oneDNN) transposed conv is slow for very few output
        // channels (the last layer, to 1 channel; docs/performance.md); its native im2col path
        // is faster there in f32 (oneDNN keeps bf16). Both compute the same function.
        let cpu = x.device() == Device::Cpu;
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

/// p(x | z): an optional dense layer, a dense layer to the conv grid, stride-2 transposed convs.
#[derive(Debug)]
struct Decoder {
    hidden: Option<nn::Linear>,
    fc: nn::Linear,
    /// Residual blocks before each transposed conv (one list per deconv).
    blocks: Vec<Vec<ResBlock>>,
    deconvs: Vec<Deconv>,
}

/// Everything one forward pass computes.
#[derive(Debug)]
pub struct VaeOutput {
    /// The likelihood's parameters for the reconstruction (Bernoulli logits), `[N, C·P, H, W]`.
    pub params: Tensor,
    /// Posterior means, `[N, latent]`.
    pub mu: Tensor,
    /// Posterior log-variances, `[N, latent]`.
    pub logvar: Tensor,
    /// The reparameterised sample z = μ + σ·ε, `[N, latent]`.
    pub z: Tensor,
}

/// The three log-densities of importance sampling, `[s, N]` each.
struct WeightTerms {
    log_px: Tensor,
    log_pz: Tensor,
    log_qz: Tensor,
}

/// A convolutional VAE: conv encoder, transposed-conv decoder giving the parameters of its
/// [`Likelihood`](crate::Likelihood), and a standard-normal or VampPrior prior.
///
/// Variables live under the `nn::Path` it is built on, named after the fields:
/// `encoder.conv1.weight`, …, `encoder.head.bias`, `decoder.fc.weight`, `decoder.deconv1.weight`, …;
/// residual blocks as `encoder.block1.0.conv1.weight`, …; VampPrior pseudo-inputs as
/// `prior.pseudo_inputs`.
///
/// Layout: on the CPU the encoder's convs run on channels-last (NHWC) tensors. oneDNN, which
/// libtorch runs them with, computes in NHWC or a blocked layout, and reorders a plain NCHW
/// tensor into it before every conv and back after it; an NHWC encoder skips most of those
/// reorders. The flattened grid is copied back to NCHW order for the dense head, so weights
/// and checkpoints are unchanged; the encoder's last ReLU runs after that copy, so its
/// backward sees one layout. The decoder stays NCHW: its last transposed conv runs libtorch's
/// native kernel, which needs NCHW, and converting there cost more than it saved. (What each
/// choice gave: `docs/performance.md`.)
#[derive(Debug)]
pub struct ConvVae {
    config: ConvVaeConfig,
    encoder: Encoder,
    decoder: Decoder,
    pseudo: Option<PseudoInputs>,
    /// The optional autoregressive head over the decoder's logits.
    pixel: Option<PixelCnn>,
    device: Device,
    /// The kind convs and dense layers compute in (f32, or bf16 for reduced precision).
    compute: Kind,
    /// Whether the encoder's convs run channels-last (NHWC); see the layout note above.
    pub(crate) nhwc_encoder: bool,
}

impl ConvVae {
    /// Builds the model's variables under `p`.
    pub fn new(p: &nn::Path<'_>, config: &ConvVaeConfig) -> Result<Self, ModelError> {
        config.validate()?;
        let (c_last, h, w) = config.conv_output_shape();
        let flat = c_last * h * w;
        let enc = p / "encoder";
        let dec = p / "decoder";

        let mut convs = Vec::new();
        let mut enc_blocks = Vec::new();
        let mut c_in = config.input_channels;
        for (i, &c) in config.channels.iter().enumerate() {
            convs.push(conv(&enc / format!("conv{}", i + 1), c_in, c));
            enc_blocks.push(ResBlock::stack(
                &enc,
                &format!("block{}", i + 1),
                c,
                config.res_blocks,
            ));
            c_in = c;
        }
        let (hidden, head_in) = match config.hidden_dim {
            Some(hd) => (Some(linear(&enc / "hidden", flat, hd)), hd),
            None => (None, flat),
        };
        let head = linear(&enc / "head", head_in, 2 * config.latent_dim);

        let (dec_hidden, fc_in) = match config.hidden_dim {
            Some(hd) => (Some(linear(&dec / "hidden", config.latent_dim, hd)), hd),
            None => (None, config.latent_dim),
        };
        let fc = linear(&dec / "fc", fc_in, flat);
        let mut outs: Vec<i64> = config.channels.iter().rev().skip(1).copied().collect();
        outs.push(config.input_channels * config.likelihood.params_per_channel());
        let mut deconvs = Vec::new();
        let mut dec_blocks = Vec::new();
        let mut c_in = c_last;
        for (i, &c) in outs.iter().enumerate() {
            dec_blocks.push(ResBlock::stack(
                &dec,
                &format!("block{}", i + 1),
                c_in,
                config.res_blocks,
            ));
            let p = &dec / format!("deconv{}", i + 1);
            deconvs.push(if config.tie_weights {
                // deconv1 mirrors the last conv, deconv2 the one before, ...
                Deconv::tied(p, &convs[convs.len() - 1 - i].ws)
            } else {
                Deconv::own(p, c_in, c)
            });
            c_in = c;
        }
        let pseudo = match config.prior {
            Prior::Standard => None,
            Prior::Vamp { components } => {
                // Logits around −2 (pixel ≈ 0.12, MNIST's mean intensity) with some spread, so
                // the pseudo-inputs start distinct and inside sigmoid's responsive range.
                let logits = (p / "prior").var(
                    "pseudo_inputs",
                    &[
                        components,
                        config.input_channels,
                        config.input_height,
                        config.input_width,
                    ],
                    nn::Init::Randn {
                        mean: -2.0,
                        stdev: 0.5,
                    },
                );
                Some(PseudoInputs { logits })
            }
        };
        let pixel = config
            .pixel_head
            .map(|head| PixelCnn::new(&(&dec / "pixel_head"), &head));
        Ok(Self {
            config: config.clone(),
            encoder: Encoder {
                convs,
                blocks: enc_blocks,
                hidden,
                head,
            },
            decoder: Decoder {
                hidden: dec_hidden,
                fc,
                blocks: dec_blocks,
                deconvs,
            },
            pseudo,
            pixel,
            device: p.device(),
            compute: Kind::Float,
            nhwc_encoder: p.device() == Device::Cpu,
        })
    }

    /// The configuration it was built from.
    pub fn conv_config(&self) -> &ConvVaeConfig {
        &self.config
    }

    /// The kind convs and dense layers compute in.
    pub fn compute_kind(&self) -> Kind {
        self.compute
    }

    fn check_images(&self, x: &Tensor) -> Result<(), ModelError> {
        let c = &self.config;
        check_images(x, [c.input_channels, c.input_height, c.input_width])
    }

    fn check_latents(&self, z: &Tensor) -> Result<(), ModelError> {
        let size = z.size();
        if size.len() == 2 && size[1] == self.config.latent_dim && z.is_floating_point() {
            Ok(())
        } else {
            Err(ModelError::Shape {
                what: "latents",
                expected: format!("[N, {}] (floating point)", self.config.latent_dim),
                found: size,
            })
        }
    }

    fn encode_unchecked(&self, x: &Tensor) -> Posterior {
        let kind = self.compute;
        let mut h = cast(x, kind);
        // Each stage leaves its output before its last ReLU, which the next stage applies.
        for (i, (conv, blocks)) in self
            .encoder
            .convs
            .iter()
            .zip(&self.encoder.blocks)
            .enumerate()
        {
            if i > 0 {
                h = h.relu_();
            }
            h = conv_in(conv, &h, 2, kind, self.nhwc_encoder);
            for b in blocks {
                h = b.pre_activation(&h.relu_(), kind, self.nhwc_encoder);
            }
        }
        // The last ReLU after the flatten (the same values): the flatten copies an NHWC grid to
        // NCHW order, and ReLU's backward on an NHWC result with that NCHW gradient is far
        // slower than on one layout (docs/performance.md).
        h = h.flatten(1, -1).relu_();
        if let Some(hidden) = &self.encoder.hidden {
            h = linear_in(hidden, &h, kind).relu_();
        }
        let stats = cast(&linear_in(&self.encoder.head, &h, kind), Kind::Float).chunk(2, 1);
        Posterior {
            mu: stats[0].shallow_clone(),
            logvar: stats[1].shallow_clone(),
        }
    }

    fn decode_unchecked(&self, z: &Tensor) -> Tensor {
        let (c, h, w) = self.config.conv_output_shape();
        let kind = self.compute;
        let mut t = cast(z, kind);
        if let Some(hidden) = &self.decoder.hidden {
            t = linear_in(hidden, &t, kind).relu_();
        }
        t = linear_in(&self.decoder.fc, &t, kind)
            .relu_()
            .view([-1, c, h, w]);
        let last = self.decoder.deconvs.len() - 1;
        for (i, (deconv, blocks)) in self
            .decoder
            .deconvs
            .iter()
            .zip(&self.decoder.blocks)
            .enumerate()
        {
            t = deconv.forward(&apply_blocks(t, blocks, kind, false), kind);
            if i < last {
                t = t.relu_();
            }
        }
        cast(&t, Kind::Float)
    }

    /// The parameters of p(x | z) for pixels `x` given the decoder's outputs `base`: `base`
    /// itself, or refined by the pixel head from the pixels before each one.
    fn likelihood_params(&self, x: &Tensor, base: &Tensor) -> Tensor {
        match &self.pixel {
            None => base.shallow_clone(),
            Some(head) => head.forward(x, base, self.compute),
        }
    }

    /// The likelihood's means of images drawn from p(x | z) given the decoder's outputs: the
    /// mean itself, or with the pixel head, each pixel's mean given the pixels sampled before it.
    fn pixel_means(&self, base: &Tensor) -> Tensor {
        match &self.pixel {
            None => self.config.likelihood.mean(base),
            Some(head) => head.sample_pixels(base, self.compute).0,
        }
    }

    /// Encodes, samples z once per image, decodes (with the pixel head, conditioned on `x`).
    pub fn forward(&self, x: &Tensor) -> Result<VaeOutput, ModelError> {
        self.check_images(x)?;
        Ok(self.forward_unchecked(x))
    }

    fn forward_unchecked(&self, x: &Tensor) -> VaeOutput {
        let posterior = self.encode_unchecked(x);
        let eps = posterior.mu.randn_like();
        self.forward_at(x, posterior, &eps)
    }

    /// The forward pass from the posterior of `x` at noise `eps`: z = μ + σ·ε.
    fn forward_at(&self, x: &Tensor, posterior: Posterior, eps: &Tensor) -> VaeOutput {
        let z = &posterior.mu + posterior.std() * eps;
        let params = self.likelihood_params(x, &self.decode_unchecked(&z));
        VaeOutput {
            params,
            mu: posterior.mu,
            logvar: posterior.logvar,
            z,
        }
    }

    /// The ELBO's terms of a forward pass over targets `x`.
    fn elbo_terms(&self, x: &Tensor, out: &VaeOutput) -> ElboTerms {
        let kl = self.kl(out);
        let kl_dims = self
            .pseudo
            .is_none()
            .then(|| loss::gaussian_kl_dims(&out.mu, &out.logvar));
        ElboTerms {
            reconstruction: self.config.likelihood.nll(&out.params, x),
            kl_groups: vec![kl.shallow_clone()],
            kl,
            kl_dims,
        }
    }

    /// The KL term of the ELBO per example, `[N]`: KL(q(z | x) ‖ N(0, I)) in closed form for
    /// the standard prior; for the VampPrior, which has no closed form, the one-sample estimate
    /// log q(z | x) − log p(z) at the forward pass's own z (unbiased; its mean is the KL).
    pub fn kl(&self, out: &VaeOutput) -> Tensor {
        match self.pseudo {
            None => loss::gaussian_kl(&out.mu, &out.logvar),
            Some(_) => {
                loss::normal_log_density(&out.z, &out.mu, &out.logvar) - self.log_prior(&out.z)
            }
        }
    }

    /// log p(z) under the model's prior for latents `[..., latent]`: `[...]`.
    pub fn log_prior(&self, z: &Tensor) -> Tensor {
        match &self.pseudo {
            None => loss::standard_normal_log_density(z),
            Some(_) => {
                let (mu, logvar) = self.prior_components();
                let size = z.size();
                let flat = z.reshape([-1, self.config.latent_dim]);
                loss::mixture_log_density(&flat, &mu, &logvar).view(&size[..size.len() - 1])
            }
        }
    }

    /// The VampPrior's pseudo-inputs as images in (0, 1), `[K, C, H, W]`; `None` for the
    /// standard prior.
    pub fn pseudo_inputs(&self) -> Option<Tensor> {
        self.pseudo.as_ref().map(|p| p.logits.sigmoid())
    }

    /// The VampPrior's K components q(z | u_k): means and log-variances, `[K, latent]` each.
    fn prior_components(&self) -> (Tensor, Tensor) {
        let u = self.pseudo_inputs().expect("called for the VampPrior only");
        let q = self.encode_unchecked(&u);
        (q.mu, q.logvar)
    }

    /// `n` latents drawn from the prior, with the Gaussian noise scaled by `temperature`.
    fn sample_prior(&self, n: i64, temperature: f64) -> Tensor {
        let eps =
            Tensor::randn([n, self.config.latent_dim], (Kind::Float, self.device)) * temperature;
        match &self.pseudo {
            None => eps,
            Some(p) => {
                let (mu, logvar) = self.prior_components();
                let k = p.logits.size()[0];
                let pick = Tensor::randint(k, [n], (Kind::Int64, self.device));
                mu.index_select(0, &pick) + (logvar.index_select(0, &pick) * 0.5).exp() * eps
            }
        }
    }

    /// log p(x | z_i), log p(z_i) and log q(z_i | x) for `s` fresh samples per image, `[s, N]` each.
    fn weight_terms(&self, x: &Tensor, q: &Posterior, s: i64) -> WeightTerms {
        let n = x.size()[0];
        let latent = self.config.latent_dim;
        let eps = Tensor::randn([s, n, latent], (Kind::Float, x.device()));
        let z = &q.mu + &eps * q.std();
        let size = x.size();
        let images = x.unsqueeze(0).expand([s, -1, -1, -1, -1], false).reshape([
            s * n,
            size[1],
            size[2],
            size[3],
        ]);
        let params =
            self.likelihood_params(&images, &self.decode_unchecked(&z.view([s * n, latent])));
        let log_px = self
            .config
            .likelihood
            .log_prob(&params, &images)
            .view([s, n]);
        let log_pz = self.log_prior(&z);
        let log_qz = loss::diagonal_normal_log_density(&eps, &q.logvar);
        WeightTerms {
            log_px,
            log_pz,
            log_qz,
        }
    }
}

impl Vae for ConvVae {
    fn config(&self) -> ModelConfig {
        ModelConfig::Conv(self.config.clone())
    }

    fn device(&self) -> Device {
        self.device
    }

    fn set_compute_kind(&mut self, kind: Kind) -> Result<(), ModelError> {
        self.compute = check_compute_kind(kind)?;
        Ok(())
    }

    fn encode(&self, x: &Tensor) -> Result<Posterior, ModelError> {
        self.check_images(x)?;
        Ok(self.encode_unchecked(x))
    }

    /// With a [`PixelHead`](crate::PixelHead) these are the conv decoder's logits, which the
    /// head refines pixel by pixel: p(x | z) then needs x itself (see [`ConvVae::forward`]).
    fn decode(&self, z: &Tensor) -> Result<Tensor, ModelError> {
        self.check_latents(z)?;
        Ok(self.decode_unchecked(z))
    }

    fn elbo(&self, x: &Tensor) -> Result<ElboTerms, ModelError> {
        self.check_images(x)?;
        let out = self.forward_unchecked(x);
        Ok(self.elbo_terms(x, &out))
    }

    fn elbo_with_noise(&self, x: &Tensor, eps: &Tensor) -> Result<ElboTerms, ModelError> {
        self.check_images(x)?;
        self.check_latents(eps)?;
        if eps.size()[0] != x.size()[0] {
            return Err(ModelError::Shape {
                what: "noise",
                expected: format!("[{}, {}]", x.size()[0], self.config.latent_dim),
                found: eps.size(),
            });
        }
        let out = self.forward_at(x, self.encode_unchecked(x), eps);
        Ok(self.elbo_terms(x, &out))
    }

    fn log_weights(&self, x: &Tensor, k: i64) -> Result<Tensor, ModelError> {
        self.check_images(x)?;
        check_samples(k)?;
        let w = self.weight_terms(x, &self.encode_unchecked(x), k);
        Ok(w.log_px + w.log_pz - w.log_qz)
    }

    fn iwae_terms(&self, x: &Tensor, k: i64) -> Result<IwaeTerms, ModelError> {
        self.check_images(x)?;
        check_samples(k)?;
        let w = self.weight_terms(x, &self.encode_unchecked(x), k);
        let log_w = &w.log_px + &w.log_pz - &w.log_qz;
        Ok(IwaeTerms {
            bound: loss::log_mean_exp(&log_w),
            reconstruction: -w.log_px.get(0),
            kl: w.log_qz.get(0) - w.log_pz.get(0),
        })
    }

    /// For the VampPrior, a random component's noise is scaled; with a pixel head the pixels
    /// are drawn one at a time (H·W passes of the head), each mean given the pixels before it.
    fn sample(&self, n: i64, temperature: f64) -> Result<Tensor, ModelError> {
        if n < 1 {
            return Err(ModelError::InvalidArgument(format!(
                "cannot sample {n} images"
            )));
        }
        let z = self.sample_prior(n, temperature);
        Ok(self.pixel_means(&self.decode_unchecked(&z)))
    }

    fn draw(&self, n: i64, temperature: f64) -> Result<Tensor, ModelError> {
        if n < 1 {
            return Err(ModelError::InvalidArgument(format!(
                "cannot draw {n} images"
            )));
        }
        let base = self.decode_unchecked(&self.sample_prior(n, temperature));
        Ok(match &self.pixel {
            None => self.config.likelihood.sample(&base),
            Some(head) => head.sample_pixels(&base, self.compute).1,
        })
    }

    fn reconstruct(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let posterior = self.encode(x)?;
        Ok(self.pixel_means(&self.decode_unchecked(&posterior.mu)))
    }

    fn prior_images(&self) -> Option<Tensor> {
        self.pseudo_inputs()
    }
}
