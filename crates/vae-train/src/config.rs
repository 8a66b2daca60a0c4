use serde::{Deserialize, Serialize};

use vae_model::ModelConfig;

use crate::device::Device;
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
    /// Dynamic binarisation of training and evaluation images, for the Bernoulli likelihood
    /// (the binarised-MNIST protocol); off, the Bernoulli's BCE takes intensities in [0, 1] as
    /// targets. The other likelihoods model the intensities themselves and never binarise
    /// ([`TrainConfig::binarizes`]).
    pub binarize: bool,
    /// Training images held out for validation (the last ones); `None`: the last 10,000, or a
    /// sixth of the set when that is smaller ([`TrainConfig::validation_images`]).
    pub validation_size: Option<usize>,
    /// Where to train.
    pub device: Device,
    /// Intra-op threads for libtorch on CPU (None: libtorch's default, one per core).
    pub threads: Option<usize>,
    /// Stop after this many steps in all (benchmarks); None trains all epochs. A limit of the
    /// invocation, not of the run: checkpoints store `None`, so a resumed run goes on.
    pub max_steps: Option<u64>,
    /// What the optimiser maximises: the ELBO, or the IWAE bound with `iw_k` samples.
    pub objective: Objective,
    /// Importance samples per image of the IWAE objective.
    pub iw_k: i64,
    /// The last `iwae_epochs` epochs maximise the IWAE bound with `iw_k` samples: a fine-tune
    /// of a model trained on the ELBO (0: none), after the learning-rate schedule, at its
    /// final rate ([`TrainConfig::schedule_epochs`]). The best checkpoint among them is the one
    /// with the best validation IWAE bound at `iw_k` ([`EpochMetrics::val_iw`](crate::EpochMetrics::val_iw)).
    #[serde(skip_serializing_if = "is_zero")]
    pub iwae_epochs: usize,
    /// Free bits: a floor, in nats, on the batch-mean KL of each latent dimension (of each
    /// latent group, for a hierarchical model) (0: off; ELBO only).
    pub free_bits: f64,
    /// Balance the KL across latent groups during the KL warm-up (`kl_warmup_steps`): each
    /// group's KL weighted by NVAE's coefficient ([`vae_model::loss::kl_balance_coefficients`]),
    /// so that groups carrying little information per unit are pressed less (hierarchical
    /// models; ELBO only).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub kl_balance: bool,
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
    /// Arithmetic of the convs and dense layers: fp32, bf16 (weights, gradients, optimiser
    /// state, losses and evaluation stay f32), or auto: what [`Precision::resolve`] picks for
    /// the device. A started run stores the precision it resolved to.
    pub precision: Precision,
}

/// The names of a settings enum's values in config files and on the command line, the one
/// table they are written in: `name`, `Display`, `FromStr` and serde's (de)serialisation by
/// them. (Clap's `ValueEnum` derives the same kebab-case names; a test holds them equal.)
macro_rules! named {
    ($ty:ident, $what:literal, $($variant:ident => $name:literal),+) => {
        impl $ty {
            /// Its name in config files and on the command line.
            pub fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $name),+
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let name = String::deserialize(d)?;
                match name.as_str() {
                    $($name => Ok(Self::$variant),)+
                    other => Err(serde::de::Error::unknown_variant(other, &[$($name),+])),
                }
            }
        }

        impl std::str::FromStr for $ty {
            type Err = TrainError;
            fn from_str(s: &str) -> Result<Self> {
                match s.trim().to_ascii_lowercase().as_str() {
                    $($name => Ok(Self::$variant),)+
                    other => Err(TrainError::InvalidConfig(format!(
                        concat!("unknown ", $what, " {:?}: use {}"),
                        other,
                        [$($name),+].join(", ")
                    ))),
                }
            }
        }
    };
}

/// For serde's `skip_serializing_if`: a count left at zero.
fn is_zero(n: &usize) -> bool {
    *n == 0
}

named!(Precision, "precision", Auto => "auto", Fp32 => "fp32", Bf16 => "bf16");
named!(Optimizer, "optimizer", Adam => "adam", Adamw => "adamw", Adamax => "adamax");
named!(Objective, "objective", Elbo => "elbo", Iwae => "iwae");
named!(LrSchedule, "learning-rate schedule", Constant => "constant", Cosine => "cosine");
named!(Preset, "preset", Fast => "fast", Default => "default", Best => "best", Ladder => "ladder", LadderLong => "ladder-long", Ladder8bit => "ladder-8bit", Ladder8bitLong => "ladder-8bit-long", LadderGpu => "ladder-gpu");

