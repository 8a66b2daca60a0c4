//! The interface every VAE of this crate implements, and what its methods return.

use std::any::Any;
use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tch::{Device, Kind, Tensor, nn};

use crate::blocks::{check_count, check_samples};
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

/// The three log-densities of importance sampling for `k` samples z_i ~ q(z | x) per image,
/// `[k, N]` each; see [`Vae::importance_terms`].
#[derive(Debug)]
pub struct ImportanceTerms {
    /// log p(x | z_i).
    pub log_px: Tensor,
    /// log p(z_i) under the prior.
    pub log_pz: Tensor,
    /// log q(z_i | x).
    pub log_qz: Tensor,
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
/// A trait object (`Box<dyn Vae>`), so code written against it serves every model kind; a
/// kind is built from its configuration ([`VaeConfig`], held as a [`ModelConfig`]), which a
/// checkpoint stores with the kind's name. Images are `[N, C, H, W]` floats in [0, 1];
/// latents `[N, latent]`.
///
/// A kind implements what differs between models: [`config`](Vae::config),
/// [`device`](Vae::device), [`encode`](Vae::encode), [`decode`](Vae::decode),
/// [`elbo_with_noise`](Vae::elbo_with_noise), [`importance_terms`](Vae::importance_terms) and
/// [`prior_params`](Vae::prior_params). The rest is provided from those; a kind overrides a
/// provided method where it computes something else (a hierarchical model's
/// [`noise_dim`](Vae::noise_dim) and [`reconstruct`](Vae::reconstruct), an autoregressive
/// head's [`means`](Vae::means) and [`draws`](Vae::draws)) or computes it faster.
///
/// Methods that draw noise use libtorch's global generator (seed it with `tch::manual_seed`).
pub trait Vae: fmt::Debug {
    /// The configuration it was built from (with its kind).
    fn config(&self) -> ModelConfig;

    /// The device its variables live on.
    fn device(&self) -> Device;

    /// Computes its layers in `kind`: `Kind::Float` (the default) or `Kind::BFloat16`
    /// (autocast-style: f32 weights and gradients, bf16 activations, f32 outputs and losses).
    /// Provided: f32 only, anything else is refused.
    fn set_compute_kind(&mut self, kind: Kind) -> Result<(), ModelError> {
        match kind {
            Kind::Float => Ok(()),
            other => Err(ModelError::InvalidArgument(format!(
                "the {} model computes in Float only, not {other:?}",
                self.config().kind()
            ))),
        }
    }

    /// q(z | x) for images `x`.
    fn encode(&self, x: &Tensor) -> Result<Posterior, ModelError>;

    /// The likelihood's parameters for latents `z`, `[N, C·P, H, W]` (see
    /// [`Likelihood::params_per_channel`]); with an autoregressive head these are its
    /// conditioning, not yet p(x | z).
    fn decode(&self, z: &Tensor) -> Result<Tensor, ModelError>;

    /// The negative-ELBO terms at given standard-normal noise `eps` (`[N, noise_dim]`, see
    /// [`Vae::noise_dim`]): z = μ + σ·ε. [`Vae::elbo`] is this with fresh noise; the trainer
    /// draws the noise itself, so that every process of a data-parallel run draws one stream,
    /// and fixed noise makes two implementations of a model comparable term by term (the
    /// export test does so with the PyTorch module).
    fn elbo_with_noise(&self, x: &Tensor, eps: &Tensor) -> Result<ElboTerms, ModelError>;

    /// log p(x | z_i), log p(z_i) and log q(z_i | x) for `k` fresh samples z_i ~ q(z | x)
    /// per image, `[k, N]` each: what the IWAE bound (Burda, Grosse & Salakhutdinov,
    /// "Importance Weighted Autoencoders", ICLR 2016) is made of.
    fn importance_terms(&self, x: &Tensor, k: i64) -> Result<ImportanceTerms, ModelError>;

    /// The likelihood's parameters for `n` images from the model, with the prior's Gaussian
    /// noise scaled by `temperature` (1 = the prior itself), `[n, C·P, H, W]`.
    fn prior_params(&self, n: i64, temperature: f64) -> Result<Tensor, ModelError>;

    /// The width of the noise [`Vae::elbo_with_noise`] takes per image: the latent
    /// dimension, or for a hierarchical model every group's noise.
    fn noise_dim(&self) -> i64 {
        self.latent_dim()
    }

