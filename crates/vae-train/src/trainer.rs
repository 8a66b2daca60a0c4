use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tch::{Device, Kind, Tensor, nn};
use vae_data::ImageDataset;
use vae_model::{ModelConfig, Vae};

use crate::adam::Adam;
use crate::checkpoint::{self, Checkpoint, EpochAccum, EpochMetrics, OptimizerState, TrainState};
use crate::config::{Objective, Precision, RunConfig, TrainConfig};
use crate::device::device_name;
use crate::dist::ProcessGroup;
use crate::error::{Result, TrainError};
use crate::eval::{elbo_sums, images_tensor, mix, prepare, summarize_elbo};
use crate::lock::RunLock;
use crate::observe::{MetricsCsv, Observer, StepProgress};
use crate::precision::PrecisionChoice;

/// File names inside a run directory.
pub mod files {
    /// Latest state, with optimiser moments: what `--resume` continues from.
    pub const LAST: &str = "last.safetensors";
    /// Weights with the best validation ELBO so far (the best validation IWAE bound among
    /// an IWAE fine-tune's epochs).
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
fn patience_exhausted(history: &[EpochMetrics], patience: usize) -> bool {
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

/// Trains a [`Vae`] on a dataset, checkpointing into a run directory: the library's run.
///
/// [`Trainer::start`] begins one from a data set and a [`RunConfig`] (the validation split,
/// the image shape from the data, the device); [`Trainer::resume`] continues one exactly;
/// [`Trainer::run`] trains. Progress goes to [`Observer`]s; the trainer prints nothing.
pub struct Trainer {
    run_dir: PathBuf,
    model_config: ModelConfig,
    config: TrainConfig,
    device: Device,
    vs: nn::VarStore,
    model: Box<dyn Vae>,
    adam: Adam,
    /// The weights' exponential moving average, in `adam.names()` order, when `ema_decay` is set.
    ema: Option<Vec<Tensor>>,
    state: TrainState,
    train_x: Tensor,
    val_x: Tensor,
    test_x: Option<Tensor>,
    interrupt: Option<Arc<AtomicBool>>,
    observers: Vec<Box<dyn Observer>>,
    /// The processes training this model together, when there are several.
    group: Option<ProcessGroup>,
    /// This process's hold on the run directory (rank 0's alone), released when the trainer
    /// is dropped.
    _lock: Option<RunLock>,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("run_dir", &self.run_dir)
            .field("model_config", &self.model_config)
            .field("config", &self.config)
            .field("device", &self.device)
            .field("state", &self.state)
            .field("observers", &self.observers.len())
            .field("world", &self.world())
            .finish_non_exhaustive()
    }
}

/// The (C, H, W) of a data set's images.
fn shape_of(data: &ImageDataset) -> [i64; 3] {
    let (h, w) = data.image_size();
    [data.channels() as i64, h as i64, w as i64]
}

fn check_sizes(model_config: &ModelConfig, data: &ImageDataset, what: &str) -> Result<()> {
    let [c, h, w] = shape_of(data);
    let [mc, mh, mw] = model_config.image_shape();
    if [c, h, w] != [mc, mh, mw] {
        return Err(TrainError::InvalidConfig(format!(
            "the {what} images are {h}x{w} with {c} channel(s), but the model expects {mh}x{mw} with {mc}"
        )));
    }
    Ok(())
}

/// The device `config` asks for (a process group's own, when there is one: each rank's GPU),
/// with libtorch's thread count set as it says.
fn runtime(config: &TrainConfig, group: Option<&ProcessGroup>) -> Result<Device> {
    let device = match group {
        Some(g) => g.device(),
        None => config.device.resolve()?,
    };
    if let Some(t) = config.threads {
        tch::set_num_threads(t as i32);
    }
    Ok(device)
}

/// A freshly initialised model (from the run's seed), its optimiser and moving average.
#[allow(clippy::type_complexity)]
/// A model with its variables and optimiser state: what a trainer trains.
struct Parts {
    vs: nn::VarStore,
    model: Box<dyn Vae>,
    adam: Adam,
    ema: Option<Vec<Tensor>>,
}

fn fresh_model(model_config: &ModelConfig, config: &TrainConfig, device: Device) -> Result<Parts> {
    tch::manual_seed(mix(config.seed, 1, 0));
    let vs = nn::VarStore::new(device);
    let model = model_config.build(&vs.root())?;
    let adam = Adam::new(&vs, config.lr, config.betas, config.eps)
        .with_rule(config.optimizer, config.weight_decay);
    let ema = config
        .ema_decay
        .map(|_| adam.params().iter().map(|p| p.detach().copy()).collect());
    Ok(Parts {
        vs,
        model,
        adam,
        ema,
    })
}

/// What rank 0 tells the other ranks before training: the run as it stands (fresh or resumed)
/// and what its data and settings hash to.
#[derive(serde::Serialize, serde::Deserialize)]
struct RunMessage {
    model: ModelConfig,
    train: TrainConfig,
    state: TrainState,
    data: u64,
    /// The hash of the settings rank 0 was started with (before resolution), for a fresh run.
    started_with: Option<u64>,
}

/// A fingerprint of a data set's images and shape: ranks must train on the same data.
fn data_fingerprint(data: &ImageDataset) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    shape_of(data).hash(&mut h);
    data.len().hash(&mut h);
    if let Some(bytes) = data.images().as_slice() {
        bytes.hash(&mut h);
    }
    h.finish()
}