/// The arithmetic precision of training.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Precision {
    /// bf16 where the device has bf16 matrix hardware that was measured faster, else f32:
    /// see [`Precision::resolve`].
    #[default]
    Auto,
    /// f32 throughout.
    Fp32,
    /// bfloat16 convs and dense layers with f32 master weights (autocast-style).
    Bf16,
}

/// The optimiser's update rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Objective {
    /// The evidence lower bound (β-weighted, with warm-up and free bits if set).
    #[default]
    Elbo,
    /// The importance-weighted bound (Burda et al. 2016) with `iw_k` samples.
    Iwae,
}

/// How the learning rate moves after the warm-up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum LrSchedule {
    /// `lr` throughout.
    #[default]
    Constant,
    /// Cosine decay from `lr` to `min_lr` over the remaining steps (Loshchilov & Hutter 2017).
    Cosine,
}

/// The training settings of `vae train` with no flags (the default preset): Adam at a 4e-3
/// peak with 300 warm-up steps and cosine decay to 1e-4 over 36 epochs, batch 128, dynamic
/// binarisation (why these: `docs/results.md`).
impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: DEFAULT_EPOCHS,
            batch_size: 128,
            lr: 4e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            seed: 0,
            beta: 1.0,
            kl_warmup_steps: 0,
            grad_clip: None,
            binarize: true,
            validation_size: None,
            device: Device::Auto,
            threads: None,
            max_steps: None,
            objective: Objective::Elbo,
            iw_k: 5,
            iwae_epochs: 0,
            free_bits: 0.0,
            kl_balance: false,
            lr_schedule: LrSchedule::Cosine,
            warmup_steps: 300,
            min_lr: 1e-4,
            patience: None,
            optimizer: Optimizer::Adam,
            weight_decay: 0.0,
            ema_decay: None,
            precision: Precision::Auto,
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
        if self.iwae_epochs > 0 {
            if self.iwae_epochs > self.epochs {
                return bad(format!(
                    "iwae_epochs ({}) must not exceed epochs ({})",
                    self.iwae_epochs, self.epochs
                ));
            }
            if self.objective == Objective::Iwae {
                return bad("iwae_epochs fine-tunes an ELBO run: the iwae objective already trains on the IWAE bound throughout".into());
            }
            if self.patience.is_some() {
                return bad("patience watches the validation ELBO, which an IWAE fine-tune does not improve: leave out patience or iwae_epochs".into());
            }
        }
        if self.kl_balance {
            if self.kl_warmup_steps == 0 {
                return bad(
                    "KL balancing acts during the KL warm-up: set kl_warmup_steps with kl_balance"
                        .into(),
                );
            }
            if self.free_bits > 0.0 {
                return bad("free bits and KL balancing both reshape the KL term: use one".into());
            }
            if self.objective == Objective::Iwae {
                return bad(
                    "KL balancing weights the ELBO's KL terms: use it with the elbo objective"
                        .into(),
                );
            }
        }
        Ok(())
    }

    /// The objective of epoch `epoch` (0-based): the IWAE bound in the last `iwae_epochs`,
    /// `objective` before.
    pub fn objective_at(&self, epoch: usize) -> Objective {
        if epoch + self.iwae_epochs >= self.epochs {
            Objective::Iwae
        } else {
            self.objective
        }
    }

    /// The epochs the learning-rate schedule spans: all of them, less an IWAE fine-tune's
    /// (`iwae_epochs`), which runs at the schedule's final rate; so `epochs = N + k,
    /// iwae_epochs = k` trains the `epochs = N` run, then fine-tunes it for `k` epochs.
    pub fn schedule_epochs(&self) -> usize {
        let elbo_epochs = self.epochs.saturating_sub(self.iwae_epochs);
        if elbo_epochs == 0 {
            self.epochs
        } else {
            elbo_epochs
        }
    }

    /// Whether images are binarised for a model with `likelihood`: `binarize`, for a
    /// likelihood of binary data only.
    pub fn binarizes(&self, likelihood: vae_model::Likelihood) -> bool {
        self.binarize && likelihood.binarised_data()
    }

    /// The images held out for validation from a training set of `n`: `validation_size`, or
    /// by default the last 10,000 or a sixth of the set, whichever is smaller.
    pub fn validation_images(&self, n: usize) -> usize {
        self.validation_size
            .unwrap_or_else(|| vae_data::DEFAULT_VALIDATION_SIZE.min(n / 6))
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
/// a `[model]` table ([`ModelConfig`], with its `kind`) and a `[train]` table ([`TrainConfig`]).
///
/// `RunConfig::default()` is exactly what `vae train` runs with no flags (the
/// [`Preset::Default`]); [`RunConfig::preset`] gives the others, [`RunConfig::overlay_toml`]
/// lays a config file over one, and fields can be set directly. The image shape is the data's,
/// set when the run starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// The architecture.
    pub model: ModelConfig,
    /// The training settings.
    pub train: TrainConfig,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self::preset(Preset::Default)
    }
}

