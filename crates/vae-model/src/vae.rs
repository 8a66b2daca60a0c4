//! The interface every VAE of this crate implements, and what its methods return.

use tch::{Device, Kind, Tensor};

use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::likelihood::Likelihood;
use crate::loss;

/// A diagonal Gaussian over the latents, N(μ, diag σ²): the approximate posterior q(z | x)
/// that [`Vae::encode`] returns.
#[derive(Debug)]
pub struct Posterior {
    /// Means, `[N, latent]`.
    pub mu: Tensor,
    /// Log-variances, `[N, latent]`.
    pub logvar: Tensor,
}

impl Posterior {
    /// Standard deviations σ = exp(½ log σ²), `[N, latent]`.
    pub fn std(&self) -> Tensor {
        (&self.logvar * 0.5).exp()
    }

    /// A reparameterised draw z = μ + σ·ε with ε ~ N(0, I) (Kingma & Welling 2014, §2.4):
    /// differentiable in μ and log σ², `[N, latent]`.
    pub fn sample(&self) -> Tensor {
        let eps = self.mu.randn_like();
        &self.mu + self.std() * eps
    }

    /// log q(z | x) summed over the latent dimensions for `z` `[..., N, latent]`: `[..., N]`.
    pub fn log_prob(&self, z: &Tensor) -> Tensor {
        loss::normal_log_density(z, &self.mu, &self.logvar)
    }
}

/// The terms of the negative ELBO, per example (nats): −ELBO = reconstruction + kl.
#[derive(Debug)]
pub struct ElboTerms {
    /// −log p(x | z) for one sample z ~ q(z | x), `[N]`.
    pub reconstruction: Tensor,
    /// KL(q(z | x) ‖ p(z)), `[N]`: in closed form where the prior allows it, else the
    /// one-sample estimate log q(z | x) − log p(z) (unbiased).
    pub kl: Tensor,
    /// The KL of each latent group, `[N]` each, summing to `kl`: one entry for a model with a
    /// single latent, one per level for a hierarchical one.
    pub kl_groups: Vec<Tensor>,
    /// The KLs that free bits act on, `[N, units]`, summing to `kl`: the closed-form KL of
    /// each latent dimension where the prior factorises (a conv VAE with the standard normal),
    /// each group's KL for a hierarchical model; `None` otherwise.
    pub kl_dims: Option<Tensor>,
}

impl ElboTerms {
    /// The ELBO per example: −(reconstruction + kl), `[N]`.
    pub fn elbo(&self) -> Tensor {
        -(&self.reconstruction + &self.kl)
    }
}

/// The IWAE objective's terms, per example; see [`Vae::iwae_terms`].
#[derive(Debug)]
pub struct IwaeTerms {
    /// The k-sample importance-weighted bound on log p(x), `[N]` (maximise it).
    pub bound: Tensor,
    /// −log p(x | z_1) of the first sample, `[N]`.
    pub reconstruction: Tensor,
    /// log q(z_1 | x) − log p(z_1) of the first sample (a one-sample KL estimate), `[N]`.
    pub kl: Tensor,
}

/// A variational autoencoder: what the trainer, the evaluator and every command of `vae` use.
///
/// A trait object (`Box<dyn Vae>`), so code written against it serves every model kind; the
/// kinds themselves are a closed set ([`ModelConfig`]) because a checkpoint must name the one
/// it holds and be rebuilt from that name. Images are `[N, C, H, W]` floats in [0, 1];
/// latents `[N, latent]`.
///
/// Methods that draw noise use libtorch's global generator (seed it with `tch::manual_seed`).
pub trait Vae: std::fmt::Debug {
    /// The configuration it was built from (with its `kind` tag).
    fn config(&self) -> ModelConfig;

    /// The device its variables live on.
    fn device(&self) -> Device;

    /// Computes its layers in `kind`: `Kind::Float` (the default) or `Kind::BFloat16`
    /// (autocast-style: f32 weights and gradients, bf16 activations, f32 outputs and losses).
    fn set_compute_kind(&mut self, kind: Kind) -> Result<(), ModelError>;

    /// q(z | x) for images `x`.
    fn encode(&self, x: &Tensor) -> Result<Posterior, ModelError>;

    /// The likelihood's parameters for latents `z`, `[N, C·P, H, W]` (see
    /// [`Likelihood::params_per_channel`]); with an autoregressive head these are its
    /// conditioning, not yet p(x | z).
    fn decode(&self, z: &Tensor) -> Result<Tensor, ModelError>;

    /// The negative-ELBO terms per example for targets `x`, with one z ~ q(z | x) each.
    fn elbo(&self, x: &Tensor) -> Result<ElboTerms, ModelError>;