/// A hash of a run configuration as given (its TOML text).
fn config_fingerprint(run: &RunConfig) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    toml::to_string(run).unwrap_or_default().hash(&mut h);
    h.finish()
}

/// Refuses settings that data-parallel training cannot split exactly.
fn check_parallel(config: &TrainConfig, world: usize) -> Result<()> {
    if world <= 1 {
        return Ok(());
    }
    if !config.batch_size.is_multiple_of(world) {
        return Err(TrainError::InvalidConfig(format!(
            "the batch size {} does not divide among {world} processes: choose a batch size (--batch-size) that is a multiple of {world}; it stays the global batch",
            config.batch_size
        )));
    }
    if config.objective == Objective::Iwae || config.iwae_epochs > 0 {
        return Err(TrainError::InvalidConfig(format!(
            "the iwae objective (--objective iwae, or an IWAE fine-tune) trains on one process only (its samples are drawn inside the model, so {world} processes would not draw one stream): train it without --nproc or torchrun"
        )));
    }
    Ok(())
}

/// `data` split into training and validation sets as `config` says (the last images held out).
fn split(data: &ImageDataset, config: &TrainConfig) -> Result<(ImageDataset, ImageDataset)> {
    let n = data.len();
    let v = config.validation_images(n);
    if v == 0 || v >= n {
        return Err(TrainError::InvalidConfig(format!(
            "cannot hold out {v} validation images from a training set of {n}: set validation_size (--validation-size) between 1 and {}",
            n.saturating_sub(1)
        )));
    }
    Ok(data.split_validation(v)?)
}

impl Trainer {
    /// Starts a new run in `run_dir` (created if needed; an existing checkpoint there is an
    /// error: resume it instead, or pick another directory) on `data`, a whole training split:
    /// its last `run.train.validation_size` images are held out for validation, and the
    /// model takes the data's image shape. Writes `config.toml`; attaches [`MetricsCsv`].
    pub fn start(run_dir: impl AsRef<Path>, data: &ImageDataset, run: RunConfig) -> Result<Self> {
        Self::start_in(run_dir.as_ref(), data, run, None)
    }

    /// [`Trainer::start`] as one rank of `group`: data-parallel training of one model.
    ///
    /// Every rank calls it with the same data and settings (checked: a rank whose differ
    /// stops with an error naming it). Rank 0 does what [`Trainer::start`] does — the run
    /// directory, its lock, `config.toml`, and later every checkpoint, `metrics.csv` and
    /// observer — and sends its weights to the others; the other ranks write nothing.
    /// `batch_size` stays the global batch: each rank computes `batch_size / world` of its
    /// images, and gradients are averaged over the ranks before clipping and Adam.
    pub fn start_parallel(
        run_dir: impl AsRef<Path>,
        data: &ImageDataset,
        run: RunConfig,
        group: ProcessGroup,
    ) -> Result<Self> {
        if group.rank() == 0 {
            Self::start_in(run_dir.as_ref(), data, run, Some(group))
        } else {
            Self::follow(run_dir.as_ref(), data, Some(run), group)
        }
    }

    /// [`Trainer::resume`] as one rank of `group` (see [`Trainer::start_parallel`]): rank 0
    /// reads the checkpoint and sends the run to the others, which need no copy of it. The
    /// state is global, so a run resumes at any world size that divides its batch.
    pub fn resume_parallel(
        run_dir: impl AsRef<Path>,
        data: &ImageDataset,
        adjust: impl FnOnce(&mut TrainConfig),
        group: ProcessGroup,
    ) -> Result<Self> {
        if group.rank() == 0 {
            Self::resume_in(run_dir.as_ref(), data, adjust, Some(group))
        } else {
            Self::follow(run_dir.as_ref(), data, None, group)
        }
    }

    fn start_in(
        run_dir: &Path,
        data: &ImageDataset,
        run: RunConfig,
        group: Option<ProcessGroup>,
    ) -> Result<Self> {
        let mut run = run;
        let started_with = config_fingerprint(&run);
        run.model.set_image_shape(shape_of(data));
        run.validate()?;
        check_parallel(&run.train, group.as_ref().map_or(1, ProcessGroup::world))?;
        let RunConfig {
            model: model_config,
            train: config,
        } = run;
        let device = runtime(&config, group.as_ref())?;
        let (train, validation) = split(data, &config)?;
        let run_dir = run_dir.to_path_buf();
        std::fs::create_dir_all(&run_dir).map_err(|cause| TrainError::Io {
            action: "create the run directory",
            path: run_dir.clone(),
            cause,
        })?;
        // Held before anything in the directory is read or written: of two processes starting
        // on one directory, the second stops here.
        let lock = RunLock::acquire(&run_dir)?;
        if run_dir.join(files::LAST).exists() {
            return Err(TrainError::RunDirectory(format!(
                "{} already holds a run: resume it with --resume, or choose another output directory",
                run_dir.display()
            )));
        }
        let parts = fresh_model(&model_config, &config, device)?;
        let run = RunConfig {
            model: model_config,
            train: config,
        };
        let mut trainer = Self::assemble(
            (run_dir, Some(lock)),
            run,
            (device, parts),
            TrainState::default(),
            (&train, &validation),
            group,
        )?;
        trainer.write_config()?;
        trainer.lead(data, Some(started_with))?;
        Ok(trainer)
    }

