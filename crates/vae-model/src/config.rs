use serde::{Deserialize, Serialize};

use tch::nn;

use crate::error::ModelError;
use crate::ladder::{LadderVae, LadderVaeConfig};
use crate::likelihood::Likelihood;
use crate::model::ConvVae;
use crate::vae::Vae;

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
    /// An optional autoregressive head over the decoder's Bernoulli logits (one-channel images
    /// and the Bernoulli likelihood only); `None`: pixels independent given z.
    pub pixel_head: Option<PixelHead>,
    /// The observation model p(x | z) the decoder parameterises.
    pub likelihood: Likelihood,
}

/// A small PixelCNN-style head (van den Oord et al., "Pixel Recurrent Neural Networks", ICML
/// 2016; used on a VAE decoder as in PixelVAE, Gulrajani et al., ICLR 2017): p(x | z) =
/// Π_i Bernoulli(x_i | σ(d_i(z) + g_i(x_<i, d(z)))), where d(z) are the conv decoder's logits
/// and g is a stack of masked convs that sees only the pixels before i in raster order. Its
/// output layer starts at zero, so a fresh model with the head equals one without it.
///
/// Training and the likelihood stay one parallel pass (the pixels x are known); sampling is
/// sequential, one pass per pixel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PixelHead {
    /// Width of the masked convs.
    pub channels: i64,
    /// Masked convs: a 7×7 of mask type A (excludes the pixel itself), then `layers − 1`
    /// residual 3×3 convs of mask type B.
    pub layers: usize,
}

impl Default for PixelHead {
    fn default() -> Self {
        Self {
            channels: 16,
            layers: 3,
        }
    }
}

/// The prior over the latent z.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Prior {
    /// N(0, I).
    #[default]
    Standard,
    /// The VampPrior (Tomczak & Welling, "VAE with a VampPrior", AISTATS 2018): the mixture
    /// (1/K) Σ_k q(z | u_k) of the encoder's posteriors at K learned pseudo-inputs u_k.
    Vamp {
        /// K, the number of pseudo-inputs.
        components: i64,
    },
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
        check_prior(self.prior)?;
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
            if self.input_channels != 1 {
                return bad(format!(
                    "the pixel head orders pixels of one-channel images only, got {} channels",
                    self.input_channels
                ));
            }
            if self.likelihood != Likelihood::Bernoulli {
                return bad(format!(
                    "the pixel head refines Bernoulli logits, but the likelihood is {}",
                    self.likelihood
                ));
            }
            if !(1..=4096).contains(&head.channels) || !(1..=64).contains(&head.layers) {
                return bad(format!(
                    "the pixel head needs 1 to 4096 channels and 1 to 64 layers, got {} and {}",
                    head.channels, head.layers
                ));
            }
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

/// Image sizes must be positive.
pub(crate) fn check_input_size([c, h, w]: [i64; 3]) -> Result<(), ModelError> {
    if c < 1 || h < 1 || w < 1 {
        return Err(ModelError::InvalidConfig(format!(
            "input size must be positive, got {c}x{h}x{w} (C x H x W)"
        )));
    }
    Ok(())
}

/// A VampPrior needs a sensible number of pseudo-inputs.
pub(crate) fn check_prior(prior: Prior) -> Result<(), ModelError> {
    if let Prior::Vamp { components } = prior
        && !(1..=100_000).contains(&components)
    {
        return Err(ModelError::InvalidConfig(format!(
            "the VampPrior needs 1 to 100000 pseudo-inputs, got {components}"
        )));
    }
    Ok(())
}

/// A model of any kind, as stored in checkpoints and config files: `kind = "conv"` and that
/// kind's own keys (`[model]` in a run's `config.toml`).
///
/// [`ModelConfig::build`] makes the [`Vae`] it describes. A closed set so that a checkpoint
/// names the kind it holds; a new kind is a new variant and its `build` arm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
#[non_exhaustive]
pub enum ModelConfig {
    /// A [`ConvVae`]: conv encoder and decoder with one latent.
    Conv(ConvVaeConfig),
    /// A [`LadderVae`]: a top-down hierarchy of latent groups.
    Ladder(LadderVaeConfig),
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self::Conv(ConvVaeConfig::default())
    }
}