    /// The negative-ELBO terms at given standard-normal noise `eps` (`[N, latent]`; for a
    /// hierarchical model, the noise of every group, see
    /// [`LadderVaeConfig::noise_dim`](crate::LadderVaeConfig::noise_dim)): z = μ + σ·ε.
    /// [`Vae::elbo`] is this with fresh noise; fixed noise makes two implementations of a model
    /// comparable term by term (the export test does so with the PyTorch module).
    fn elbo_with_noise(&self, x: &Tensor, eps: &Tensor) -> Result<ElboTerms, ModelError>;

    /// log p(x, z_i) − log q(z_i | x) for `k` fresh samples z_i ~ q(z | x) per image, `[k, N]`:
    /// the log importance weights of the IWAE bound (Burda, Grosse & Salakhutdinov,
    /// "Importance Weighted Autoencoders", ICLR 2016).
    fn log_weights(&self, x: &Tensor, k: i64) -> Result<Tensor, ModelError>;

    /// The IWAE objective's terms for `k` samples per image, with gradients: the bound
    /// log (1/k) Σ_i p(x, z_i)/q(z_i | x) per image, and the first sample's reconstruction and
    /// KL terms (for logging). With k = 1 the bound is the one-sample ELBO.
    fn iwae_terms(&self, x: &Tensor, k: i64) -> Result<IwaeTerms, ModelError>;

    /// `n` images from the model, with the prior's Gaussian noise scaled by `temperature` (1 =
    /// the prior itself): the likelihood's means, `[n, C, H, W]`.
    fn sample(&self, n: i64, temperature: f64) -> Result<Tensor, ModelError>;

    /// `n` images drawn from the model, with the prior's Gaussian noise scaled by
    /// `temperature`: z from the prior, then x ~ p(x | z), `[n, C, H, W]` in [0, 1].
    fn draw(&self, n: i64, temperature: f64) -> Result<Tensor, ModelError>;

    /// The likelihood's means of the reconstruction of `x` through the posterior mean.
    fn reconstruct(&self, x: &Tensor) -> Result<Tensor, ModelError>;

    /// Images that define the prior, if it has any (the VampPrior's pseudo-inputs), in (0, 1).
    fn prior_images(&self) -> Option<Tensor> {
        None
    }

    /// The image shape it models, (C, H, W).
    fn image_shape(&self) -> [i64; 3] {
        self.config().image_shape()
    }

    /// The dimension of z.
    fn latent_dim(&self) -> i64 {
        self.config().latent_dim()
    }

    /// The width of the noise [`Vae::elbo_with_noise`] takes per image: the latent
    /// dimension, or for a hierarchical model every group's noise.
    fn noise_dim(&self) -> i64 {
        self.latent_dim()
    }

    /// Its observation model p(x | z).
    fn likelihood(&self) -> Likelihood {
        self.config().likelihood()
    }

    /// Importance-weighted estimate of log p(x) per example, `[N]` (nats):
    /// log (1/k) Σ_i p(x | z_i) p(z_i) / q(z_i | x) with z_i ~ q(z | x) (Burda et al. 2016).
    /// A lower bound that rises with `k` towards log p(x); k = 1 is the one-sample ELBO.
    ///
    /// Samples are drawn in chunks so at most `max_rows` decoder rows (samples × images) are
    /// in memory at once; k = 5000 fits on any machine. Call it under `tch::no_grad`.
    fn log_likelihood_iw(&self, x: &Tensor, k: i64, max_rows: i64) -> Result<Tensor, ModelError> {
        check_samples(k)?;
        let n = x.size().first().copied().unwrap_or(0);
        let per_chunk = (max_rows.max(1) / n.max(1)).clamp(1, k);
        let mut chunks = Vec::new();
        let mut done = 0;
        while done < k {
            let s = per_chunk.min(k - done);
            chunks.push(self.log_weights(x, s)?);
            done += s;
        }
        Ok(loss::log_mean_exp(&Tensor::cat(&chunks, 0)))
    }
}

/// `x` must be images of shape `[N, C, H, W]` = `[N, shape...]`, floating point.
pub(crate) fn check_images(x: &Tensor, shape: [i64; 3]) -> Result<(), ModelError> {
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

/// The compute kinds a model supports: f32, or bf16 for reduced precision.
pub(crate) fn check_compute_kind(kind: Kind) -> Result<Kind, ModelError> {
    match kind {
        Kind::Float | Kind::BFloat16 => Ok(kind),
        other => Err(ModelError::InvalidArgument(format!(
            "compute kind must be Float or BFloat16, got {other:?}"
        ))),
    }
}

/// k importance samples must be at least one.
pub(crate) fn check_samples(k: i64) -> Result<(), ModelError> {
    if k < 1 {
        return Err(ModelError::InvalidArgument(format!(
            "importance samples k must be at least 1, got {k}"
        )));
    }
    Ok(())
}