    /// Continues the run in `run_dir` from its `last.safetensors`, exactly where it stopped,
    /// on the same `data` it started on (split as it was). `adjust` may change settings that
    /// do not alter the run's course (more `epochs`, another `device` or thread count);
    /// `|_| {}` keeps them all.
    pub fn resume(
        run_dir: impl AsRef<Path>,
        data: &ImageDataset,
        adjust: impl FnOnce(&mut TrainConfig),
    ) -> Result<Self> {
        Self::resume_in(run_dir.as_ref(), data, adjust, None)
    }

    fn resume_in(
        run_dir: &Path,
        data: &ImageDataset,
        adjust: impl FnOnce(&mut TrainConfig),
        group: Option<ProcessGroup>,
    ) -> Result<Self> {
        let run_dir = run_dir.to_path_buf();
        let last = run_dir.join(files::LAST);
        if !last.is_file() {
            return Err(TrainError::RunDirectory(format!(
                "cannot resume {}: it holds no {} (name a run directory that vae train wrote, or start a new run with --out)",
                run_dir.display(),
                files::LAST
            )));
        }
        // Held before the checkpoint is read: a trainer still writing it stops us here.
        let lock = RunLock::acquire(&run_dir)?;
        let ckpt = Checkpoint::load(&last)?;
        let mut config = ckpt.train_config.clone();
        adjust(&mut config);
        RunConfig {
            model: ckpt.model_config.clone(),
            train: config.clone(),
        }
        .validate()?;
        check_parallel(&config, group.as_ref().map_or(1, ProcessGroup::world))?;
        let device = runtime(&config, group.as_ref())?;
        let (train, validation) = split(data, &config)?;
        let mut vs = nn::VarStore::new(device);
        let model = ckpt.model_config.build(&vs.root())?;
        ckpt.restore_variables(&mut vs)?;
        let mut adam = Adam::new(&vs, config.lr, config.betas, config.eps)
            .with_rule(config.optimizer, config.weight_decay);
        let (m, v) = ckpt
            .moments(adam.names(), device)
            .ok_or_else(|| TrainError::Checkpoint {
                path: ckpt.path.clone(),
                reason:
                    "has no optimiser state, so it cannot be resumed (is it a best.safetensors?)"
                        .into(),
            })?;
        adam.restore(&m, &v, ckpt.state.adam_t)
            .map_err(|reason| TrainError::Checkpoint {
                path: ckpt.path.clone(),
                reason,
            })?;
        // A checkpoint without a stored average starts it at the current weights.
        let ema = config.ema_decay.map(|_| {
            ckpt.ema(adam.names(), device)
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
        let run = RunConfig {
            model: model_config,
            train: config,
        };
        let parts = Parts {
            vs,
            model,
            adam,
            ema,
        };
        let mut trainer = Self::assemble(
            (run_dir, Some(lock)),
            run,
            (device, parts),
            state,
            (&train, &validation),
            group,
        )?;
        trainer.lead(data, None)?;
        Ok(trainer)
    }

    /// Rank 0's side of the start: the run to the store, then its weights, moments and moving
    /// average to every rank. Nothing without a group.
    fn lead(&mut self, data: &ImageDataset, started_with: Option<u64>) -> Result<()> {
        let Some(group) = &self.group else {
            return Ok(());
        };
        let message = RunMessage {
            model: self.model_config.clone(),
            train: self.config.clone(),
            state: self.state.clone(),
            data: data_fingerprint(data),
            started_with,
        };
        let bytes = serde_json::to_vec(&message)
            .map_err(|e| TrainError::Distributed(format!("cannot encode the run: {e}")))?;
        group.set("run", &bytes)?;
        self.broadcast_state()
    }

    /// A rank other than 0: builds the model rank 0 describes, checks that this rank's data
    /// (and, for a fresh run, its settings) are rank 0's, and takes rank 0's weights.
    fn follow(
        run_dir: &Path,
        data: &ImageDataset,
        own: Option<RunConfig>,
        group: ProcessGroup,
    ) -> Result<Self> {
        let rank = group.rank();
        let message: RunMessage = serde_json::from_slice(&group.get("run")?).map_err(|e| {
            TrainError::Distributed(format!("rank {rank}: rank 0's run cannot be read: {e}"))
        })?;
        let differs = |what: &str| {
            TrainError::Distributed(format!(
                "rank {rank}'s {what} differ from rank 0's: start every rank with the same command, settings and data"
            ))
        };
        if message.data != data_fingerprint(data) {
            return Err(differs("training images"));
        }
        if let Some(own) = &own
            && message.started_with != Some(config_fingerprint(own))
        {
            return Err(differs("settings"));
        }
        let (model_config, config) = (message.model, message.train);
        check_parallel(&config, group.world())?;
        let device = runtime(&config, Some(&group))?;
        let (train, validation) = split(data, &config)?;
        let parts = fresh_model(&model_config, &config, device)?;
        let run = RunConfig {
            model: model_config,
            train: config,
        };
        let mut trainer = Self::assemble(
            (run_dir.to_path_buf(), None),
            run,
            (device, parts),
            message.state,
            (&train, &validation),
            Some(group),
        )?;
        trainer.broadcast_state()?;
        Ok(trainer)
    }

    /// Every rank takes rank 0's variables, optimiser moments and moving average (one broadcast
    /// per tensor, in name order) and step counter.
    fn broadcast_state(&mut self) -> Result<()> {
        let Some(group) = &self.group else {
            return Ok(());
        };
        let mut tensors: Vec<Tensor> = Vec::new();
        let mut variables: Vec<_> = self.vs.variables().into_iter().collect();
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        tensors.extend(variables.into_iter().map(|(_, t)| t));
        let (m, v) = self.adam.moments();
        tensors.extend(m.iter().chain(v).map(Tensor::shallow_clone));
        if let Some(ema) = &self.ema {
            tensors.extend(ema.iter().map(Tensor::shallow_clone));
        }
        tch::no_grad(|| -> Result<()> {
            for x in &tensors {
                if x.is_contiguous() {
                    group.broadcast(x, 0)?;
                } else {
                    let c = x.contiguous();
                    group.broadcast(&c, 0)?;
                    x.shallow_clone().copy_(&c);
                }
            }
            Ok(())
        })?;
        // Rank 0's step counter came with its state.
        self.adam.set_steps(self.state.adam_t);
        Ok(())
    }

    /// The trainer of `run` in `run_dir` (holding `lock` where it writes), from its model
    /// `parts` on `device`, at `state`, on its split `data`.
    fn assemble(
        (run_dir, lock): (PathBuf, Option<RunLock>),
        run: RunConfig,
        (device, parts): (Device, Parts),
        state: TrainState,
        (train, validation): (&ImageDataset, &ImageDataset),
        group: Option<ProcessGroup>,
    ) -> Result<Self> {
        let RunConfig {
            model: model_config,
            train: mut config,
        } = run;
        let Parts {
            vs,
            mut model,
            adam,
            ema,
        } = parts;
        let mut choice = config.precision.resolve(device);
        // A model kind may compute in f32 only; `auto` then keeps to it.
        if config.precision == Precision::Auto
            && choice.precision == Precision::Bf16
            && model.set_compute_kind(Kind::BFloat16).is_err()
        {
            choice = PrecisionChoice {
                precision: Precision::Fp32,
                reason: format!("the {} model computes in f32 only", model_config.kind()),
            };
        }
        model.set_compute_kind(Kind::Float)?;
        tracing::info!("training in {} because {}", choice.precision, choice.reason);
        config.precision = choice.precision;
        let stale = if lock.is_some() {
            vae_data::remove_stale_temporaries(&run_dir)
        } else {
            0
        };
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
                "batch size {} is larger than the training set ({} images): lower batch_size (--batch-size)",
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
        let leader = group.as_ref().is_none_or(|g| g.rank() == 0);
        let observers: Vec<Box<dyn Observer>> = if leader {
            vec![Box::new(MetricsCsv::new(run_dir.join(files::METRICS)))]
        } else {
            Vec::new()
        };
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
            observers,
            group,
            _lock: lock,
        })
    }

