//! The convolutional VAE: [`ConvVaeConfig`] and the [`ConvVae`] it builds.

use serde::{Deserialize, Serialize};
use tch::nn;
use tch::{Device, Kind, Tensor};

use crate::blocks::{
    Deconv, Layout, ResidualCell, cast, check_images, check_input_size, check_rows, conv_down,
    conv_in, linear, linear_in, to_channels_last,
};
use crate::cpu::CpuFeatures;
use crate::error::ModelError;
use crate::likelihood::Likelihood;
use crate::loss;
use crate::pixel::{self, PixelCnn, PixelHead};
use crate::prior::{LatentPrior, Prior};
use crate::vae::{ElboTerms, ImportanceTerms, ModelConfig, Posterior, Vae, VaeConfig};

/// The architecture of a [`ConvVae`](crate::ConvVae).
///
/// The default is the reference conv VAE (the PyTorch peer in the workspace's benchmarks):
/// encoder Conv(1→32, k4 s2 p1) ReLU, Conv(32→64, k4 s2 p1) ReLU, flatten, Linear(3136 → 2·32)
/// split into μ and log σ²; decoder Linear(32 → 3136) ReLU, ConvT(64→32, k4 s2 p1) ReLU,
/// ConvT(32→1, k4 s2 p1) giving Bernoulli logits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConvVaeConfig {
    /// Image channels (1 for MNIST).
    pub input_channels: i64,
    /// Image height; must be divisible by 2^(number of conv layers).
    pub input_height: i64,
    /// Image width; must be divisible by 2^(number of conv layers).
    pub input_width: i64,
    /// Dimension of z.
    pub latent_dim: i64,
    /// Output channels of each stride-2 encoder conv; the decoder mirrors them.
    pub channels: Vec<i64>,
    /// An optional dense hidden layer (with ReLU) between the conv stack and the latent heads,
    /// mirrored in the decoder.
    pub hidden_dim: Option<i64>,
    /// Parameter sharing: each decoder transposed conv reuses the weight tensor of the mirrored
    /// encoder conv (same shape), halving the conv weights. Biases stay separate.
    pub tie_weights: bool,
    /// Residual blocks (x + Conv3x3(ReLU(Conv3x3(x))), then ReLU) after each encoder conv and
    /// before each decoder transposed conv, at that resolution and width (0: none).
    pub res_blocks: usize,
    /// The prior p(z).
    pub prior: Prior,
    /// An optional autoregressive head over the decoder's outputs (one-channel images only);
    /// `None`: pixels independent given z.
    pub pixel_head: Option<PixelHead>,
    /// The observation model p(x | z) the decoder parameterises.
    pub likelihood: Likelihood,
}

impl Default for ConvVaeConfig {
    fn default() -> Self {
        Self {
            input_channels: 1,
            input_height: 28,
            input_width: 28,
            latent_dim: 32,
            channels: vec![32, 64],
            hidden_dim: None,
            tie_weights: false,
            res_blocks: 0,
            prior: Prior::Standard,
            pixel_head: None,
            likelihood: Likelihood::Bernoulli,
        }
    }
}

impl ConvVaeConfig {
    /// Checks every size is positive and the image survives the stride-2 convs.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |msg: String| Err(ModelError::InvalidConfig(msg));
        check_input_size([self.input_channels, self.input_height, self.input_width])?;
        self.prior.validate()?;
        if self.latent_dim < 1 {
            return bad(format!(
                "latent_dim must be at least 1, got {}",
                self.latent_dim
            ));
        }
        if self.channels.is_empty() || self.channels.iter().any(|&c| c < 1) {
            return bad(format!(
                "channels must list at least one positive width, got {:?}",
                self.channels
            ));
        }
        if let Some(h) = self.hidden_dim
            && h < 1
        {
            return bad(format!("hidden_dim must be at least 1, got {h}"));
        }
        if self.res_blocks > 64 {
            return bad(format!(
                "res_blocks must be at most 64, got {}",
                self.res_blocks
            ));
        }
        if let Some(head) = self.pixel_head {
            head.validate(self.input_channels).or_else(bad)?;
        }
        if let Err(m) = self.likelihood.validate() {
            return bad(m);
        }
        if self.tie_weights && self.likelihood.params_per_channel() != 1 {
            return bad(format!(
                "tied weights need one decoder output per image channel, but the {} likelihood takes {}",
                self.likelihood,
                self.likelihood.params_per_channel()
            ));
        }
        let factor = 1i64 << self.channels.len().min(30);
        if self.input_height % factor != 0 || self.input_width % factor != 0 {
            return bad(format!(
                "a {}x{} image cannot pass {} stride-2 convs: height and width must be divisible by {factor}",
                self.input_height,
                self.input_width,
                self.channels.len()
            ));
        }
        Ok(())
    }

    /// (channels, height, width) after the encoder's convs.
    pub fn conv_output_shape(&self) -> (i64, i64, i64) {
        let factor = 1i64 << self.channels.len();
        (
            *self.channels.last().expect("validated"),
            self.input_height / factor,
            self.input_width / factor,
        )
    }

    /// Number of pixels (C·H·W) of one image.
    pub fn pixels(&self) -> i64 {
        self.input_channels * self.input_height * self.input_width
    }
}

