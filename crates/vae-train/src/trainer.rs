use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use tch::{Device, Kind, Tensor, nn};
use vae_data::MnistDataset;
use vae_model::loss::{bernoulli_nll, free_bits_kl};
use vae_model::{ConvVae, ConvVaeConfig, Prior};

use crate::adam::Adam;
use crate::checkpoint::{self, Checkpoint, EpochAccum, EpochMetrics, OptimizerState, TrainState};
use crate::config::{Objective, Precision, RunConfig, TrainConfig};
use crate::device::{device_name, parse_device};
use crate::error::{Result, TrainError};
use crate::eval::{evaluate_elbo, images_tensor, prepare};

/// File names inside a run directory.
pub mod files {
    /// Latest state, with optimiser moments: what `--resume` continues from.
    pub const LAST: &str = "last.safetensors";
    /// Weights with the best validation ELBO so far.
    pub const BEST: &str = "best.safetensors";
    /// One row per epoch.
    pub const METRICS: &str = "metrics.csv";
    /// The model and training configuration, for people.
    pub const CONFIG: &str = "config.toml";
}

/// How a call to [`Trainer::run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every epoch is done.
    Completed,
    /// The interrupt flag was raised; a checkpoint of the last finished step was written.
    Interrupted,
    /// `max_steps` was reached; a checkpoint was written.
    StepLimit,
    /// The validation ELBO stopped improving for `patience` epochs.
    EarlyStopped,
}

/// Whether the best validation ELBO of `history` lies `patience` or more epochs back.
pub fn patience_exhausted(history: &[EpochMetrics], patience: usize) -> bool {
    let Some((best, _)) = history
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.val_elbo.total_cmp(&b.1.val_elbo))
    else {
        return false;
    };
    history.len() - 1 - best >= patience
}

/// Steps between reads of the loss back to the host (progress, NaN checks).
const LOG_EVERY: usize = 25;
/// Seed of the validation noise: the same every epoch, so epochs compare.
const VALIDATION_SEED: u64 = 0x5EED_0F7A_1100;
/// Seed of the per-epoch test ELBO's noise; `vae eval` and the peer use 123 too.
const TEST_SEED: u64 = 123;

/// splitmix64: decorrelates (seed, purpose, counter) into a libtorch seed.
fn mix(seed: u64, purpose: u64, counter: u64) -> i64 {
    let mut z = seed
        ^ purpose.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ counter.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 1) as i64
}

/// Trains a [`ConvVae`] on a dataset, checkpointing into a run directory.
#[derive(Debug)]
pub struct Trainer {
    run_dir: PathBuf,
    model_config: ConvVaeConfig,
    config: TrainConfig,
    device: Device,
    vs: nn::VarStore,
    model: ConvVae,
    adam: Adam,
    /// The weights' exponential moving average, in `adam.names` order, when `ema_decay` is set.
    ema: Option<Vec<Tensor>>,
    state: TrainState,
    train_x: Tensor,
    val_x: Tensor,
    test_x: Option<Tensor>,
    interrupt: Option<Arc<AtomicBool>>,
    progress: bool,
}

fn check_sizes(model_config: &ConvVaeConfig, data: &MnistDataset, what: &str) -> Result<()> {
    let (h, w) = data.image_size();
    if (h as i64, w as i64) != (model_config.input_height, model_config.input_width)
        || model_config.input_channels != 1
    {
        return Err(TrainError::InvalidConfig(format!(
            "the {what} images are {h}x{w} with 1 channel, but the model expects {}x{} with {}",
            model_config.input_height, model_config.input_width, model_config.input_channels
        )));
    }
    Ok(())
}

/// Settings that are valid alone but not together.
fn check_combination(model_config: &ConvVaeConfig, config: &TrainConfig) -> Result<()> {
    if config.free_bits > 0.0 && model_config.prior != Prior::Standard {
        return Err(TrainError::InvalidConfig(
            "free bits need the closed-form per-dimension KL of the standard normal prior; \
             they cannot be combined with the VampPrior"
                .into(),
        ));
    }
    Ok(())
}