    /// Also measures the ELBO of `test` after every epoch (the `test_elbo` column of
    /// `metrics.csv`), as PyTorch's VAE example prints its test loss. It never steers training.
    pub fn set_test_set(&mut self, test: &ImageDataset) -> Result<()> {
        check_sizes(&self.model_config, test, "test")?;
        self.test_x = Some(images_tensor(test, self.device));
        Ok(())
    }

    /// A flag that, once raised (e.g. by a Ctrl-C handler), makes [`run`](Self::run) finish
    /// the current step, write a checkpoint and return [`Outcome::Interrupted`].
    pub fn set_interrupt_flag(&mut self, flag: Arc<AtomicBool>) {
        self.interrupt = Some(flag);
    }

    /// Sends the run's progress and results to `observer` too (after those attached before).
    pub fn observe(&mut self, observer: impl Observer + 'static) {
        self.observers.push(Box::new(observer));
    }

    /// The model being trained.
    pub fn model(&self) -> &dyn Vae {
        self.model.as_ref()
    }

    /// Its configuration.
    pub fn model_config(&self) -> &ModelConfig {
        &self.model_config
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

    /// This process's rank among those training the model (0 when it trains alone).
    pub fn rank(&self) -> usize {
        self.group.as_ref().map_or(0, ProcessGroup::rank)
    }

    /// The number of processes training the model (1 when it trains alone).
    pub fn world(&self) -> usize {
        self.group.as_ref().map_or(1, ProcessGroup::world)
    }

    /// Whether this process writes the run: rank 0, or the only process.
    pub fn is_leader(&self) -> bool {
        self.rank() == 0
    }

    /// Images each process computes per step: the batch size over the world size.
    pub fn batch_per_process(&self) -> usize {
        self.config.batch_size / self.world()
    }

    /// The device trained on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The run directory.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The settings as checkpoints and `config.toml` store them: without the step limit,
    /// which belongs to one invocation, so a resumed run goes on to its epochs.
    fn stored_config(&self) -> TrainConfig {
        TrainConfig {
            max_steps: None,
            ..self.config.clone()
        }
    }

    fn write_config(&self) -> Result<()> {
        let both = RunConfig {
            model: self.model_config.clone(),
            train: self.stored_config(),
        };
        let mut text =
            toml::to_string(&both).map_err(|e| TrainError::InvalidConfig(e.to_string()))?;
        if self.world() > 1 {
            text = format!(
                "# trained on {} processes, {} images each per step (batch_size is the global batch)\n{text}",
                self.world(),
                self.batch_per_process()
            );
        }
        Ok(vae_data::write_atomic(
            self.run_dir.join(files::CONFIG),
            text.as_bytes(),
        )?)
    }

    fn save_last(&self) -> Result<()> {
        if !self.is_leader() {
            return Ok(());
        }
        let mut state = self.state.clone();
        state.adam_t = self.adam.steps();
        let (m, v) = self.adam.moments();
        checkpoint::save(
            &self.run_dir.join(files::LAST),
            &self.model_config,
            &self.stored_config(),
            &state,
            &self.vs,
            Some(OptimizerState {
                names: self.adam.names(),
                m,
                v,
                ema: self.ema.as_deref(),
            }),
        )
    }

    /// Enters (`true`) or leaves evaluation: validation, test, the observers' pictures and
    /// `best.safetensors` see the moving average of the weights (when there is one), computed
    /// in f32 whatever the training precision.
    fn evaluation_mode(&mut self, on: bool) -> Result<()> {
        self.swap_ema();
        let kind = if on {
            Kind::Float
        } else {
            compute_kind(self.config.precision)
        };
        Ok(self.model.set_compute_kind(kind)?)
    }

    /// Exchanges the live weights with their moving average (a no-op without one): called in
    /// pairs around evaluation.
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
        if !self.is_leader() {
            return Ok(());
        }
        let mut state = self.state.clone();
        state.adam_t = self.adam.steps();
        checkpoint::save(
            &self.run_dir.join(files::BEST),
            &self.model_config,
            &self.stored_config(),
            &state,
            &self.vs,
            None,
        )
    }

