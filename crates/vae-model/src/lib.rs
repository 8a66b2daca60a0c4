//! Convolutional variational autoencoders on libtorch (through `tch`).
//!
//! A [`ConvVae`] is built from a [`ConvVaeConfig`] on a `tch::nn::Path`: a stride-2 conv
//! encoder with μ and log σ² heads for q(z | x) = N(μ, diag σ²), the reparameterised sample
//! z = μ + σ·ε, a transposed-conv decoder giving Bernoulli logits for p(x | z), and the prior
//! p(z) = N(0, I) or a VampPrior ([`Prior`]); optional residual blocks deepen both halves. It computes the ELBO terms (analytic KL, numerically stable BCE with logits),
//! samples, reconstructions and the importance-weighted estimate of log p(x).
//!
//! This crate is the model only: no data loading (see `vae-data`), no optimiser or checkpoints
//! (see `vae-train`).
//!
//! ```no_run
//! use tch::{Device, Kind, Tensor, nn};
//! use vae_model::{ConvVae, ConvVaeConfig};
//!
//! let vs = nn::VarStore::new(Device::Cpu);
//! let vae = ConvVae::new(&vs.root(), &ConvVaeConfig::default())?;
//! let x = Tensor::rand([8, 1, 28, 28], (Kind::Float, Device::Cpu)).round();
//! let terms = vae.elbo(&x)?;                       // per-example reconstruction and KL
//! let loss = (&terms.reconstruction + &terms.kl).mean(Kind::Float);
//! let z = Tensor::zeros([1, 32], (Kind::Float, Device::Cpu));
//! let logits = vae.decode(&z)?;                    // [1, 1, 28, 28]
//! let log_px = tch::no_grad(|| vae.log_likelihood_iw(&x, 100, 4096))?;
//! # let _ = (loss, logits, log_px);
//! # Ok::<(), vae_model::ModelError>(())
//! ```

mod config;
mod error;
pub mod loss;
mod model;
mod pixel;

pub use config::{ConvVaeConfig, PixelHead, Prior};
pub use error::ModelError;
pub use model::{ConvVae, ElboTerms, IwaeTerms, Posterior, VaeOutput};

#[cfg(test)]
mod tests;