/// q(z | x): stride-2 convs, an optional dense layer, and one linear head giving [μ, log σ²].
#[derive(Debug)]
struct Encoder {
    convs: Vec<nn::Conv2D>,
    /// Residual blocks after each conv (one list per conv).
    blocks: Vec<Vec<ResidualCell>>,
    hidden: Option<nn::Linear>,
    head: nn::Linear,
}

/// p(x | z): an optional dense layer, a dense layer to the conv grid, stride-2 transposed convs.
#[derive(Debug)]
struct Decoder {
    hidden: Option<nn::Linear>,
    fc: nn::Linear,
    /// Residual blocks before each transposed conv (one list per deconv).
    blocks: Vec<Vec<ResidualCell>>,
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
/// backward sees one layout. The decoder stays NCHW in f32: its last transposed conv runs
/// libtorch's native kernel, which needs NCHW, and converting there cost more than it saved. In
/// bf16 on a CPU with AMX ([`CpuFeatures`]) the decoder runs channels-last too: oneDNN's AMX
/// kernels compute in NHWC. (What each choice gave: `docs/performance.md`.)
#[derive(Debug)]
pub struct ConvVae {
    config: ConvVaeConfig,
    encoder: Encoder,
    decoder: Decoder,
    prior: LatentPrior,
    /// The optional autoregressive head over the decoder's logits.
    pixel: Option<PixelCnn>,
    device: Device,
    /// The kind convs and dense layers compute in (f32, or bf16 for reduced precision).
    compute: Kind,
    /// Whether the encoder's convs run channels-last (NHWC); see the layout note above.
    pub(crate) nhwc_encoder: bool,
    /// Whether the decoder's convs run channels-last (NHWC) when computing in bf16; see the
    /// layout note above.
    pub(crate) nhwc_bf16_decoder: bool,
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
            convs.push(conv_down(&enc / format!("conv{}", i + 1), c_in, c));
            let block = &enc / format!("block{}", i + 1);
            enc_blocks.push(ResidualCell::stack(&block, c, config.res_blocks, |j| {
                j.to_string()
            }));
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
            let block = &dec / format!("block{}", i + 1);
            dec_blocks.push(ResidualCell::stack(&block, c_in, config.res_blocks, |j| {
                j.to_string()
            }));
            let p = &dec / format!("deconv{}", i + 1);
            deconvs.push(if config.tie_weights {
                // deconv1 mirrors the last conv, deconv2 the one before, ...
                Deconv::tied(p, &convs[convs.len() - 1 - i].ws)
            } else {
                Deconv::own(p, c_in, c)
            });
            c_in = c;
        }
        let prior = LatentPrior::new(p, config.prior, VaeConfig::image_shape(config));
        let pixel = config.pixel_head.map(|head| {
            PixelCnn::new(
                &(&dec / "pixel_head"),
                &head,
                config.likelihood.params_per_channel(),
            )
        });
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
            prior,
            pixel,
            device: p.device(),
            compute: Kind::Float,
            nhwc_encoder: p.device() == Device::Cpu,
            nhwc_bf16_decoder: p.device() == Device::Cpu
                && CpuFeatures::current().bf16_channels_last(),
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
        check_rows("latents", z, None, self.config.latent_dim)
    }

    /// How the encoder's convs lay out their tensors; see the layout note above.
    fn encoder_layout(&self) -> Layout {
        if self.nhwc_encoder {
            Layout::ChannelsLast
        } else {
            Layout::Plain
        }
    }

    /// How the decoder's convs lay out their tensors: channels-last when it computes in bf16
    /// on a CPU with AMX; see the layout note above.
    fn decoder_layout(&self) -> Layout {
        Layout::for_kind(self.compute, self.nhwc_bf16_decoder)
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
            let layout = self.encoder_layout();
            h = conv_in(conv, &h, (2, 1), kind, layout);
            for b in blocks {
                let a = h.relu_();
                h = b.forward(&a, &a, relu, kind, layout);
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
        let layout = self.decoder_layout();
        if layout == Layout::ChannelsLast {
            t = to_channels_last(&t);
        }
        let last = self.decoder.deconvs.len() - 1;
        for (i, (deconv, blocks)) in self
            .decoder
            .deconvs
            .iter()
            .zip(&self.decoder.blocks)
            .enumerate()
        {
            for b in blocks {
                t = b.forward(&t, &t, relu, kind, layout).relu_();
            }
            t = deconv.forward(&t, kind, layout);
            if i < last {
                t = t.relu_();
            }
        }
        cast(&t, Kind::Float)
    }

    /// The parameters of p(x | z) for pixels `x` given the decoder's outputs `base`: `base`
    /// itself, or refined by the pixel head from the pixels before each one.
    fn likelihood_params(&self, x: &Tensor, base: &Tensor) -> Tensor {
        pixel::refine(self.pixel.as_ref(), x, base, self.compute)
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
        let kl_dims = matches!(self.prior, LatentPrior::Standard)
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
        match self.prior {
            LatentPrior::Standard => loss::gaussian_kl(&out.mu, &out.logvar),
            LatentPrior::Vamp(_) => {
                loss::normal_log_density(&out.z, &out.mu, &out.logvar) - self.log_prior(&out.z)
            }
        }
    }

    /// log p(z) under the model's prior for latents `[..., latent]`: `[...]`.
    pub fn log_prior(&self, z: &Tensor) -> Tensor {
        self.prior.log_density(z, |u| self.posterior_parameters(u))
    }

    /// The VampPrior's pseudo-inputs as images in (0, 1), `[K, C, H, W]`; `None` for the
    /// standard prior.
    pub fn pseudo_inputs(&self) -> Option<Tensor> {
        self.prior.images()
    }

    /// The encoder's (μ, log σ²) for images `u`: the VampPrior's components at its
    /// pseudo-inputs.
    fn posterior_parameters(&self, u: &Tensor) -> (Tensor, Tensor) {
        let q = self.encode_unchecked(u);
        (q.mu, q.logvar)
    }
}