    fn steps_per_epoch(&self) -> u64 {
        (self.train_x.size()[0] as u64) / self.config.batch_size as u64
    }

    /// Trains until every epoch is done, the step limit is hit, or the interrupt flag rises.
    ///
    /// After each epoch: validation ELBO, `metrics.csv`, `last.safetensors`, and
    /// `best.safetensors` when validation improved. A non-finite loss stops with
    /// [`TrainError::NonFinite`] before anything is written, so the last checkpoint stays good.
    ///
    /// The steps compute in the run's precision; outside `run` (and in every evaluation) the
    /// model computes in f32.
    pub fn run(&mut self) -> Result<Outcome> {
        self.model
            .set_compute_kind(compute_kind(self.config.precision))?;
        let outcome = self.train();
        self.model.set_compute_kind(Kind::Float)?;
        outcome
    }

    fn train(&mut self) -> Result<Outcome> {
        let spe = self.steps_per_epoch();
        // The schedule spans the epochs before any IWAE fine-tune, whatever `max_steps` cuts.
        let schedule = spe * self.config.schedule_epochs() as u64;
        let all_steps = spe * self.config.epochs as u64;
        let total = self
            .config
            .max_steps
            .map_or(all_steps, |max| all_steps.min(max));
        tracing::info!(device = %device_name(self.device), steps_per_epoch = spe, total_steps = total, "training");
        while self.state.step < total {
            let epoch = (self.state.step / spe) as usize; // 0-based
            let interrupted = self.train_epoch(epoch, spe, total, schedule)?;
            if !self.state.step.is_multiple_of(spe) || interrupted {
                self.save_last()?;
                return Ok(if interrupted {
                    Outcome::Interrupted
                } else {
                    Outcome::StepLimit
                });
            }
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
            if self.interrupt_agreed()? && self.state.step < total {
                return Ok(Outcome::Interrupted);
            }
        }
        Ok(Outcome::Completed)
    }

    /// The steps of epoch `epoch` (0-based) from where the run stands, up to step `total` of a
    /// learning-rate schedule of `schedule` steps; whether an interrupt stopped it early. The
    /// epoch's sums go into `state.partial`.
    fn train_epoch(&mut self, epoch: usize, spe: u64, total: u64, schedule: u64) -> Result<bool> {
        let offset = self.state.step % spe;
        tch::manual_seed(mix(self.config.seed, 2, epoch as u64));
        let perm = Tensor::randperm(self.train_x.size()[0], (Kind::Int64, self.device));
        let epochs = self.config.epochs;
        for o in &mut self.observers {
            o.epoch_started(epoch + 1, epochs, spe, offset);
        }
        let mut sums = StepSums::new(self.device, self.config.batch_size as u64);
        let mut interrupted = false;
        for b in offset..spe {
            if self.state.step >= total {
                break;
            }
            tch::manual_seed(mix(self.config.seed, 3, self.state.step));
            let (x, eps) = self.batch(&perm, b as i64)?;
            let (loss, rec, kl) = self.loss(&x, eps.as_ref())?;
            let lr = self.config.lr_at(self.state.step, schedule);
            self.adam.set_lr(lr);
            let (rec_step, kl_step, stops) = self.optimizer_step(&loss, &rec, &kl)?;
            self.state.step += 1;
            self.update_ema();
            // Under a group, the global batch's loss: every rank sees the same values.
            let logged = if self.group.is_some() {
                (&rec_step + &kl_step).to_kind(Kind::Float) / self.config.batch_size as f64
            } else {
                loss.detach()
            };
            sums.add(&rec_step, &kl_step, logged);
            let end_of_epoch = b + 1 == spe || self.state.step >= total;
            let mut progress = StepProgress {
                epoch: epoch + 1,
                epochs,
                step_in_epoch: b + 1,
                steps_per_epoch: spe,
                step: self.state.step,
                elbo: None,
                images_per_s: None,
                interval_elbo: None,
                interval_kl: None,
                interval_reconstruction: None,
                lr,
            };
            let read_back = sums.pending.len() == LOG_EVERY || end_of_epoch;
            if read_back {
                if let Err(e) = sums.check_finite(epoch, self.state.step) {
                    self.notify_steps_ended();
                    return Err(e);
                }
                sums.report(&self.state.partial, &mut progress);
            }
            for o in &mut self.observers {
                o.step(&progress);
            }
            // A raised flag stays raised, so under a group the reduced flags are read only
            // with the losses (no host read per step): every rank reads the same step's.
            let stop = match &stops {
                None => self.interrupted_here(),
                Some(stops) => read_back && stops.double_value(&[]) > 0.0,
            };
            if stop && !end_of_epoch {
                interrupted = true;
                break;
            }
        }
        self.notify_steps_ended();
        sums.check_finite(epoch, self.state.step)?;
        self.state.partial = sums.fold_into(&self.state.partial);
        Ok(interrupted)
    }