/// The device `config` asks for, with libtorch's thread count set as it says.
fn runtime(config: &TrainConfig) -> Result<Device> {
    let device = parse_device(&config.device)?;
    if let Some(t) = config.threads {
        tch::set_num_threads(t as i32);
    }
    Ok(device)
}

impl Trainer {
    /// Starts a new run in `run_dir` (created if needed; an existing checkpoint there is an
    /// error: resume it instead, or pick another directory).
    pub fn new(
        run_dir: impl AsRef<Path>,
        model_config: ConvVaeConfig,
        config: TrainConfig,
        train: &MnistDataset,
        validation: &MnistDataset,
    ) -> Result<Self> {
        let run_dir = run_dir.as_ref().to_path_buf();
        if run_dir.join(files::LAST).exists() {
            return Err(TrainError::InvalidConfig(format!(
                "{} already holds a run: resume it, or choose another output directory",
                run_dir.display()
            )));
        }
        config.validate()?;
        model_config.validate()?;
        check_combination(&model_config, &config)?;
        let device = runtime(&config)?;
        tch::manual_seed(mix(config.seed, 1, 0));
        let vs = nn::VarStore::new(device);
        let model = ConvVae::new(&vs.root(), &model_config)?;
        let adam = Adam::new(&vs, config.lr, config.betas, config.eps)
            .with_rule(config.optimizer, config.weight_decay);
        let ema = config
            .ema_decay
            .map(|_| adam.params().iter().map(|p| p.detach().copy()).collect());
        std::fs::create_dir_all(&run_dir).map_err(|source| TrainError::Io {
            path: run_dir.clone(),
            source,
        })?;
        let trainer = Self::assemble(
            run_dir,
            model_config,
            config,
            device,
            vs,
            model,
            adam,
            ema,
            TrainState::default(),
            train,
            validation,
        )?;
        trainer.write_config()?;
        Ok(trainer)
    }