/// ReLU in place, the conv VAE's nonlinearity.
fn relu(mut t: Tensor) -> Tensor {
    t.relu_()
}

impl VaeConfig for ConvVaeConfig {
    const KIND: &'static str = "conv";

    config_basics!(ConvVae);

    fn latent_dim(&self) -> i64 {
        self.latent_dim
    }

    /// Each latent dimension's KL, with the standard-normal prior.
    fn has_kl_per_dimension(&self) -> bool {
        self.prior == Prior::Standard
    }
}

impl Vae for ConvVae {
    model_basics!();

    fn encode(&self, x: &Tensor) -> Result<Posterior, ModelError> {
        self.check_images(x)?;
        Ok(self.encode_unchecked(x))
    }

    /// With a [`PixelHead`] these are the conv decoder's logits, which the head refines pixel
    /// by pixel: p(x | z) then needs x itself (see [`ConvVae::forward`]).
    fn decode(&self, z: &Tensor) -> Result<Tensor, ModelError> {
        self.check_latents(z)?;
        Ok(self.decode_unchecked(z))
    }

    fn elbo_with_noise(&self, x: &Tensor, eps: &Tensor) -> Result<ElboTerms, ModelError> {
        self.check_images(x)?;
        check_rows("noise", eps, Some(x.size()[0]), self.config.latent_dim)?;
        let out = self.forward_at(x, self.encode_unchecked(x), eps);
        Ok(self.elbo_terms(x, &out))
    }

    fn importance_terms(&self, x: &Tensor, s: i64) -> Result<ImportanceTerms, ModelError> {
        self.check_images(x)?;
        let q = self.encode_unchecked(x);
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
        Ok(ImportanceTerms {
            log_px,
            log_pz: self.log_prior(&z),
            log_qz: loss::diagonal_normal_log_density(&eps, &q.logvar),
        })
    }

    /// For the VampPrior, a random component's noise is scaled.
    fn prior_params(&self, n: i64, temperature: f64) -> Result<Tensor, ModelError> {
        let z = self
            .prior
            .sample(n, self.config.latent_dim, temperature, self.device, |u| {
                self.posterior_parameters(u)
            });
        Ok(self.decode_unchecked(&z))
    }

    /// With a pixel head, the pixels are drawn one at a time (H·W passes of the head), each
    /// mean given the pixels before it.
    fn means(&self, base: &Tensor) -> Tensor {
        let p = self.pixel.as_ref();
        pixel::pictures(p, self.config.likelihood, base, self.compute, false)
    }

    fn draws(&self, base: &Tensor) -> Tensor {
        let p = self.pixel.as_ref();
        pixel::pictures(p, self.config.likelihood, base, self.compute, true)
    }

    fn prior_images(&self) -> Option<Tensor> {
        self.pseudo_inputs()
    }
}