    /// Whether this process was asked to stop.
    fn interrupted_here(&self) -> bool {
        self.interrupt
            .as_ref()
            .is_some_and(|f| f.load(Ordering::SeqCst))
    }

    /// Backpropagates `loss` and steps the optimiser: alone, or under a group with the
    /// gradients summed over the ranks. Gives the step's reconstruction and KL sums (the
    /// global batch's, under a group) and, under a group, the ranks' interrupt flags summed,
    /// all still on the device.
    fn optimizer_step(
        &mut self,
        loss: &Tensor,
        rec: &Tensor,
        kl: &Tensor,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let Some(group) = &self.group else {
            self.adam.backward_step(loss, self.config.grad_clip);
            return Ok((
                rec.detach().sum(Kind::Double),
                kl.detach().sum(Kind::Double),
                None,
            ));
        };
        // The step's sums and this rank's interrupt ride with the gradients: every rank
        // learns the global batch's terms, and all stop together.
        let flag = f32::from(u8::from(self.interrupted_here()));
        let tail = Tensor::stack(
            &[
                rec.detach().sum(Kind::Float),
                kl.detach().sum(Kind::Float),
                Tensor::from(flag).to_device(self.device),
            ],
            0,
        );
        let world = group.world() as f64;
        let reduced = self.adam.backward_step_reduced(
            loss,
            self.config.grad_clip,
            &tail,
            1.0 / world,
            |all| group.all_reduce_sum(all),
        )?;
        let reduced = reduced.to_kind(Kind::Double);
        Ok((reduced.get(0), reduced.get(1), Some(reduced.get(2))))
    }

    /// Whether batches are binarised: the setting, for a likelihood of binary data.
    fn binarize(&self) -> bool {
        self.config.binarizes(self.model_config.likelihood())
    }

    fn notify_steps_ended(&mut self) {
        for o in &mut self.observers {
            o.steps_ended();
        }
    }

    /// Whether the interrupt flag is raised on any rank (a collective under a group).
    fn interrupt_agreed(&self) -> Result<bool> {
        let here = self
            .interrupt
            .as_ref()
            .is_some_and(|f| f.load(Ordering::SeqCst));
        let Some(group) = &self.group else {
            return Ok(here);
        };
        let t = Tensor::from_slice(&[f32::from(u8::from(here))]).to_device(self.device);
        group.all_reduce_sum(&t)?;
        Ok(t.double_value(&[0]) > 0.0)
    }

    /// This process's images of the batch at position `b` of the epoch's permutation, and
    /// the noise of its posterior samples (for the ELBO objective).
    ///
    /// One random stream serves any world size: every process draws the whole global batch's
    /// binarisation uniforms, then its noise `[batch, Vae::noise_dim]`, and takes its own
    /// rows of both.
    fn batch(&self, perm: &Tensor, b: i64) -> Result<(Tensor, Option<Tensor>)> {
        let batch = self.config.batch_size as i64;
        let idx = perm.narrow(0, b * batch, batch);
        let x = prepare(&self.train_x.index_select(0, &idx), self.binarize());
        let eps = (self.objective() == Objective::Elbo)
            .then(|| Tensor::randn([batch, self.model.noise_dim()], (Kind::Float, self.device)));
        let world = self.world() as i64;
        if world == 1 {
            return Ok((x, eps));
        }
        let (per, start) = (batch / world, self.rank() as i64 * (batch / world));
        Ok((
            x.narrow(0, start, per),
            eps.map(|e| e.narrow(0, start, per)),
        ))
    }

    /// The free-bits KL term Σ_j max(λ, E_batch[KL_j]) (Kingma et al. 2016) over the global
    /// batch: under a group the per-unit batch means are averaged over the ranks before the
    /// clamp, and each rank's term carries the gradient of its own share.
    fn free_bits_term(&self, dims: &Tensor, lambda: f64) -> Result<Tensor> {
        let Some(group) = &self.group else {
            return Ok(vae_model::loss::free_bits(dims, lambda));
        };
        let local = dims.mean_dim(0, false, Kind::Float);
        let global = local.detach().contiguous().copy();
        group.all_reduce_sum(&global)?;
        let global = global / group.world() as f64;
        let active = global.gt(lambda).to_kind(Kind::Float);
        // Where the global mean is above λ the term is the mean (its gradient flows through
        // this rank's share); elsewhere it is the constant λ.
        let floor = (active.sum(Kind::Float) * -1.0 + active.numel() as f64) * lambda;
        Ok((local * &active).sum(Kind::Float) + floor)
    }