    /// Continues the run in `run_dir` from its `last.safetensors`, exactly where it stopped.
    /// `adjust` may change settings that do not alter the run's course (more `epochs`, another
    /// `device` or thread count); `|_| {}` keeps them all.
    pub fn resume(
        run_dir: impl AsRef<Path>,
        train: &MnistDataset,
        validation: &MnistDataset,
        adjust: impl FnOnce(&mut TrainConfig),
    ) -> Result<Self> {
        let run_dir = run_dir.as_ref().to_path_buf();
        let ckpt = Checkpoint::load(run_dir.join(files::LAST))?;
        let mut config = ckpt.train_config.clone();
        adjust(&mut config);
        config.validate()?;
        let device = runtime(&config)?;
        let mut vs = nn::VarStore::new(device);
        let model = ConvVae::new(&vs.root(), &ckpt.model_config)?;
        ckpt.restore_variables(&mut vs)?;
        let mut adam = Adam::new(&vs, config.lr, config.betas, config.eps)
            .with_rule(config.optimizer, config.weight_decay);
        let (m, v) = ckpt
            .moments(&adam.names, device)
            .ok_or_else(|| TrainError::Checkpoint {
                path: ckpt.path.clone(),
                reason:
                    "has no optimiser state, so it cannot be resumed (is it a best.safetensors?)"
                        .into(),
            })?;
        tch::no_grad(|| {
            for (dst, src) in adam.m.iter_mut().zip(&m).chain(adam.v.iter_mut().zip(&v)) {
                dst.copy_(src);
            }
        });
        adam.t = ckpt.state.adam_t;
        // A checkpoint from before the EMA was stored starts its average at the current weights.
        let ema = config.ema_decay.map(|_| {
            ckpt.ema(&adam.names, device)
                .unwrap_or_else(|| adam.params().iter().map(|p| p.detach().copy()).collect())
        });
        let state = ckpt.state.clone();
        let model_config = ckpt.model_config.clone();
        tracing::info!(
            step = state.step,
            epochs_done = state.history.len(),
            "resuming {}",
            run_dir.display()
        );
        Self::assemble(
            run_dir,
            model_config,
            config,
            device,
            vs,
            model,
            adam,
            ema,
            state,
            train,
            validation,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        run_dir: PathBuf,
        model_config: ConvVaeConfig,
        config: TrainConfig,
        device: Device,
        vs: nn::VarStore,
        mut model: ConvVae,
        adam: Adam,
        ema: Option<Vec<Tensor>>,
        state: TrainState,
        train: &MnistDataset,
        validation: &MnistDataset,
    ) -> Result<Self> {
        check_combination(&model_config, &config)?;
        if config.precision == Precision::Bf16 {
            model.set_compute_kind(Kind::BFloat16)?;
        }
        let stale = checkpoint::remove_stale_temporaries(&run_dir);
        if stale > 0 {
            tracing::info!(
                stale,
                "removed temporary files left by an interrupted write"
            );
        }
        check_sizes(&model_config, train, "training")?;
        check_sizes(&model_config, validation, "validation")?;
        if config.batch_size > train.len() {
            return Err(TrainError::InvalidConfig(format!(
                "batch size {} is larger than the training set ({} images)",
                config.batch_size,
                train.len()
            )));
        }
        if validation.is_empty() {
            return Err(TrainError::InvalidConfig(
                "the validation set is empty".into(),
            ));
        }
        // The whole dataset lives on the training device as u8; batches are gathered,
        // scaled and binarised there.
        let train_x = images_tensor(train, device);
        let val_x = images_tensor(validation, device);
        Ok(Self {
            run_dir,
            model_config,
            config,
            device,
            vs,
            model,
            adam,
            ema,
            state,
            train_x,
            val_x,
            test_x: None,
            interrupt: None,
            progress: false,
        })
    }

    /// Also measures the ELBO of `test` after every epoch (the `test_elbo` column of
    /// `metrics.csv`), as PyTorch's VAE example prints its test loss. It never steers training.
    pub fn set_test_set(&mut self, test: &MnistDataset) -> Result<()> {
        check_sizes(&self.model_config, test, "test")?;
        self.test_x = Some(images_tensor(test, self.device));
        Ok(())
    }

    /// A flag that, once raised (e.g. by a Ctrl-C handler), makes [`run`](Self::run) finish
    /// the current step, write a checkpoint and return [`Outcome::Interrupted`].
    pub fn set_interrupt_flag(&mut self, flag: Arc<AtomicBool>) {
        self.interrupt = Some(flag);
    }

    /// Shows a progress bar per epoch (on a terminal only).
    pub fn set_progress(&mut self, on: bool) {
        self.progress = on;
    }

    /// The model being trained.
    pub fn model(&self) -> &ConvVae {
        &self.model
    }

    /// Its variables.
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// Where training stands.
    pub fn state(&self) -> &TrainState {
        &self.state
    }

    /// The training settings in force.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Changes the step limit (in all steps, as [`TrainConfig::max_steps`]) for the next
    /// [`Trainer::run`]: a run can stop at one limit and go on in the same process to a later
    /// one, as `vae train --untimed-steps` does to leave warm-up steps out of its timing.
    pub fn set_max_steps(&mut self, max_steps: Option<u64>) {
        self.config.max_steps = max_steps;
    }

    /// The device trained on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The run directory.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    fn write_config(&self) -> Result<()> {
        let both = RunConfig {
            model: self.model_config.clone(),
            train: self.config.clone(),
        };
        let text = toml::to_string(&both).map_err(|e| TrainError::InvalidConfig(e.to_string()))?;
        checkpoint::write_atomic(&self.run_dir.join(files::CONFIG), text.as_bytes())
    }