    /// The negative-ELBO terms per example for targets `x`, with one z ~ q(z | x) each:
    /// [`Vae::elbo_with_noise`] at fresh noise.
    fn elbo(&self, x: &Tensor) -> Result<ElboTerms, ModelError> {
        let n = x.size().first().copied().unwrap_or(0);
        let eps = Tensor::randn([n, self.noise_dim()], (Kind::Float, x.device()));
        self.elbo_with_noise(x, &eps)
    }

    /// log p(x, z_i) − log q(z_i | x) for `k` fresh samples z_i ~ q(z | x) per image, `[k, N]`:
    /// the log importance weights of the IWAE bound.
    fn log_weights(&self, x: &Tensor, k: i64) -> Result<Tensor, ModelError> {
        check_samples(k)?;
        let t = self.importance_terms(x, k)?;
        Ok(t.log_px + t.log_pz - t.log_qz)
    }

    /// The IWAE objective's terms for `k` samples per image, with gradients: the bound
    /// log (1/k) Σ_i p(x, z_i)/q(z_i | x) per image, and the first sample's reconstruction and
    /// KL terms (for logging). With k = 1 the bound is the one-sample ELBO.
    fn iwae_terms(&self, x: &Tensor, k: i64) -> Result<IwaeTerms, ModelError> {
        check_samples(k)?;
        let t = self.importance_terms(x, k)?;
        let log_w = &t.log_px + &t.log_pz - &t.log_qz;
        Ok(IwaeTerms {
            bound: loss::log_mean_exp(&log_w),
            reconstruction: -t.log_px.get(0),
            kl: t.log_qz.get(0) - t.log_pz.get(0),
        })
    }

    /// The likelihood's means of images with parameters `params`, `[N, C, H, W]`.
    fn means(&self, params: &Tensor) -> Tensor {
        self.likelihood().mean(params)
    }

    /// Images drawn from the likelihood with parameters `params`, `[N, C, H, W]` in [0, 1].
    fn draws(&self, params: &Tensor) -> Tensor {
        self.likelihood().sample(params)
    }

    /// `n` images from the model, with the prior's Gaussian noise scaled by `temperature` (1 =
    /// the prior itself): the likelihood's means, `[n, C, H, W]`.
    fn sample(&self, n: i64, temperature: f64) -> Result<Tensor, ModelError> {
        check_count(n, "sample")?;
        Ok(self.means(&self.prior_params(n, temperature)?))
    }

    /// `n` images drawn from the model, with the prior's Gaussian noise scaled by
    /// `temperature`: z from the prior, then x ~ p(x | z), `[n, C, H, W]` in [0, 1].
    fn draw(&self, n: i64, temperature: f64) -> Result<Tensor, ModelError> {
        check_count(n, "draw")?;
        Ok(self.draws(&self.prior_params(n, temperature)?))
    }

    /// The likelihood's means of the reconstruction of `x` through the posterior mean.
    fn reconstruct(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let posterior = self.encode(x)?;
        Ok(self.means(&self.decode(&posterior.mu)?))
    }

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

    /// An evaluator of [`log_likelihood_iw`](Vae::log_likelihood_iw) over many calls (a test
    /// set, image after image) that prepares what depends only on the weights once: the same
    /// bound at the same random draws, faster. In [`IwPrecision::Fp32`] it is the bound to
    /// float rounding; [`IwPrecision::Auto`] lets the kind use a faster arithmetic where it
    /// has been measured to move the estimate by far less than 0.01 nats
    /// ([`IwEvaluator::bf16_products`]). `None` (the default) where the kind has none or
    /// computes in other than f32. It borrows the model: keep the weights unchanged while it
    /// lives.
    fn iw_evaluator(&self, precision: IwPrecision) -> Option<Box<dyn IwEvaluator + '_>> {
        let _ = precision;
        None
    }
}

/// The arithmetic [`Vae::iw_evaluator`] may use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum IwPrecision {
    /// The fastest arithmetic checked to keep the estimate: on a CPU with AMX-BF16, the
    /// ladder's top-down convolutions of binary data round their inputs and weights to bf16
    /// and sum in f32; IEEE f32 elsewhere.
    #[default]
    Auto,
    /// IEEE f32 throughout, as the model's own pass.
    Fp32,
}

/// What [`Vae::iw_evaluator`] gives: the importance-weighted bound with the model's
/// preparation done once.
pub trait IwEvaluator {
    /// What [`Vae::log_likelihood_iw`] gives for `x`, `k` and `max_rows`, drawing the same
    /// noise from libtorch's generator.
    fn log_likelihood_iw(&self, x: &Tensor, k: i64, max_rows: i64) -> Result<Tensor, ModelError>;