/// Named starting points for a run; see [`RunConfig::preset`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Preset {
    /// The PyTorch peer's model and protocol: the reference conv VAE with a standard-normal
    /// prior, Adam at a constant 1e-3, 10 epochs. For comparisons.
    Fast,
    /// The best model measured to finish within 10 minutes of training on 2 CPU cores: the
    /// reference conv VAE with a 100-component VampPrior, Adam at a 4e-3 peak with 300
    /// warm-up steps and cosine decay to 1e-4 (`TrainConfig::default()`), 36 epochs.
    #[default]
    Default,
    /// A bigger model for a longer run or a GPU: a 500-component VampPrior, a residual block
    /// per level, 100 epochs.
    Best,
    /// A hierarchical VAE (`vae_model::LadderVae`) sized for about 35 minutes of training on
    /// 2 CPU cores: spatial latent groups at 7×7 and 14×14 under a vector top group with a
    /// 100-component VampPrior, KL warm-up and gradient clipping, 50 epochs.
    Ladder,
    /// `Ladder` with a pixel head (the default 16-channel, 3-layer [`vae_model::PixelHead`])
    /// over the Bernoulli logits, 108 epochs on the ELBO, then two on the IWAE bound (k = 5)
    /// at the schedule's final rate: the best binarised-MNIST model here for about an hour of
    /// 2 CPU cores where bf16 runs at twice fp32's speed, as with AMX (`docs/results.md`). The
    /// head needs one channel, so colour data is refused.
    LadderLong,
    /// The `Ladder` model for 8-bit images (grey-level MNIST, Fashion-MNIST, colour data):
    /// the discretised logistic likelihood (5 components), whatever the data folder is
    /// called, and the gradient clipped at 2,000, ten times `Ladder`'s, as its negative ELBO
    /// is many times larger; 30 epochs, 22 minutes on 2 cores of an Intel Xeon with AMX
    /// (bf16), where `--epochs 90` fills the quality budget's hour (`docs/results.md`, "8-bit
    /// data").
    #[cfg_attr(feature = "clap", value(name = "ladder-8bit"))]
    Ladder8bit,
    /// `Ladder8bit` with a pixel head (the default 16-channel, 3-layer
    /// [`vae_model::PixelHead`]) over the logistic parameters, 66 epochs on the ELBO, then one
    /// on the IWAE bound (k = 5) at the schedule's final rate: the best 8-bit MNIST model here
    /// for about an hour of 2 CPU cores where bf16 runs at twice fp32's speed
    /// (`docs/results.md`, "8-bit data"; not yet measured on Fashion-MNIST). The head needs
    /// one channel, so colour data is refused.
    #[cfg_attr(feature = "clap", value(name = "ladder-8bit-long"))]
    Ladder8bitLong,
    /// The hierarchical VAE, wider and deeper, for about 30 minutes on one GPU.
    LadderGpu,
}

/// The default preset's epochs: what fits 10 minutes of training on 2 CPU cores.
pub const DEFAULT_EPOCHS: usize = 36;

/// The `ladder-long` preset's epochs on the ELBO, and then on the IWAE bound.
const LADDER_LONG_EPOCHS: (usize, usize) = (108, 2);

/// The `ladder-8bit` preset's epochs.
const LADDER_8BIT_EPOCHS: usize = 30;