    fn save_last(&self) -> Result<()> {
        let mut state = self.state.clone();
        state.adam_t = self.adam.t;
        checkpoint::save(
            &self.run_dir.join(files::LAST),
            &self.model_config,
            &self.config,
            &state,
            &self.vs,
            Some(OptimizerState {
                names: &self.adam.names,
                m: &self.adam.m,
                v: &self.adam.v,
                ema: self.ema.as_deref(),
            }),
        )
    }

    /// Exchanges the live weights with their moving average (a no-op without one): called in
    /// pairs around evaluation, so validation, test and `best.safetensors` use the average.
    fn swap_ema(&mut self) {
        let Some(ema) = &mut self.ema else { return };
        tch::no_grad(|| {
            for (p, e) in self.adam.params().iter().zip(ema) {
                let live = p.copy();
                p.shallow_clone().copy_(e);
                e.copy_(&live);
            }
        });
    }

    /// One EMA update after optimiser step `t` (1-based): e ← e + (1 − d)(p − e) with
    /// d = min(decay, (1 + t)/(10 + t)), so the average forgets the initial weights quickly.
    fn update_ema(&mut self) {
        let (Some(ema), Some(decay)) = (&mut self.ema, self.config.ema_decay) else {
            return;
        };
        let t = self.state.step as f64;
        let d = decay.min((1.0 + t) / (10.0 + t));
        tch::no_grad(|| {
            for (p, e) in self.adam.params().iter().zip(ema) {
                let _ = e.lerp_(p, 1.0 - d);
            }
        });
    }

    fn save_best(&self) -> Result<()> {
        let mut state = self.state.clone();
        state.adam_t = self.adam.t;
        checkpoint::save(
            &self.run_dir.join(files::BEST),
            &self.model_config,
            &self.config,
            &state,
            &self.vs,
            None,
        )
    }

    fn write_metrics(&self) -> Result<()> {
        let mut csv = String::from(
            "epoch,step,train_elbo,train_kl,train_reconstruction,val_elbo,val_kl,val_reconstruction,test_elbo,lr,images_per_s,seconds\n",
        );
        for m in &self.state.history {
            csv.push_str(&format!(
                "{},{},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{},{},{:.1},{:.2}\n",
                m.epoch,
                m.step,
                m.train_elbo,
                m.train_kl,
                m.train_reconstruction,
                m.val_elbo,
                m.val_kl,
                m.val_reconstruction,
                m.test_elbo.map_or(String::new(), |t| format!("{t:.4}")),
                m.lr,
                m.images_per_s,
                m.seconds
            ));
        }
        checkpoint::write_atomic(&self.run_dir.join(files::METRICS), csv.as_bytes())
    }

    fn steps_per_epoch(&self) -> u64 {
        (self.train_x.size()[0] as u64) / self.config.batch_size as u64
    }

