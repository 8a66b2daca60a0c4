//! A model kind of our own: a VAE whose encoder and decoder are multilayer perceptrons
//! (Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014, appendix C), written
//! against `vae_model`'s public traits only.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor, nn};
use vae_model::blocks::{check_images, check_rows, linear};
use vae_model::{
    ElboTerms, ImportanceTerms, Likelihood, ModelConfig, ModelError, Posterior, Vae, VaeConfig,
    loss,
};

/// The MLP VAE's settings: the `[model]` table of a run with `kind = "mlp"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MlpVaeConfig {
    /// (C, H, W) of the images; the trainer sets it from the data.
    pub image_shape: [i64; 3],
    /// Width of the one hidden layer of the encoder and of the decoder.
    pub hidden: i64,
    /// Dimension of z.
    pub latent_dim: i64,
    /// The observation model p(x | z).
    pub likelihood: Likelihood,
}

impl Default for MlpVaeConfig {
    fn default() -> Self {
        Self {
            image_shape: [1, 28, 28],
            hidden: 200,
            latent_dim: 16,
            likelihood: Likelihood::Bernoulli,
        }
    }
}

impl VaeConfig for MlpVaeConfig {
    const KIND: &'static str = "mlp";

    fn build(&self, p: &nn::Path<'_>) -> Result<Box<dyn Vae>, ModelError> {
        self.validate()?;
        let [c, h, w] = self.image_shape;
        let pixels = c * h * w;
        let outputs = pixels * self.likelihood.params_per_channel();
        Ok(Box::new(MlpVae {
            config: self.clone(),
            encoder: (
                linear(p / "encoder" / "hidden", pixels, self.hidden),
                linear(p / "encoder" / "head", self.hidden, 2 * self.latent_dim),
            ),
            decoder: (
                linear(p / "decoder" / "hidden", self.latent_dim, self.hidden),
                linear(p / "decoder" / "out", self.hidden, outputs),
            ),
            device: p.device(),
        }))
    }

    fn validate(&self) -> Result<(), ModelError> {
        if self.image_shape.iter().any(|&s| s < 1) || self.hidden < 1 || self.latent_dim < 1 {
            return Err(ModelError::InvalidConfig(format!(
                "the MLP VAE needs positive sizes, got {self:?}"
            )));
        }
        self.likelihood
            .validate()
            .map_err(ModelError::InvalidConfig)
    }

    fn image_shape(&self) -> [i64; 3] {
        self.image_shape
    }

    fn set_image_shape(&mut self, shape: [i64; 3]) {
        self.image_shape = shape;
    }

    fn latent_dim(&self) -> i64 {
        self.latent_dim
    }

    fn likelihood(&self) -> Likelihood {
        self.likelihood
    }

    fn set_likelihood(&mut self, likelihood: Likelihood) {
        self.likelihood = likelihood;
    }

    /// The standard-normal prior's KL per dimension, so free bits work.
    fn has_kl_per_dimension(&self) -> bool {
        true
    }
}

/// The MLP VAE: x → ReLU(W₁x) → [μ, log σ²]; z → ReLU(W₃z) → the likelihood's parameters;
/// p(z) = N(0, I).
#[derive(Debug)]
pub struct MlpVae {
    config: MlpVaeConfig,
    encoder: (nn::Linear, nn::Linear),
    decoder: (nn::Linear, nn::Linear),
    device: Device,
}

impl MlpVae {
    fn posterior(&self, x: &Tensor) -> Posterior {
        let h = x.flatten(1, -1).apply(&self.encoder.0).relu();
        let stats = h.apply(&self.encoder.1).chunk(2, 1);
        Posterior {
            mu: stats[0].shallow_clone(),
            logvar: stats[1].shallow_clone(),
        }
    }

    fn params(&self, z: &Tensor) -> Tensor {
        let [c, h, w] = self.config.image_shape;
        let p = self.config.likelihood.params_per_channel();
        let out = z.apply(&self.decoder.0).relu().apply(&self.decoder.1);
        out.view([-1, c * p, h, w])
    }
}

impl Vae for MlpVae {
    fn config(&self) -> ModelConfig {
        ModelConfig::new(self.config.clone())
    }

    fn device(&self) -> Device {
        self.device
    }

    fn encode(&self, x: &Tensor) -> Result<Posterior, ModelError> {
        check_images(x, self.config.image_shape)?;
        Ok(self.posterior(x))
    }

    fn decode(&self, z: &Tensor) -> Result<Tensor, ModelError> {
        check_rows("latents", z, None, self.config.latent_dim)?;
        Ok(self.params(z))
    }

    fn elbo_with_noise(&self, x: &Tensor, eps: &Tensor) -> Result<ElboTerms, ModelError> {
        let q = self.encode(x)?;
        check_rows("noise", eps, Some(x.size()[0]), self.config.latent_dim)?;
        let z = &q.mu + q.std() * eps;
        let kl_dims = loss::gaussian_kl_dims(&q.mu, &q.logvar);
        let kl = kl_dims.sum_dim_intlist(-1, false, Kind::Float);
        Ok(ElboTerms {
            reconstruction: self.config.likelihood.nll(&self.params(&z), x),
            kl_groups: vec![kl.shallow_clone()],
            kl,
            kl_dims: Some(kl_dims),
        })
    }

    fn importance_terms(&self, x: &Tensor, k: i64) -> Result<ImportanceTerms, ModelError> {
        let q = self.encode(x)?;
        let n = x.size()[0];
        let eps = Tensor::randn([k, n, self.config.latent_dim], (Kind::Float, x.device()));
        let z = &q.mu + &eps * q.std();
        let params = self.params(&z.view([k * n, -1]));
        let images = x
            .unsqueeze(0)
            .expand([k, -1, -1, -1, -1], false)
            .flatten(0, 1);
        Ok(ImportanceTerms {
            log_px: self
                .config
                .likelihood
                .log_prob(&params, &images)
                .view([k, n]),
            log_pz: loss::standard_normal_log_density(&z),
            log_qz: loss::diagonal_normal_log_density(&eps, &q.logvar),
        })
    }

    fn prior_params(&self, n: i64, temperature: f64) -> Result<Tensor, ModelError> {
        let z =
            Tensor::randn([n, self.config.latent_dim], (Kind::Float, self.device)) * temperature;
        Ok(self.params(&z))
    }
}