/// The `ladder-8bit-long` preset's epochs on the ELBO, and then on the IWAE bound.
const LADDER_8BIT_LONG_EPOCHS: (usize, usize) = (66, 1);

impl Preset {
    /// Whether the preset chooses the likelihood itself, so that `vae train` keeps it
    /// whatever the data (the others take the data's default likelihood).
    pub fn sets_likelihood(self) -> bool {
        matches!(self, Self::Ladder8bit | Self::Ladder8bitLong)
    }
}

impl RunConfig {
    /// The run configuration of a preset.
    pub fn preset(preset: Preset) -> Self {
        let mut model = vae_model::ConvVaeConfig::default();
        let mut train = TrainConfig::default();
        match preset {
            Preset::Fast => {
                train.lr = 1e-3;
                train.epochs = 10;
                train.lr_schedule = LrSchedule::Constant;
                train.warmup_steps = 0;
                train.min_lr = 0.0;
            }
            Preset::Default => {
                model.prior = vae_model::Prior::Vamp { components: 100 };
            }
            Preset::Best => {
                model.prior = vae_model::Prior::Vamp { components: 500 };
                model.res_blocks = 1;
                train.epochs = 100;
            }
            Preset::Ladder => return Self::ladder(false),
            Preset::LadderLong => {
                return Self::ladder(false).with_pixel_head_and_fine_tune(LADDER_LONG_EPOCHS);
            }
            Preset::Ladder8bit => {
                let mut run = Self::ladder(false);
                run.model.set_likelihood(vae_model::Likelihood::logistic());
                run.train.grad_clip = Some(2_000.0);
                run.train.epochs = LADDER_8BIT_EPOCHS;
                return run;
            }
            Preset::Ladder8bitLong => {
                return Self::preset(Preset::Ladder8bit)
                    .with_pixel_head_and_fine_tune(LADDER_8BIT_LONG_EPOCHS);
            }
            Preset::LadderGpu => return Self::ladder(true),
        }
        Self {
            model: model.into(),
            train,
        }
    }

    /// A ladder preset made the hour's model: the default [`vae_model::PixelHead`] over its
    /// likelihood, `elbo` epochs on the ELBO, then `iwae` on the IWAE bound at the schedule's
    /// final rate.
    fn with_pixel_head_and_fine_tune(mut self, (elbo, iwae): (usize, usize)) -> Self {
        if let Some(m) = self.model.get_mut::<vae_model::LadderVaeConfig>() {
            m.pixel_head = Some(vae_model::PixelHead::default());
        }
        self.train.epochs = elbo + iwae;
        self.train.iwae_epochs = iwae;
        self
    }

    /// The ladder presets: the hierarchical VAE, KL warm-up over the first epochs, and
    /// gradient clipping (what hierarchical VAEs need to train stably; NVAE §3.3, Child 2021).
    fn ladder(gpu: bool) -> Self {
        // A VampPrior on the top group (Tomczak & Welling 2018); what it costs and gives:
        // docs/results.md, "The hierarchical VAE".
        let mut model = vae_model::LadderVaeConfig {
            top_prior: vae_model::Prior::Vamp { components: 100 },
            ..vae_model::LadderVaeConfig::default()
        };
        let mut train = TrainConfig {
            lr: 2e-3,
            kl_warmup_steps: 2_000,
            grad_clip: Some(200.0),
            epochs: 50,
            ..TrainConfig::default()
        };
        if gpu {
            model.channels = vec![64, 128];
            model.group_channels = vec![8, 16];
            model.cells = vec![2, 2];
            model.top_prior = vae_model::Prior::Vamp { components: 500 };
            train.epochs = 200;
        }
        Self {
            model: model.into(),
            train,
        }
    }

    /// `toml_text` (a `--config` file: any subset of the `[model]` and `[train]` keys) laid
    /// over `self`: keys it names replace these, the rest keep their values. A table that
    /// names another `kind` (of model, prior or likelihood) replaces the whole table. Unknown
    /// keys and wrong types are errors.
    pub fn overlay_toml(&self, toml_text: &str) -> Result<Self> {
        let over: toml::Table =
            toml::from_str(toml_text).map_err(|e| TrainError::InvalidConfig(e.to_string()))?;
        self.overlay(over)
    }

