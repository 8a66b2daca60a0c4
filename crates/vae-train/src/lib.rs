//! Training, checkpointing and evaluating [`vae_model::ConvVae`] models.
//!
//! A [`Trainer`] runs Adam (or AdamW, Adamax) on the negative ELBO (optionally β-weighted with
//! a linear KL warm-up and free bits, or the IWAE bound instead; with gradient clipping, a
//! warm-up + cosine learning-rate schedule and an optional weight EMA) over an `vae_data::MnistDataset` held on the training
//! device as `u8`, shuffled and dynamically binarised there. After every epoch it measures the
//! validation ELBO and writes, atomically, `last.safetensors` (weights, Adam moments, configs,
//! state and metric history), `best.safetensors` and `metrics.csv` into the run directory.
//! [`Trainer::resume`] continues a run exactly: per-step seeds derived from (seed, step) make
//! an interrupted-and-resumed run draw the same noise as an uninterrupted one.
//!
//! [`evaluate_elbo`] and [`evaluate_iw`] score a model on a test set; [`Checkpoint`] reads a
//! checkpoint back into a model. This crate writes no images and parses no command lines
//! (that is `vae-cli`).
//!
//! ```no_run
//! use vae_data::{MnistDataset, Split};
//! use vae_model::ConvVaeConfig;
//! use vae_train::{Outcome, TrainConfig, Trainer};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (train, val) = MnistDataset::load("data/mnist", Split::Train)?.split_validation(10_000)?;
//! let config = TrainConfig { epochs: 2, device: "cpu".into(), ..TrainConfig::default() };
//! let mut trainer = Trainer::new("runs/example", ConvVaeConfig::default(), config, &train, &val)?;
//! assert_eq!(trainer.run()?, Outcome::Completed);
//! println!("best validation ELBO {:?}", trainer.state().best_val_elbo);
//! # Ok(())
//! # }
//! ```

mod adam;
mod alloc;
mod checkpoint;
mod config;
mod device;
mod error;
mod eval;
mod fused;
mod trainer;

pub use adam::Adam;
pub use alloc::tune_allocator;
pub use checkpoint::{
    Checkpoint, EpochAccum, EpochMetrics, FORMAT as CHECKPOINT_FORMAT, TrainState,
    remove_stale_temporaries, write_atomic,
};
pub use config::{
    DEFAULT_EPOCHS, LrSchedule, Objective, Optimizer, Precision, Preset, RunConfig, TrainConfig,
};
pub use device::{device_name, libtorch_has_cuda, parse_device};
pub use error::{Result, TrainError};
pub use eval::{ElboSummary, IwEstimate, evaluate_elbo, evaluate_iw, images_tensor, prepare};
pub use trainer::{Outcome, Trainer, files, patience_exhausted};
