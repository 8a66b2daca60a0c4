//! Training, checkpointing and evaluating the [`vae_model::Vae`] models: the library's run.
//!
//! [`Trainer::start`] takes a data set and a [`RunConfig`] — `RunConfig::default()` is exactly
//! what `vae train` runs with no flags; [`RunConfig::preset`], [`RunConfig::overlay_toml`] and
//! plain field writes change it — and does what a run needs: the validation split, the image
//! shape from the data, the device, the run directory. [`Trainer::run`] trains with Adam
//! (AdamW, Adamax) on the negative ELBO (β-weighted, KL warm-up, free bits) or the IWAE
//! bound, measuring the validation ELBO after every epoch and writing, atomically,
//! `last.safetensors` (weights, optimiser moments, configs, state, history), `best.safetensors`
//! and `metrics.csv`. [`Trainer::resume`] continues a run exactly: per-step seeds derived from
//! (seed, step) make an interrupted-and-resumed run draw the same noise as an uninterrupted one.
//! Progress goes to [`Observer`]s; this crate prints nothing, writes no images and parses no
//! command lines (that is `vae-cli`).
//!
//! [`Trainer::start_parallel`] and [`Trainer::resume_parallel`] train one model on several
//! processes, data-parallel, over a [`ProcessGroup`] on libtorch's own c10d (Gloo on the CPU,
//! NCCL on CUDA) met through a [`Rendezvous`] that torchrun's variables describe.
//!
//! [`evaluate_elbo`] and [`evaluate_iw`] score a model on a test set ([`evaluate_iw_recorded`]
//! resumably, keeping each image's bound in a file); [`Checkpoint`] reads a
//! checkpoint back into a model; [`TensorBoard`] logs a run as TensorBoard event files;
//! [`Profiler`] records libtorch's operators as a Chrome trace, as `torch.profiler` does.
//!
//! ```no_run
//! use vae_data::{ImageDataset, Split};
//! use vae_train::{RunConfig, Trainer};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let data = ImageDataset::load("data/mnist", Split::Train)?;
//! let mut trainer = Trainer::start("runs/example", &data, RunConfig::default())?;
//! trainer.run()?;
//! println!("best validation ELBO {:?}", trainer.state().best_val_elbo);
//! # Ok(())
//! # }
//! ```

mod adam;
mod alloc;
mod checkpoint;
mod config;
mod device;
mod dist;
mod error;
mod eval;
mod fused;
mod iw_record;
mod lock;
mod observe;
mod precision;
mod profile;
mod tensorboard;
mod trainer;

pub use adam::Adam;
pub use alloc::tune_allocator;
pub use checkpoint::{Checkpoint, EpochAccum, EpochMetrics, LoadedModel, TrainState};
pub use config::{
    DEFAULT_EPOCHS, LrSchedule, Objective, Optimizer, Precision, Preset, RunConfig, TrainConfig,
};
pub use device::{Device, device_name, libtorch_has_cuda};
pub use dist::{Backends, COLLECTIVE_TIMEOUT, ProcessGroup, Rendezvous, StoreServer, backends};
pub use error::{Result, TrainError};
pub use eval::{
    ElboSummary, IwEstimate, IwPath, encode_images, evaluate_elbo, evaluate_iw, evaluate_iw_by,
    images_tensor, prepare,
};
pub use iw_record::{IwRecord, IwRun, evaluate_iw_recorded};
pub use observe::{MetricsCsv, Observer, StepProgress};
pub use precision::PrecisionChoice;
pub use profile::Profiler;
pub use tensorboard::{
    EventWriter, ImageMaker, Images, LoggedEvent, LoggedValue, TensorBoard, events_fuzz_input,
    parse_events, read_event_file, truncate_event_files,
};
pub use trainer::{Outcome, Trainer, files};
pub use vae_model::CpuFeatures;

#[cfg(test)]
mod tests {
    /// libtorch's generator is global to the process: every unit test that seeds or draws
    /// takes this lock, so a parallel test cannot draw between another's seeding and its
    /// draws.
    static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

    pub(crate) fn lock() -> std::sync::MutexGuard<'static, ()> {
        RNG.lock().unwrap_or_else(|e| e.into_inner())
    }
}
