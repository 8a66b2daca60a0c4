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
    /// What the optimiser maximises: the ELBO, or the IWAE bound with `iw_k` samples.
    pub objective: Objective,
    /// Importance samples per image of the IWAE objective.
    pub iw_k: i64,
    /// Free bits: a floor, in nats, on each latent dimension's batch-mean KL (0: off; ELBO only).
    pub free_bits: f64,
    /// Learning-rate schedule after the warm-up.
    pub lr_schedule: LrSchedule,
    /// Steps of linear learning-rate warm-up from 0 to `lr`.
    pub warmup_steps: u64,
    /// The cosine schedule's final learning rate.
    pub min_lr: f64,
    /// Stop when the validation ELBO has not improved for this many epochs.
    pub patience: Option<usize>,
    /// The update rule.
    pub optimizer: Optimizer,
    /// AdamW's decoupled weight decay λ (p ← p·(1 − lr·λ) each step); AdamW only.
    pub weight_decay: f64,
    /// Keep an exponential moving average of the weights with this decay (e.g. 0.999) and
    /// evaluate, select and save the best checkpoint with it (Polyak averaging); None: off.
    pub ema_decay: Option<f64>,
    /// Arithmetic of the convs and dense layers: fp32, or bf16 (opt-in reduced precision;
    /// weights, gradients, optimiser state and losses stay f32).
    pub precision: Precision,
}

/// The arithmetic precision of training.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 throughout.
    #[default]
    Fp32,
    /// bfloat16 convs and dense layers with f32 master weights (autocast-style).
    Bf16,
}

/// The optimiser's update rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    /// Adam (Kingma & Ba 2015).
    #[default]
    Adam,
    /// Adam with decoupled weight decay (Loshchilov & Hutter 2019).
    Adamw,
    /// Adam's infinity-norm variant (Kingma & Ba 2015, §7.1).
    Adamax,
}

/// The training objective.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// The evidence lower bound (β-weighted, with warm-up and free bits if set).
    #[default]
    Elbo,
    /// The importance-weighted bound (Burda et al. 2016) with `iw_k` samples.
    Iwae,
}

/// How the learning rate moves after the warm-up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// `lr` throughout.
    #[default]
    Constant,
    /// Cosine decay from `lr` to `min_lr` over the remaining steps (Loshchilov & Hutter 2017).
    Cosine,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            // Measured (docs/performance.md): Adam at a 4e-3 peak with 300 warm-up steps and
            // cosine decay to 1e-4 over 12 epochs reaches test ELBO -95.7, against -97.7 for a
            // constant 2e-3 and -97.8 for the reference's constant 1e-3 over 10 epochs.
            epochs: 12,
            batch_size: 128,
            lr: 4e-3,
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
            objective: Objective::Elbo,
            iw_k: 5,
            free_bits: 0.0,
            lr_schedule: LrSchedule::Cosine,
            warmup_steps: 300,
            min_lr: 1e-4,
            patience: None,
            optimizer: Optimizer::Adam,
            weight_decay: 0.0,
            ema_decay: None,
            precision: Precision::Fp32,
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
        if self.iw_k < 1 {
            return bad(format!(
                "IWAE samples k must be at least 1, got {}",
                self.iw_k
            ));
        }
        if !(self.free_bits.is_finite() && self.free_bits >= 0.0) {
            return bad(format!(
                "free bits must be a non-negative number, got {}",
                self.free_bits
            ));
        }
        if !(self.min_lr.is_finite() && self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            return bad(format!("min_lr must lie in [0, lr], got {}", self.min_lr));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!(
                "weight decay must be a non-negative number, got {}",
                self.weight_decay
            ));
        }
        if self.weight_decay > 0.0 && self.optimizer != Optimizer::Adamw {
            return bad("weight decay is AdamW's: use --optimizer adamw with it".into());
        }
        if let Some(d) = self.ema_decay
            && !(0.0..1.0).contains(&d)
        {
            return bad(format!("EMA decay must lie in [0, 1), got {d}"));
        }
        if self.patience == Some(0) {
            return bad("patience must be at least 1 epoch".into());
        }
        Ok(())
    }

    /// The learning rate at global step `step` (0-based) of `total` steps: a linear warm-up
    /// over `warmup_steps`, then constant or cosine-decayed to `min_lr` at `total`.
    pub fn lr_at(&self, step: u64, total: u64) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        match self.lr_schedule {
            LrSchedule::Constant => self.lr,
            LrSchedule::Cosine => {
                let span = total.saturating_sub(self.warmup_steps).max(1) as f64;
                let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
                self.min_lr
                    + (self.lr - self.min_lr)
                        * 0.5
                        * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
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

/// Named starting points for a run; see [`RunConfig::preset`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// The PyTorch peer's model and protocol: standard-normal prior, Adam at a constant 1e-3,
    /// 10 epochs. For comparisons.
    Fast,
    /// The best model measured to finish within 10 minutes of training on 2 CPU cores.
    Default,
    /// A bigger model for a longer run or a GPU.
    Best,
}

impl std::str::FromStr for Preset {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fast" => Ok(Self::Fast),
            "default" => Ok(Self::Default),
            "best" => Ok(Self::Best),
            other => Err(TrainError::InvalidConfig(format!(
                "unknown preset {other:?}: use fast, default or best"
            ))),
        }
    }
}

