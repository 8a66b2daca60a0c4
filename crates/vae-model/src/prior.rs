//! The prior over a model's (top) latent: the standard normal or the VampPrior, configured by
//! [`Prior`] and used through [`LatentPrior`] by every kind.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor, nn};

use crate::error::ModelError;
use crate::loss;

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

/// The VampPrior's pseudo-inputs when its name alone is given (`vamp`).
pub const DEFAULT_PSEUDO_INPUTS: i64 = 100;

/// A prior by name, as on the command line: `standard`, `vamp` (with
/// [`DEFAULT_PSEUDO_INPUTS`] pseudo-inputs) or `vamp:K`.
impl std::str::FromStr for Prior {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let vamp = |components| Ok(Self::Vamp { components });
        match s {
            "standard" => Ok(Self::Standard),
            "vamp" => vamp(DEFAULT_PSEUDO_INPUTS),
            _ => match s.strip_prefix("vamp:").map(str::parse) {
                Some(Ok(k)) => vamp(k),
                _ => Err("expected standard, vamp or vamp:K (K pseudo-inputs)".into()),
            },
        }
    }
}

impl Prior {
    /// A VampPrior needs a sensible number of pseudo-inputs.
    pub fn validate(self) -> Result<(), ModelError> {
        if let Self::Vamp { components } = self
            && !(1..=100_000).contains(&components)
        {
            return Err(ModelError::InvalidConfig(format!(
                "the VampPrior needs 1 to 100000 pseudo-inputs, got {components}"
            )));
        }
        Ok(())
    }
}

/// A built [`Prior`]: for the VampPrior, its K pseudo-inputs, stored as logits
/// u_k = sigmoid(`logits_k`) ∈ (0, 1)ᴰ under `prior.pseudo_inputs`.
///
/// The VampPrior's components are the model's own posteriors at the pseudo-inputs, so the
/// methods that need them take the model's encoder as `components`: images `[K, C, H, W]` to
/// (μ, log σ²), `[K, latent]` each.
#[derive(Debug)]
pub enum LatentPrior {
    /// N(0, I).
    Standard,
    /// The VampPrior's pseudo-input logits, `[K, C, H, W]`.
    Vamp(Tensor),
}

impl LatentPrior {
    /// The prior's variables under `p` for images of `shape` (C, H, W).
    pub fn new(p: &nn::Path<'_>, prior: Prior, [c, h, w]: [i64; 3]) -> Self {
        match prior {
            Prior::Standard => Self::Standard,
            // Logits around −2 (pixel ≈ 0.12, MNIST's mean intensity) with some spread, so
            // the pseudo-inputs start distinct and inside sigmoid's responsive range.
            Prior::Vamp { components } => Self::Vamp((p / "prior").var(
                "pseudo_inputs",
                &[components, c, h, w],
                nn::Init::Randn {
                    mean: -2.0,
                    stdev: 0.5,
                },
            )),
        }
    }

    /// The pseudo-inputs as images in (0, 1), `[K, C, H, W]`; `None` for the standard normal.
    pub fn images(&self) -> Option<Tensor> {
        match self {
            Self::Standard => None,
            Self::Vamp(logits) => Some(logits.sigmoid()),
        }
    }

    /// log p(z) for latents `[..., latent]`: `[...]`.
    pub fn log_density(
        &self,
        z: &Tensor,
        components: impl FnOnce(&Tensor) -> (Tensor, Tensor),
    ) -> Tensor {
        match self {
            Self::Standard => loss::standard_normal_log_density(z),
            Self::Vamp(logits) => {
                let (mu, logvar) = components(&logits.sigmoid());
                let size = z.size();
                let flat = z.reshape([-1, size[size.len() - 1]]);
                loss::mixture_log_density(&flat, &mu, &logvar).view(&size[..size.len() - 1])
            }
        }
    }

    /// `n` latents of dimension `dim` drawn from the prior, with the Gaussian noise scaled by
    /// `temperature` (for the VampPrior: a random component's).
    pub fn sample(
        &self,
        n: i64,
        dim: i64,
        temperature: f64,
        device: Device,
        components: impl FnOnce(&Tensor) -> (Tensor, Tensor),
    ) -> Tensor {
        let eps = Tensor::randn([n, dim], (Kind::Float, device)) * temperature;
        match self {
            Self::Standard => eps,
            Self::Vamp(logits) => {
                let (mu, logvar) = components(&logits.sigmoid());
                let pick = Tensor::randint(logits.size()[0], [n], (Kind::Int64, device));
                mu.index_select(0, &pick) + (logvar.index_select(0, &pick) * 0.5).exp() * eps
            }
        }
    }
}