    /// Whether some of its convolutions take their products in bf16 (f32 tensors, inputs and
    /// weights rounded to bf16, sums in f32: oneDNN's bf16 math mode, which AMX tiles run),
    /// so the bound differs from the f32 one by rounding of that size.
    fn bf16_products(&self) -> bool {
        false
    }
}

/// A model kind's configuration: what builds the model, and what the trainer and the
/// commands read without knowing the kind. Serialised as a table of its fields beside
/// `kind = KIND` (a run's `[model]` table, a checkpoint's metadata).
///
/// Implement it for a kind of your own, [`register_kind`](crate::register_kind) it, and a
/// [`ModelConfig`] holding it trains, checkpoints and reloads through `vae-train` like the
/// built-in kinds ([`ConvVaeConfig`](crate::ConvVaeConfig),
/// [`LadderVaeConfig`](crate::LadderVaeConfig)).
pub trait VaeConfig:
    Clone + fmt::Debug + PartialEq + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// The kind's name, the table's `kind` value: unique among a program's kinds.
    const KIND: &'static str;

    /// Builds the model's variables under `p` (validating the configuration first).
    fn build(&self, p: &nn::Path<'_>) -> Result<Box<dyn Vae>, ModelError>;

    /// Checks the configuration describes a working model.
    fn validate(&self) -> Result<(), ModelError> {
        Ok(())
    }

    /// The image shape modelled, (C, H, W).
    fn image_shape(&self) -> [i64; 3];

    /// Sets the image shape modelled: the data's, when a run starts.
    fn set_image_shape(&mut self, shape: [i64; 3]);

    /// The dimension of the z that [`Vae::encode`] gives and [`Vae::decode`] takes.
    fn latent_dim(&self) -> i64;

    /// The number of latent units in each latent group, in the order of
    /// [`ElboTerms::kl_groups`]: one group of [`VaeConfig::latent_dim`] by default.
    fn latent_group_sizes(&self) -> Vec<i64> {
        vec![self.latent_dim()]
    }

    /// The number of latent groups, each with its own KL in [`ElboTerms::kl_groups`].
    fn latent_groups(&self) -> usize {
        self.latent_group_sizes().len()
    }

    /// The observation model p(x | z).
    fn likelihood(&self) -> Likelihood;

    /// Sets the observation model p(x | z).
    fn set_likelihood(&mut self, likelihood: Likelihood);

    /// Whether [`Vae::elbo_with_noise`] gives the separate KLs that free bits act on
    /// ([`ElboTerms::kl_dims`]).
    fn has_kl_per_dimension(&self) -> bool {
        false
    }
}