    /// NVAE's balanced KL term Σ_l γ_l·E_batch[KL_l] (see
    /// [`vae_model::loss::kl_balance_coefficients`]), the coefficients from the global batch:
    /// under a group the per-group batch means are averaged over the ranks.
    fn balanced_kl_term(&self, groups: &[Tensor]) -> Result<Tensor> {
        let all = Tensor::stack(groups, 1);
        let means = all.detach().abs().mean_dim(0, false, Kind::Float);
        let means = match &self.group {
            None => means,
            Some(group) => {
                let global = means.contiguous().copy();
                group.all_reduce_sum(&global)?;
                global / group.world() as f64
            }
        };
        let gamma = vae_model::loss::kl_balance_coefficients(
            &means,
            &self.model_config.latent_group_sizes(),
        );
        Ok((all * gamma.unsqueeze(0))
            .sum_dim_intlist(1, false, Kind::Float)
            .mean(Kind::Float))
    }

    /// The objective of the current step's epoch ([`TrainConfig::objective_at`]).
    fn objective(&self) -> Objective {
        self.config
            .objective_at((self.state.step / self.steps_per_epoch()) as usize)
    }

    /// The loss to minimise for a batch, and the per-example reconstruction and KL terms to
    /// report; `eps` is the posterior noise for the ELBO objective.
    fn loss(&self, x: &Tensor, eps: Option<&Tensor>) -> Result<(Tensor, Tensor, Tensor)> {
        match self.objective() {
            Objective::Elbo => {
                let terms = match eps {
                    Some(eps) => self.model.elbo_with_noise(x, eps)?,
                    None => self.model.elbo(x)?,
                };
                let balancing = self.config.kl_balance
                    && self.state.step < self.config.kl_warmup_steps
                    && terms.kl_groups.len() > 1;
                let kl_term = match (&terms.kl_dims, self.config.free_bits) {
                    (Some(dims), lambda) if lambda > 0.0 => self.free_bits_term(dims, lambda)?,
                    _ if balancing => self.balanced_kl_term(&terms.kl_groups)?,
                    _ => terms.kl.mean(Kind::Float),
                };
                let w = self.config.kl_weight(self.state.step);
                let loss = terms.reconstruction.mean(Kind::Float) + kl_term * w;
                Ok((loss, terms.reconstruction, terms.kl))
            }
            Objective::Iwae => {
                let t = self.model.iwae_terms(x, self.config.iw_k)?;
                Ok((-t.bound.mean(Kind::Float), t.reconstruction, t.kl))
            }
        }
    }