impl From<ConvVaeConfig> for ModelConfig {
    fn from(c: ConvVaeConfig) -> Self {
        Self::Conv(c)
    }
}

impl From<LadderVaeConfig> for ModelConfig {
    fn from(c: LadderVaeConfig) -> Self {
        Self::Ladder(c)
    }
}

impl ModelConfig {
    /// Builds the model's variables under `p`.
    pub fn build(&self, p: &nn::Path<'_>) -> Result<Box<dyn Vae>, ModelError> {
        match self {
            Self::Conv(c) => Ok(Box::new(ConvVae::new(p, c)?)),
            Self::Ladder(c) => Ok(Box::new(LadderVae::new(p, c)?)),
        }
    }

    /// Checks the configuration describes a working model.
    pub fn validate(&self) -> Result<(), ModelError> {
        match self {
            Self::Conv(c) => c.validate(),
            Self::Ladder(c) => c.validate(),
        }
    }

    /// The kind's name, as in the `kind` key.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Conv(_) => "conv",
            Self::Ladder(_) => "ladder",
        }
    }

    /// The image shape modelled, (C, H, W).
    pub fn image_shape(&self) -> [i64; 3] {
        match self {
            Self::Conv(c) => [c.input_channels, c.input_height, c.input_width],
            Self::Ladder(c) => [c.input_channels, c.input_height, c.input_width],
        }
    }

    /// Sets the image shape modelled, (C, H, W): the data's, when a run starts.
    pub fn set_image_shape(&mut self, [c, h, w]: [i64; 3]) {
        match self {
            Self::Conv(conv) => {
                conv.input_channels = c;
                conv.input_height = h;
                conv.input_width = w;
            }
            Self::Ladder(ladder) => {
                ladder.input_channels = c;
                ladder.input_height = h;
                ladder.input_width = w;
            }
        }
    }

    /// The dimension of the z that [`Vae::encode`] gives and [`Vae::decode`] takes: the top
    /// group's, for a hierarchical model.
    pub fn latent_dim(&self) -> i64 {
        match self {
            Self::Conv(c) => c.latent_dim,
            Self::Ladder(c) => c.top_dim,
        }
    }

    /// The number of latent groups, each with its own KL in
    /// [`ElboTerms::kl_groups`](crate::ElboTerms::kl_groups): one for a conv VAE; the top
    /// group and each spatial group for a hierarchical one.
    pub fn latent_groups(&self) -> usize {
        match self {
            Self::Conv(_) => 1,
            // A group of no channels is skipped.
            Self::Ladder(c) => 1 + c.group_channels.iter().filter(|&&g| g > 0).count(),
        }
    }

    /// The observation model p(x | z).
    pub fn likelihood(&self) -> Likelihood {
        match self {
            Self::Conv(c) => c.likelihood,
            Self::Ladder(c) => c.likelihood,
        }
    }

    /// Sets the observation model p(x | z).
    pub fn set_likelihood(&mut self, likelihood: Likelihood) {
        match self {
            Self::Conv(c) => c.likelihood = likelihood,
            Self::Ladder(c) => c.likelihood = likelihood,
        }
    }

    /// Whether [`Vae::elbo`] gives the separate KLs that free bits act on
    /// ([`ElboTerms::kl_dims`](crate::ElboTerms::kl_dims)): each dimension's, for a conv VAE
    /// with the standard-normal prior; each group's, for a hierarchical model.
    pub fn has_kl_per_dimension(&self) -> bool {
        match self {
            Self::Conv(c) => c.prior == Prior::Standard,
            Self::Ladder(_) => true,
        }
    }

    /// The conv model's settings, when it is one.
    pub fn as_conv(&self) -> Option<&ConvVaeConfig> {
        match self {
            Self::Conv(c) => Some(c),
            _ => None,
        }
    }

    /// The conv model's settings, mutably, when it is one.
    pub fn as_conv_mut(&mut self) -> Option<&mut ConvVaeConfig> {
        match self {
            Self::Conv(c) => Some(c),
            _ => None,
        }
    }
}
