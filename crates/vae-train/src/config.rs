use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// How to train: everything but the architecture (see `vae_model::ConvVaeConfig`).
///
/// Serialised in every checkpoint and in a run's `config.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// Adam's learning rate.
    pub lr: f64,
    /// Adam's β₁ and β₂.
    pub betas: (f64, f64),
    /// Adam's ε.
    pub eps: f64,
    /// Seed of initialisation, shuffling, binarisation and sampling noise.
    pub seed: u64,
    /// Weight of the KL term (β-VAE; 1 is the ELBO).
    pub beta: f64,
    /// Steps over which the KL weight rises linearly from 0 to `beta` (0: no warm-up).
    pub kl_warmup_steps: u64,
    /// Clip the global gradient norm to this value.
    pub grad_clip: Option<f64>,
    /// Dynamic binarisation of training images (the standard protocol); off trains on
    /// continuous intensities in [0, 1] as BCE targets.
    pub binarize: bool,
    /// Training examples held out for validation (the last ones).
    pub validation_size: usize,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Intra-op threads for libtorch on CPU (None: libtorch's default, one per core).
    pub threads: Option<usize>,
    /// Stop after this many steps in all (benchmarks); None trains all epochs.
    pub max_steps: Option<u64>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 10,
            batch_size: 128,
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            seed: 0,
            beta: 1.0,
            kl_warmup_steps: 0,
            grad_clip: None,
            binarize: true,
            validation_size: vae_data::DEFAULT_VALIDATION_SIZE,
            device: "auto".into(),
            threads: None,
            max_steps: None,
        }
    }
}

impl TrainConfig {
    /// Checks every value is in range.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::InvalidConfig(m));
        if self.epochs == 0 {
            return bad("epochs must be at least 1".into());
        }
        if self.batch_size == 0 {
            return bad("batch size must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!(
                "learning rate must be a positive number, got {}",
                self.lr
            ));
        }
        let (b1, b2) = self.betas;
        if !((0.0..1.0).contains(&b1) && (0.0..1.0).contains(&b2)) {
            return bad(format!("Adam betas must lie in [0, 1), got ({b1}, {b2})"));
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return bad(format!(
                "Adam eps must be a positive number, got {}",
                self.eps
            ));
        }
        if !(self.beta.is_finite() && self.beta >= 0.0) {
            return bad(format!(
                "KL weight beta must be a non-negative number, got {}",
                self.beta
            ));
        }
        if let Some(c) = self.grad_clip
            && !(c.is_finite() && c > 0.0)
        {
            return bad(format!("gradient clip must be a positive number, got {c}"));
        }
        if self.threads == Some(0) {
            return bad("threads must be at least 1".into());
        }
        if self.max_steps == Some(0) {
            return bad("max steps must be at least 1".into());
        }
        Ok(())
    }

    /// The KL weight at global step `step` (0-based), with the linear warm-up applied.
    pub fn kl_weight(&self, step: u64) -> f64 {
        if self.kl_warmup_steps == 0 {
            self.beta
        } else {
            self.beta * ((step + 1) as f64 / self.kl_warmup_steps as f64).min(1.0)
        }
    }
}

/// A whole run's configuration, as in a `--config` TOML file and a run's `config.toml`:
/// a `[model]` table ([`ConvVaeConfig`](vae_model::ConvVaeConfig)) and a `[train]` table
/// ([`TrainConfig`]). Missing keys take their defaults; unknown keys are errors.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// The architecture.
    pub model: vae_model::ConvVaeConfig,
    /// The training settings.
    pub train: TrainConfig,
}