    fn finish_epoch(&mut self, epoch: usize) -> Result<()> {
        self.evaluation_mode(true)?;
        let (val, test_elbo, val_iw) = match self.evaluate(epoch) {
            Ok(v) => v,
            Err(e) => {
                self.evaluation_mode(false)?;
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
            val_kl_groups: if val.kl_groups.len() > 1 {
                val.kl_groups.clone()
            } else {
                Vec::new()
            },
            val_iw,
            test_elbo,
            lr: self.adam.lr(),
            images_per_s: p.examples as f64 / p.seconds.max(1e-9),
            seconds: p.seconds,
        };
        if !val.elbo.is_finite() {
            self.evaluation_mode(false)?;
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
        // In an IWAE fine-tune the validation IWAE bound selects among the fine-tune's epochs
        // (its first always improves on the ELBO phase); the validation ELBO elsewhere.
        let improved = match val_iw {
            Some(iw) => self
                .state
                .history
                .iter()
                .filter_map(|m| m.val_iw)
                .all(|b| iw > b),
            None => {
                let improved = self.state.best_val_elbo.is_none_or(|b| val.elbo > b);
                if improved {
                    self.state.best_val_elbo = Some(val.elbo);
                }
                improved
            }
        };
        self.state.history.push(metrics);
        let saved = if improved { self.save_best() } else { Ok(()) };
        let drawn = saved.and_then(|()| {
            let (model, metrics) = (
                self.model.as_ref(),
                &self.state.history[self.state.history.len() - 1],
            );
            self.observers
                .iter_mut()
                .try_for_each(|o| o.epoch_model(metrics, model))
        });
        self.evaluation_mode(false)?;
        drawn?;
        for o in &mut self.observers {
            o.epoch_finished(&self.state.history)?;
        }
        self.save_last()
    }

    /// After epoch `epoch` (0-based), the validation ELBO, the test ELBO with a test set, and
    /// in an IWAE fine-tune the validation IWAE bound of the current weights. Under a group
    /// each rank evaluates its share of the chunks and the sums are reduced, so every rank
    /// has the figure one process would compute.
    fn evaluate(
        &self,
        epoch: usize,
    ) -> Result<(crate::eval::ElboSummary, Option<f64>, Option<f64>)> {
        let val = self.sharded_elbo(&self.val_x, VALIDATION_SEED)?;
        let test_elbo = match &self.test_x {
            Some(x) => Some(self.sharded_elbo(x, TEST_SEED)?.elbo),
            None => None,
        };
        Ok((val, test_elbo, self.fine_tune_iw(epoch)?))
    }

    /// After epoch `epoch` (0-based) of an IWAE fine-tune, the validation IWAE bound at `iw_k`
    /// samples (one process only: the fine-tune does not run under a group).
    fn fine_tune_iw(&self, epoch: usize) -> Result<Option<f64>> {
        if self.config.iwae_epochs == 0 || self.config.objective_at(epoch) != Objective::Iwae {
            return Ok(None);
        }
        let estimate = crate::eval::evaluate_iw(
            self.model.as_ref(),
            &self.val_x,
            self.config.iw_k,
            self.binarize(),
            VALIDATION_SEED,
            &mut |_, _| {},
        )?;
        Ok(Some(estimate.log_likelihood))
    }

    fn sharded_elbo(&self, images: &Tensor, seed: u64) -> Result<crate::eval::ElboSummary> {
        let shard = (self.rank(), self.world());
        let sums = elbo_sums(self.model.as_ref(), images, self.binarize(), seed, shard)?;
        if let Some(group) = &self.group {
            group.all_reduce_sum(&sums)?;
        }
        Ok(summarize_elbo(&sums, images.size()[0]))
    }
}

/// The sums of one call's steps within an epoch, kept on the device and read back every
/// [`LOG_EVERY`] steps: the reconstruction and KL terms, and the losses not yet read.
struct StepSums {
    started: Instant,
    batch: u64,
    rec: Tensor,
    kl: Tensor,
    pending: Vec<Tensor>,
    steps: u64,
    /// The sums at the last read-back, for the interval means.
    seen: (f64, f64, u64),
}

impl StepSums {
    fn new(device: Device, batch: u64) -> Self {
        let zero = || Tensor::zeros([], (Kind::Double, device));
        Self {
            started: Instant::now(),
            batch,
            rec: zero(),
            kl: zero(),
            pending: Vec::with_capacity(LOG_EVERY),
            steps: 0,
            seen: (0.0, 0.0, 0),
        }
    }

    /// One step's sums and its logged loss.
    fn add(&mut self, rec: &Tensor, kl: &Tensor, loss: Tensor) {
        let _ = self.rec.g_add_(rec);
        let _ = self.kl.g_add_(kl);
        self.pending.push(loss);
        self.steps += 1;
    }

    /// Reads the pending losses back: an error naming the first that is not finite (the
    /// last of them is step `step`'s, of epoch `epoch`, 0-based).
    fn check_finite(&mut self, epoch: usize, step: u64) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let losses: Vec<f32> = Vec::try_from(&Tensor::stack(&self.pending, 0))?;
        self.pending.clear();
        match losses.iter().position(|l| !l.is_finite()) {
            None => Ok(()),
            Some(i) => Err(TrainError::NonFinite {
                epoch: epoch + 1,
                step: step - (losses.len() - i) as u64 + 1,
                value: f64::from(losses[i]),
            }),
        }
    }

    /// Fills `progress`'s running ELBO (with the epoch's earlier sums `before`), the means since
    /// the last report and the throughput.
    fn report(&mut self, before: &EpochAccum, progress: &mut StepProgress) {
        let seen = (before.examples + self.steps * self.batch) as f64;
        let (rec_now, kl_now) = (self.rec.double_value(&[]), self.kl.double_value(&[]));
        let running = -(rec_now + kl_now + before.reconstruction + before.kl) / seen;
        let (rec_seen, kl_seen, steps_seen) = self.seen;
        let n = ((self.steps - steps_seen) * self.batch).max(1) as f64;
        let (rec, kl) = ((rec_now - rec_seen) / n, (kl_now - kl_seen) / n);
        progress.interval_reconstruction = Some(rec);
        progress.interval_kl = Some(kl);
        progress.interval_elbo = Some(-(rec + kl));
        self.seen = (rec_now, kl_now, self.steps);
        progress.elbo = Some(running);
        progress.images_per_s =
            Some((self.steps * self.batch) as f64 / self.started.elapsed().as_secs_f64());
    }

    /// The epoch's sums `before` with these added.
    fn fold_into(&self, before: &EpochAccum) -> EpochAccum {
        EpochAccum {
            reconstruction: before.reconstruction + self.rec.double_value(&[]),
            kl: before.kl + self.kl.double_value(&[]),
            examples: before.examples + self.steps * self.batch,
            seconds: before.seconds + self.started.elapsed().as_secs_f64(),
        }
    }
}

/// The kind a model's convs and dense layers compute in at a resolved precision.
fn compute_kind(precision: Precision) -> Kind {
    match precision {
        Precision::Bf16 => Kind::BFloat16,
        Precision::Fp32 | Precision::Auto => Kind::Float,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patience_counts_epochs_since_the_best() {
        let h = |v: &[f64]| {
            v.iter()
                .enumerate()
                .map(|(i, &e)| EpochMetrics {
                    epoch: i + 1,
                    val_elbo: e,
                    ..Default::default()
                })
                .collect::<Vec<_>>()
        };
        assert!(!patience_exhausted(&h(&[-100.0, -99.0, -98.0]), 1));
        assert!(!patience_exhausted(&h(&[-100.0, -98.0, -99.0]), 2));
        assert!(patience_exhausted(&h(&[-100.0, -98.0, -99.0, -98.5]), 2));
        assert!(!patience_exhausted(&[], 1));
    }
}