    /// Trains until every epoch is done, the step limit is hit, or the interrupt flag rises.
    ///
    /// After each epoch: validation ELBO, `metrics.csv`, `last.safetensors`, and
    /// `best.safetensors` when validation improved. A non-finite loss stops with
    /// [`TrainError::NonFinite`] before anything is written, so the last checkpoint stays good.
    pub fn run(&mut self) -> Result<Outcome> {
        let spe = self.steps_per_epoch();
        let mut total = spe * self.config.epochs as u64;
        if let Some(max) = self.config.max_steps {
            total = total.min(max);
        }
        // The schedule spans all epochs, whatever `max_steps` cuts.
        let schedule_total = spe * self.config.epochs as u64;
        let batch = self.config.batch_size as i64;
        let n_train = self.train_x.size()[0];
        tracing::info!(device = %device_name(self.device), steps_per_epoch = spe, total_steps = total, "training");

        while self.state.step < total {
            let epoch = (self.state.step / spe) as usize; // 0-based
            let offset = self.state.step % spe;
            tch::manual_seed(mix(self.config.seed, 2, epoch as u64));
            let perm = Tensor::randperm(n_train, (Kind::Int64, self.device));

            let pb = if self.progress {
                ProgressBar::new(spe)
            } else {
                ProgressBar::hidden()
            };
            pb.set_style(
                ProgressStyle::with_template(
                    "epoch {prefix:>3} [{bar:30}] {pos}/{len} {msg} {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            pb.set_prefix(format!("{}/{}", epoch + 1, self.config.epochs));
            pb.set_position(offset);

            let started = Instant::now();
            let seconds_before = self.state.partial.seconds;
            let examples_before = self.state.partial.examples;
            let zero = || Tensor::zeros([], (Kind::Double, self.device));
            let (mut rec_sum, mut kl_sum) = (zero(), zero());
            let mut pending: Vec<Tensor> = Vec::with_capacity(LOG_EVERY);
            let mut steps_this_call = 0u64;
            let mut interrupted = false;

            for b in offset..spe {
                if self.state.step >= total {
                    break;
                }
                tch::manual_seed(mix(self.config.seed, 3, self.state.step));
                let idx = perm.narrow(0, b as i64 * batch, batch);
                let x = prepare(&self.train_x.index_select(0, &idx), self.config.binarize);
                let (loss, rec, kl) = self.loss(&x)?;
                self.adam
                    .set_lr(self.config.lr_at(self.state.step, schedule_total));
                self.adam.backward_step(&loss, self.config.grad_clip);
                self.state.step += 1;
                self.update_ema();
                steps_this_call += 1;
                let _ = rec_sum.g_add_(&rec.detach().sum(Kind::Double));
                let _ = kl_sum.g_add_(&kl.detach().sum(Kind::Double));
                pending.push(loss.detach());

                let end_of_epoch = b + 1 == spe || self.state.step >= total;
                if pending.len() == LOG_EVERY || end_of_epoch {
                    let losses: Vec<f32> = Vec::try_from(&Tensor::stack(&pending, 0))?;
                    if let Some(i) = losses.iter().position(|l| !l.is_finite()) {
                        pb.abandon();
                        let step = self.state.step - (losses.len() - i) as u64 + 1;
                        return Err(TrainError::NonFinite {
                            epoch: epoch + 1,
                            step,
                            value: f64::from(losses[i]),
                        });
                    }
                    let seen = (examples_before + steps_this_call * batch as u64) as f64;
                    let running = -(rec_sum.double_value(&[])
                        + kl_sum.double_value(&[])
                        + self.state.partial.reconstruction
                        + self.state.partial.kl)
                        / seen;
                    let rate =
                        (steps_this_call * batch as u64) as f64 / started.elapsed().as_secs_f64();
                    pb.set_message(format!("ELBO {running:8.2}  {rate:6.0} img/s"));
                    pending.clear();
                }
                pb.set_position(b + 1);
                if self
                    .interrupt
                    .as_ref()
                    .is_some_and(|f| f.load(Ordering::SeqCst))
                    && !end_of_epoch
                {
                    interrupted = true;
                    break;
                }
            }
            // Fold this call's sums into the epoch's.
            if !pending.is_empty() {
                let losses: Vec<f32> = Vec::try_from(&Tensor::stack(&pending, 0))?;
                if let Some(i) = losses.iter().position(|l| !l.is_finite()) {
                    let step = self.state.step - (losses.len() - i) as u64 + 1;
                    return Err(TrainError::NonFinite {
                        epoch: epoch + 1,
                        step,
                        value: f64::from(losses[i]),
                    });
                }
            }
            self.state.partial = EpochAccum {
                reconstruction: self.state.partial.reconstruction + rec_sum.double_value(&[]),
                kl: self.state.partial.kl + kl_sum.double_value(&[]),
                examples: examples_before + steps_this_call * batch as u64,
                seconds: seconds_before + started.elapsed().as_secs_f64(),
            };
            pb.finish_and_clear();

            if self.state.step.is_multiple_of(spe) && self.state.step > 0 && !interrupted {
                self.finish_epoch(epoch)?;
                if let Some(p) = self.config.patience
                    && self.state.step < total
                    && patience_exhausted(&self.state.history, p)
                {
                    tracing::info!(
                        patience = p,
                        "validation ELBO stopped improving: stopping early"
                    );
                    return Ok(Outcome::EarlyStopped);
                }
                if self
                    .interrupt
                    .as_ref()
                    .is_some_and(|f| f.load(Ordering::SeqCst))
                    && self.state.step < total
                {
                    return Ok(Outcome::Interrupted);
                }
            } else {
                self.save_last()?;
                return Ok(if interrupted {
                    Outcome::Interrupted
                } else {
                    Outcome::StepLimit
                });
            }
        }
        Ok(Outcome::Completed)
    }

    /// The loss to minimise for a batch, and the per-example reconstruction and KL terms to
    /// report.
    fn loss(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        match self.config.objective {
            Objective::Elbo => {
                let out = self.model.forward(x)?;
                let rec = bernoulli_nll(&out.logits, x);
                let kl = self.model.kl(&out);
                let kl_term = if self.config.free_bits > 0.0 {
                    free_bits_kl(&out.mu, &out.logvar, self.config.free_bits)
                } else {
                    kl.mean(Kind::Float)
                };
                let w = self.config.kl_weight(self.state.step);
                Ok((rec.mean(Kind::Float) + kl_term * w, rec, kl))
            }
            Objective::Iwae => {
                let t = self.model.iwae_terms(x, self.config.iw_k)?;
                Ok((-t.bound.mean(Kind::Float), t.reconstruction, t.kl))
            }
        }
    }

    fn finish_epoch(&mut self, epoch: usize) -> Result<()> {
        // With an EMA, the average is what gets evaluated and saved as best.
        self.swap_ema();
        let evaluated = self.evaluate();
        let (val, test_elbo) = match evaluated {
            Ok(v) => v,
            Err(e) => {
                self.swap_ema();
                return Err(e);
            }
        };
        let p = std::mem::take(&mut self.state.partial);
        let n = p.examples.max(1) as f64;
        let metrics = EpochMetrics {
            epoch: epoch + 1,
            step: self.state.step,
            train_elbo: -(p.reconstruction + p.kl) / n,
            train_kl: p.kl / n,
            train_reconstruction: p.reconstruction / n,
            val_elbo: val.elbo,
            val_kl: val.kl,
            val_reconstruction: val.reconstruction,
            test_elbo,
            lr: self.adam.lr(),
            images_per_s: p.examples as f64 / p.seconds.max(1e-9),
            seconds: p.seconds,
        };
        if !val.elbo.is_finite() {
            self.swap_ema();
            return Err(TrainError::NonFinite {
                epoch: epoch + 1,
                step: self.state.step,
                value: val.elbo,
            });
        }
        tracing::info!(
            epoch = metrics.epoch,
            train_elbo = format!("{:.2}", metrics.train_elbo),
            val_elbo = format!("{:.2}", metrics.val_elbo),
            images_per_s = format!("{:.0}", metrics.images_per_s),
            "epoch done"
        );
        let improved = self.state.best_val_elbo.is_none_or(|b| val.elbo > b);
        if improved {
            self.state.best_val_elbo = Some(val.elbo);
        }
        self.state.history.push(metrics);
        let saved = if improved { self.save_best() } else { Ok(()) };
        self.swap_ema();
        saved?;
        self.write_metrics()?;
        self.save_last()
    }

    /// Validation ELBO and, with a test set, test ELBO of the current weights.
    fn evaluate(&self) -> Result<(crate::eval::ElboSummary, Option<f64>)> {
        let val = evaluate_elbo(
            &self.model,
            &self.val_x,
            self.config.binarize,
            VALIDATION_SEED,
        )?;
        let test_elbo = match &self.test_x {
            Some(x) => Some(evaluate_elbo(&self.model, x, self.config.binarize, TEST_SEED)?.elbo),
            None => None,
        };
        Ok((val, test_elbo))
    }
}