    /// `over` (a table of `[model]` and `[train]` keys) laid over `self`, as
    /// [`RunConfig::overlay_toml`] does with a file's text.
    pub fn overlay(&self, over: toml::Table) -> Result<Self> {
        let invalid = |e: &dyn std::fmt::Display| TrainError::InvalidConfig(e.to_string());
        let mut merged = toml::Table::try_from(self).map_err(|e| invalid(&e))?;
        fn merge(dst: &mut toml::Table, src: toml::Table) {
            for (k, v) in src {
                match (dst.get_mut(&k), v) {
                    (Some(toml::Value::Table(d)), toml::Value::Table(s))
                        if s.get("kind").is_none_or(|kind| d.get("kind") == Some(kind)) =>
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

    /// Checks both halves and the settings that are valid alone but not together.
    pub fn validate(&self) -> Result<()> {
        self.train.validate()?;
        self.model.validate()?;
        if self.train.kl_balance && self.model.latent_groups() < 2 {
            return Err(TrainError::InvalidConfig(
                "KL balancing weighs latent groups against each other, and this model has one: \
                 use it with kind = \"ladder\""
                    .into(),
            ));
        }
        if self.train.free_bits > 0.0 && !self.model.has_kl_per_dimension() {
            return Err(TrainError::InvalidConfig(
                "free bits need the closed-form per-dimension KL of the standard normal prior; \
                 they cannot be combined with the VampPrior"
                    .into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Clap's names are the `named!` table's, so flags and config files agree.
    #[cfg(feature = "clap")]
    #[test]
    fn command_line_names_are_the_config_names() {
        fn same<T: clap::ValueEnum + std::fmt::Display>() {
            for v in T::value_variants() {
                let clap = v.to_possible_value().unwrap();
                assert_eq!(clap.get_name(), v.to_string());
            }
        }
        same::<Precision>();
        same::<Optimizer>();
        same::<Objective>();
        same::<LrSchedule>();
        same::<Preset>();
    }

    fn conv(run: &RunConfig) -> &vae_model::ConvVaeConfig {
        run.model.get::<vae_model::ConvVaeConfig>().unwrap()
    }

    #[test]
    fn presets_differ_as_documented_and_config_files_overlay_them() {
        let fast = RunConfig::preset(Preset::Fast);
        assert_eq!(fast.model, vae_model::ConvVaeConfig::default().into());
        assert_eq!((fast.train.lr, fast.train.epochs), (1e-3, 10));
        let default = RunConfig::preset(Preset::Default);
        assert_eq!(
            RunConfig::default(),
            default,
            "the default is the default preset"
        );
        assert_eq!(default.train, TrainConfig::default());
        assert_eq!(
            conv(&default).prior,
            vae_model::Prior::Vamp { components: 100 }
        );
        assert_eq!(default.train.epochs, DEFAULT_EPOCHS);
        assert_eq!(default.train.precision, Precision::Auto);
        assert_eq!("best".parse::<Preset>().unwrap(), Preset::Best);
        // A long preset is its ladder with the default pixel head, trained longer and then
        // fine-tuned on the IWAE bound.
        let short_of = |long: &RunConfig, epochs| {
            let head = long
                .model
                .get::<vae_model::LadderVaeConfig>()
                .and_then(|m| m.pixel_head);
            assert_eq!(head, Some(vae_model::PixelHead::default()));
            let mut short = long.clone();
            if let Some(m) = short.model.get_mut::<vae_model::LadderVaeConfig>() {
                m.pixel_head = None;
            }
            short.train.epochs = epochs;
            short.train.iwae_epochs = 0;
            short
        };
        let ladder = RunConfig::preset(Preset::Ladder);
        let long = RunConfig::preset(Preset::LadderLong);
        assert_eq!(short_of(&long, 50), ladder);
        assert_eq!((long.train.epochs, long.train.iwae_epochs), (110, 2));
        assert_eq!(long.train.schedule_epochs(), 108);
        // The 8-bit ladder is the ladder with the logistic likelihood and its own clip.
        let eight = RunConfig::preset(Preset::Ladder8bit);
        assert_eq!(eight.model.likelihood(), vae_model::Likelihood::logistic());
        assert!(Preset::Ladder8bit.sets_likelihood() && !Preset::Ladder.sets_likelihood());
        let mut as_ladder = eight.clone();
        as_ladder
            .model
            .set_likelihood(vae_model::Likelihood::Bernoulli);
        assert_eq!(as_ladder.model, ladder.model);
        assert_eq!(
            TrainConfig {
                epochs: 50,
                grad_clip: Some(200.0),
                ..eight.train.clone()
            },
            ladder.train
        );
        let long8 = RunConfig::preset(Preset::Ladder8bitLong);
        assert!(Preset::Ladder8bitLong.sets_likelihood() && !Preset::LadderLong.sets_likelihood());
        assert_eq!(short_of(&long8, 30), eight);
        assert_eq!((long8.train.epochs, long8.train.iwae_epochs), (67, 1));
        assert_eq!(long8.train.schedule_epochs(), 66);
        assert!("huge".parse::<Preset>().is_err());
        // A file naming two keys changes those two only.
        let text = "[model]\nlatent_dim = 8\n[train]\nepochs = 3\n";
        let merged = default.overlay_toml(text).unwrap();
        assert_eq!((merged.model.latent_dim(), merged.train.epochs), (8, 3));
        assert_eq!(conv(&merged).prior, conv(&default).prior);
        assert_eq!(merged.train.lr, default.train.lr);
        // Naming the model's own kind merges too.
        let same_kind = default
            .overlay_toml("[model]\nkind = \"conv\"\nres_blocks = 2\n")
            .unwrap();
        assert_eq!(
            (conv(&same_kind).res_blocks, conv(&same_kind).prior),
            (2, conv(&default).prior)
        );
        assert!(default.overlay_toml("[model]\nkind = \"dense\"\n").is_err());
        // The prior's kind can be switched: a table naming another kind replaces the preset's.
        let standard = default
            .overlay_toml("[model.prior]\nkind = \"standard\"\n")
            .unwrap();
        assert_eq!(conv(&standard).prior, vae_model::Prior::Standard);
        let vamp = fast
            .overlay_toml("[model.prior]\nkind = \"vamp\"\ncomponents = 7\n")
            .unwrap();
        assert_eq!(conv(&vamp).prior, vae_model::Prior::Vamp { components: 7 });
        // Unknown keys stay errors.
        let err = default
            .overlay_toml("[model]\nlatnt_dim = 3\n")
            .unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        // A run's own config.toml round-trips, and names the model's kind.
        let text = toml::to_string(&default).unwrap();
        assert!(text.contains("kind = \"conv\""), "{text}");
        assert_eq!(fast.overlay_toml(&text).unwrap(), default);
    }

    #[test]
    fn settings_parse_from_and_print_as_their_names() {
        for p in [Precision::Auto, Precision::Fp32, Precision::Bf16] {
            assert_eq!(p.to_string().parse::<Precision>().unwrap(), p);
        }
        for o in [Optimizer::Adam, Optimizer::Adamw, Optimizer::Adamax] {
            assert_eq!(o.to_string().parse::<Optimizer>().unwrap(), o);
        }
        for o in [Objective::Elbo, Objective::Iwae] {
            assert_eq!(o.to_string().parse::<Objective>().unwrap(), o);
        }
        for l in [LrSchedule::Constant, LrSchedule::Cosine] {
            assert_eq!(l.to_string().parse::<LrSchedule>().unwrap(), l);
        }
        for p in [
            Preset::Fast,
            Preset::Default,
            Preset::Best,
            Preset::Ladder,
            Preset::LadderLong,
            Preset::Ladder8bit,
            Preset::Ladder8bitLong,
            Preset::LadderGpu,
        ] {
            assert_eq!(p.to_string().parse::<Preset>().unwrap(), p);
        }
        assert_eq!(" AdamW ".parse::<Optimizer>().unwrap(), Optimizer::Adamw);
        let err = "sgd".parse::<Optimizer>().unwrap_err().to_string();
        assert!(
            err.contains("unknown optimizer \"sgd\": use adam, adamw, adamax"),
            "{err}"
        );
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
    fn the_schedule_spans_the_epochs_before_an_iwae_fine_tune() {
        let c = |epochs, iwae_epochs| TrainConfig {
            epochs,
            iwae_epochs,
            ..TrainConfig::default()
        };
        assert_eq!(c(36, 0).schedule_epochs(), 36);
        assert_eq!(c(67, 1).schedule_epochs(), 66);
        assert_eq!(
            c(3, 3).schedule_epochs(),
            3,
            "all IWAE: the schedule spans them"
        );
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