/// [`VaeConfig`] as an object, for [`ModelConfig`].
trait AnyConfig: fmt::Debug + Send + Sync {
    fn kind(&self) -> &'static str;
    fn build(&self, p: &nn::Path<'_>) -> Result<Box<dyn Vae>, ModelError>;
    fn validate(&self) -> Result<(), ModelError>;
    fn image_shape(&self) -> [i64; 3];
    fn set_image_shape(&mut self, shape: [i64; 3]);
    fn latent_dim(&self) -> i64;
    fn latent_groups(&self) -> usize;
    fn latent_group_sizes(&self) -> Vec<i64>;
    fn likelihood(&self) -> Likelihood;
    fn set_likelihood(&mut self, likelihood: Likelihood);
    fn has_kl_per_dimension(&self) -> bool;
    fn boxed_clone(&self) -> Box<dyn AnyConfig>;
    fn same_as(&self, other: &dyn AnyConfig) -> bool;
    fn settings(&self) -> &dyn erased_serde::Serialize;
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<T: VaeConfig> AnyConfig for T {
    fn kind(&self) -> &'static str {
        T::KIND
    }
    fn build(&self, p: &nn::Path<'_>) -> Result<Box<dyn Vae>, ModelError> {
        VaeConfig::build(self, p)
    }
    fn validate(&self) -> Result<(), ModelError> {
        VaeConfig::validate(self)
    }
    fn image_shape(&self) -> [i64; 3] {
        VaeConfig::image_shape(self)
    }
    fn set_image_shape(&mut self, shape: [i64; 3]) {
        VaeConfig::set_image_shape(self, shape)
    }
    fn latent_dim(&self) -> i64 {
        VaeConfig::latent_dim(self)
    }
    fn latent_groups(&self) -> usize {
        VaeConfig::latent_groups(self)
    }
    fn latent_group_sizes(&self) -> Vec<i64> {
        VaeConfig::latent_group_sizes(self)
    }
    fn likelihood(&self) -> Likelihood {
        VaeConfig::likelihood(self)
    }
    fn set_likelihood(&mut self, likelihood: Likelihood) {
        VaeConfig::set_likelihood(self, likelihood)
    }
    fn has_kl_per_dimension(&self) -> bool {
        VaeConfig::has_kl_per_dimension(self)
    }
    fn boxed_clone(&self) -> Box<dyn AnyConfig> {
        Box::new(self.clone())
    }
    fn same_as(&self, other: &dyn AnyConfig) -> bool {
        other.as_any().downcast_ref::<T>() == Some(self)
    }
    fn settings(&self) -> &dyn erased_serde::Serialize {
        self
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// A model of any kind, as stored in checkpoints and config files: `kind = "conv"` and that
/// kind's own keys (`[model]` in a run's `config.toml`).
///
/// It holds one kind's [`VaeConfig`]: the built-in kinds', or a program's own once it is
/// registered ([`register_kind`](crate::register_kind)); reading a table of a kind the program
/// has not registered is an error naming it. [`ModelConfig::build`] makes the [`Vae`] it
/// describes; [`ModelConfig::get`] gives the kind's own settings back.
pub struct ModelConfig(Box<dyn AnyConfig>);

impl ModelConfig {
    /// Holds `config`.
    pub fn new(config: impl VaeConfig) -> Self {
        Self(Box::new(config))
    }

    /// Builds the model's variables under `p`.
    pub fn build(&self, p: &nn::Path<'_>) -> Result<Box<dyn Vae>, ModelError> {
        self.0.build(p)
    }

    /// Checks the configuration describes a working model.
    pub fn validate(&self) -> Result<(), ModelError> {
        self.0.validate()
    }

    /// The kind's name, as in the `kind` key.
    pub fn kind(&self) -> &'static str {
        self.0.kind()
    }

    /// The kind's own settings, when it is the kind `T`.
    pub fn get<T: VaeConfig>(&self) -> Option<&T> {
        self.0.as_any().downcast_ref()
    }

    /// The kind's own settings, mutably, when it is the kind `T`.
    pub fn get_mut<T: VaeConfig>(&mut self) -> Option<&mut T> {
        self.0.as_any_mut().downcast_mut()
    }

    /// The image shape modelled, (C, H, W).
    pub fn image_shape(&self) -> [i64; 3] {
        self.0.image_shape()
    }

    /// Sets the image shape modelled, (C, H, W): the data's, when a run starts.
    pub fn set_image_shape(&mut self, shape: [i64; 3]) {
        self.0.set_image_shape(shape)
    }

    /// The dimension of the z that [`Vae::encode`] gives and [`Vae::decode`] takes: the top
    /// group's, for a hierarchical model.
    pub fn latent_dim(&self) -> i64 {
        self.0.latent_dim()
    }

    /// The number of latent groups, each with its own KL in [`ElboTerms::kl_groups`]: one
    /// for a conv VAE; the top group and each spatial group for a hierarchical one.
    pub fn latent_groups(&self) -> usize {
        self.0.latent_groups()
    }

    /// The latent units of each group, in the order of [`ElboTerms::kl_groups`].
    pub fn latent_group_sizes(&self) -> Vec<i64> {
        self.0.latent_group_sizes()
    }

    /// The observation model p(x | z).
    pub fn likelihood(&self) -> Likelihood {
        self.0.likelihood()
    }

    /// Sets the observation model p(x | z).
    pub fn set_likelihood(&mut self, likelihood: Likelihood) {
        self.0.set_likelihood(likelihood)
    }

    /// Whether [`Vae::elbo`] gives the separate KLs that free bits act on
    /// ([`ElboTerms::kl_dims`]): each dimension's, for a conv VAE with the standard-normal
    /// prior; each group's, for a hierarchical model.
    pub fn has_kl_per_dimension(&self) -> bool {
        self.0.has_kl_per_dimension()
    }
}

impl Clone for ModelConfig {
    fn clone(&self) -> Self {
        Self(self.0.boxed_clone())
    }
}

impl PartialEq for ModelConfig {
    fn eq(&self, other: &Self) -> bool {
        self.0.same_as(other.0.as_ref())
    }
}

impl fmt::Debug for ModelConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<T: VaeConfig> From<T> for ModelConfig {
    fn from(config: T) -> Self {
        Self::new(config)
    }
}

/// `kind = "..."` first, then the kind's own keys in their order.
impl Serialize for ModelConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Tagged<'a> {
            kind: &'a str,
            #[serde(flatten)]
            settings: &'a dyn erased_serde::Serialize,
        }
        Tagged {
            kind: self.kind(),
            settings: self.0.settings(),
        }
        .serialize(s)
    }
}