/// The default preset's epochs: what fits 10 minutes of training on 2 CPU cores.
pub const DEFAULT_EPOCHS: usize = DEFAULT_PRESET_EPOCHS;
const DEFAULT_PRESET_EPOCHS: usize = 36;

impl RunConfig {
    /// The run configuration of a preset. `RunConfig::default()` is the library's plain
    /// defaults (the reference architecture with our learning-rate schedule); the presets are
    /// what `vae train --preset` starts from, `Default` when no preset is named.
    pub fn preset(preset: Preset) -> Self {
        let mut run = Self::default();
        match preset {
            Preset::Fast => {
                run.train.lr = 1e-3;
                run.train.epochs = 10;
                run.train.lr_schedule = LrSchedule::Constant;
                run.train.warmup_steps = 0;
                run.train.min_lr = 0.0;
            }
            Preset::Default => {
                run.model.prior = vae_model::Prior::Vamp { components: 100 };
                run.train.epochs = DEFAULT_PRESET_EPOCHS;
            }
            Preset::Best => {
                run.model.prior = vae_model::Prior::Vamp { components: 500 };
                run.model.res_blocks = 1;
                run.train.epochs = 100;
            }
        }
        run
    }

    /// `toml_text` (a `--config` file: any subset of the `[model]` and `[train]` keys) laid
    /// over `base`: keys it names replace the base's, the rest keep the base's values.
    /// Unknown keys and wrong types are errors.
    pub fn overlay_toml(base: &Self, toml_text: &str) -> Result<Self> {
        let invalid = |e: &dyn std::fmt::Display| TrainError::InvalidConfig(e.to_string());
        let over: toml::Table = toml::from_str(toml_text).map_err(|e| invalid(&e))?;
        let mut merged = toml::Table::try_from(base).map_err(|e| invalid(&e))?;
        fn merge(dst: &mut toml::Table, src: toml::Table) {
            for (k, v) in src {
                match (dst.get_mut(&k), v) {
                    // A tagged table (the prior) naming its kind is replaced whole.
                    (Some(toml::Value::Table(d)), toml::Value::Table(s))
                        if !s.contains_key("kind") =>
                    {
                        merge(d, s)
                    }
                    (_, v) => {
                        dst.insert(k, v);
                    }
                }
            }
        }
        merge(&mut merged, over);
        toml::Value::Table(merged)
            .try_into()
            .map_err(|e: toml::de::Error| invalid(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_differ_as_documented_and_config_files_overlay_them() {
        let fast = RunConfig::preset(Preset::Fast);
        assert_eq!(fast.model, vae_model::ConvVaeConfig::default());
        assert_eq!((fast.train.lr, fast.train.epochs), (1e-3, 10));
        let default = RunConfig::preset(Preset::Default);
        assert_eq!(
            default.model.prior,
            vae_model::Prior::Vamp { components: 100 }
        );
        assert_eq!(default.train.epochs, DEFAULT_EPOCHS);
        assert_eq!("best".parse::<Preset>().unwrap(), Preset::Best);
        assert!("huge".parse::<Preset>().is_err());
        // A file naming two keys changes those two only.
        let text = "[model]\nlatent_dim = 8\n[train]\nepochs = 3\n";
        let merged = RunConfig::overlay_toml(&default, text).unwrap();
        assert_eq!((merged.model.latent_dim, merged.train.epochs), (8, 3));
        assert_eq!(merged.model.prior, default.model.prior);
        assert_eq!(merged.train.lr, default.train.lr);
        // The prior's kind can be switched: a table naming its kind replaces the preset's.
        let standard =
            RunConfig::overlay_toml(&default, "[model.prior]\nkind = \"standard\"\n").unwrap();
        assert_eq!(standard.model.prior, vae_model::Prior::Standard);
        let mut std_base = default.clone();
        std_base.model.prior = vae_model::Prior::Standard;
        let vamp = RunConfig::overlay_toml(
            &std_base,
            "[model.prior]\nkind = \"vamp\"\ncomponents = 7\n",
        )
        .unwrap();
        assert_eq!(vamp.model.prior, vae_model::Prior::Vamp { components: 7 });
        // Unknown keys stay errors.
        let err = RunConfig::overlay_toml(&default, "[model]\nlatnt_dim = 3\n").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        // A run's own config.toml round-trips.
        let text = toml::to_string(&default).unwrap();
        assert_eq!(RunConfig::overlay_toml(&fast, &text).unwrap(), default);
    }

    #[test]
    fn warmup_then_cosine_reaches_min_lr() {
        let c = TrainConfig {
            lr: 1.0,
            min_lr: 0.1,
            warmup_steps: 10,
            lr_schedule: LrSchedule::Cosine,
            ..TrainConfig::default()
        };
        assert!((c.lr_at(0, 110) - 0.1).abs() < 1e-12);
        assert!((c.lr_at(9, 110) - 1.0).abs() < 1e-12);
        assert!((c.lr_at(10, 110) - 1.0).abs() < 1e-12);
        assert!(
            (c.lr_at(60, 110) - 0.55).abs() < 1e-12,
            "halfway: the mean of lr and min_lr"
        );
        assert!((c.lr_at(110, 110) - 0.1).abs() < 1e-12);
        let constant = TrainConfig {
            lr: 0.5,
            lr_schedule: LrSchedule::Constant,
            warmup_steps: 0,
            ..TrainConfig::default()
        };
        assert_eq!(constant.lr_at(1000, 10), 0.5);
    }

    #[test]
    fn kl_warmup_is_linear_to_beta() {
        let c = TrainConfig {
            beta: 2.0,
            kl_warmup_steps: 4,
            ..TrainConfig::default()
        };
        assert_eq!(
            [
                c.kl_weight(0),
                c.kl_weight(1),
                c.kl_weight(3),
                c.kl_weight(100)
            ],
            [0.5, 1.0, 2.0, 2.0]
        );
    }

    #[test]
    fn older_configs_without_the_new_fields_still_load() {
        let c: TrainConfig = serde_json::from_str(r#"{"epochs": 3, "lr": 0.001}"#).unwrap();
        assert_eq!(
            (c.objective, c.free_bits, c.patience),
            (Objective::Elbo, 0.0, None)
        );
    }
}
