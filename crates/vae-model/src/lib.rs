//! Variational autoencoders on libtorch (through `tch`): the models, their likelihoods and the
//! maths of their bounds.
//!
//! Every model implements [`Vae`]: encode images to a [`Posterior`] q(z | x) that can
//! `.sample()`, decode latents to the parameters of a [`Likelihood`] p(x | z), the ELBO's
//! terms per example, the log importance weights of the IWAE bound, samples and
//! reconstructions. A [`ModelConfig`] (serialised with a `kind` tag) builds one on a
//! `tch::nn::Path`; [`ConvVae`] ([`ConvVaeConfig`]) is the first kind: a stride-2 conv encoder
//! with μ and log σ² heads, a transposed-conv decoder, a standard-normal or VampPrior
//! ([`Prior`]) prior, optional residual blocks, tied weights and an autoregressive pixel head;
//! [`LadderVae`] ([`LadderVaeConfig`]) the second: a top-down hierarchy of latent groups
//! (spatial groups under a vector top, as in NVAE), whose per-group KLs
//! [`ElboTerms::kl_groups`] reports; both take the pixel head ([`PixelHead`]).
//!
//! The kinds are open: a kind of your own is a [`VaeConfig`] (its settings, which build it)
//! and a [`Vae`] (seven methods; the rest is provided), made known with [`register_kind`] so
//! that its configs and checkpoints are read back; [`blocks`] has the layers, residual cell
//! and checks the built-in kinds are made of, [`LatentPrior`] their prior.
//! [`latent`] holds the maths for exploring a trained model (interpolation, traversals, PCA,
//! active units); [`loss`] the densities and bounds.
//!
//! This crate is the model only: no data loading (see `vae-data`), no optimiser or checkpoints
//! (see `vae-train`).
//!
//! ```no_run
//! use tch::{Device, Kind, Tensor, nn};
//! use vae_model::{ConvVaeConfig, ModelConfig, Vae};
//!
//! let vs = nn::VarStore::new(Device::Cpu);
//! let vae = ModelConfig::from(ConvVaeConfig::default()).build(&vs.root())?;
//! let x = Tensor::rand([8, 1, 28, 28], (Kind::Float, Device::Cpu)).round();
//! let terms = vae.elbo(&x)?;                       // per-example reconstruction and KL
//! let loss = (&terms.reconstruction + &terms.kl).mean(Kind::Float);
//! let z = vae.encode(&x)?.sample();                // [8, 32]
//! let logits = vae.decode(&z)?;                    // [8, 1, 28, 28]: the likelihood's parameters
//! let log_px = tch::no_grad(|| vae.log_likelihood_iw(&x, 100, 4096))?;
//! # let _ = (loss, logits, log_px);
//! # Ok::<(), vae_model::ModelError>(())
//! ```

#[macro_use]
mod macros;

pub mod blocks;
mod conv;
mod cpu;
mod error;
mod fused;
mod kinds;
mod ladder;
pub mod latent;
mod likelihood;
pub mod loss;
mod pixel;
mod prior;
mod vae;

pub use conv::{ConvVae, ConvVaeConfig, VaeOutput};
pub use cpu::CpuFeatures;
pub use error::ModelError;
pub use kinds::{register_kind, registered_kinds};
pub use ladder::{LadderVae, LadderVaeConfig};
pub use likelihood::{DEFAULT_LOGISTIC_COMPONENTS, Likelihood};
pub use pixel::PixelHead;
pub use prior::{DEFAULT_PSEUDO_INPUTS, LatentPrior, Prior};
pub use vae::{
    ElboTerms, ImportanceTerms, IwEvaluator, IwPrecision, IwaeTerms, ModelConfig, Posterior, Vae,
    VaeConfig,
};

#[cfg(test)]
mod tests;
