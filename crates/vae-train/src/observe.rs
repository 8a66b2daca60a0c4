//! What a run reports as it goes: the [`Observer`] trait, and [`MetricsCsv`], the observer that
//! writes a run's `metrics.csv`.

use std::path::PathBuf;

use crate::checkpoint::EpochMetrics;
use crate::error::Result;

/// Where training stands after a step; see [`Observer::step`].
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct StepProgress {
    /// The epoch, 1-based.
    pub epoch: usize,
    /// The run's epochs.
    pub epochs: usize,
    /// Steps of this epoch done.
    pub step_in_epoch: u64,
    /// Steps in an epoch.
    pub steps_per_epoch: u64,
    /// Optimiser steps done in all.
    pub step: u64,
    /// The epoch's mean training ELBO so far (nats), on the steps that read the loss back
    /// from the device (every few steps); `None` on the others.
    pub elbo: Option<f64>,
    /// Training images per second over this call's steps of the epoch, with `elbo`.
    pub images_per_s: Option<f64>,
    /// The mean training ELBO (nats) over the steps since the last read-back, with `elbo`.
    pub interval_elbo: Option<f64>,
    /// The mean KL term over those steps, with `elbo`.
    pub interval_kl: Option<f64>,
    /// The mean reconstruction term (−log p(x|z)) over those steps, with `elbo`.
    pub interval_reconstruction: Option<f64>,
    /// The learning rate of this step.
    pub lr: f64,
}

/// Receives a run's progress and results; attach one with
/// [`Trainer::observe`](crate::Trainer::observe).
///
/// Every method has an empty default, so an observer implements only what it shows. The
/// `vae` command's progress bar is one observer; [`MetricsCsv`] is another. The trainer
/// itself prints nothing.
pub trait Observer {
    /// Training steps of an epoch begin (or resume part-way: `done` steps are already done).
    fn epoch_started(&mut self, epoch: usize, epochs: usize, steps_per_epoch: u64, done: u64) {
        let _ = (epoch, epochs, steps_per_epoch, done);
    }

    /// A training step is done.
    fn step(&mut self, progress: &StepProgress) {
        let _ = progress;
    }

    /// The epoch's training steps stopped: its end, the step limit, an interruption or a
    /// diverging loss. Evaluation follows at an epoch's end.
    fn steps_ended(&mut self) {}

    /// An epoch is finished and evaluated: `history` holds every finished epoch, this one
    /// last. Called before `last.safetensors` is written; an error stops the run.
    fn epoch_finished(&mut self, history: &[EpochMetrics]) -> Result<()> {
        let _ = history;
        Ok(())
    }

    /// The model as the epoch was evaluated (the weight average, with an EMA), for observers
    /// that draw from it; called before [`Observer::epoch_finished`]. Draws from the global
    /// libtorch RNG do not change training: every step and epoch reseeds it.
    fn epoch_model(&mut self, metrics: &EpochMetrics, model: &dyn vae_model::Vae) -> Result<()> {
        let _ = (metrics, model);
        Ok(())
    }
}

/// Writes `metrics.csv` (one row per finished epoch, atomically) after every epoch. Every
/// run has one: [`Trainer::start`](crate::Trainer::start) and
/// [`Trainer::resume`](crate::Trainer::resume) attach it.
#[derive(Debug, Clone)]
pub struct MetricsCsv {
    path: PathBuf,
}

impl MetricsCsv {
    /// Writes to `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The CSV text of `history`: a header and one row per epoch.
    pub fn render(history: &[EpochMetrics]) -> String {
        let mut csv = String::from(
            "epoch,step,train_elbo,train_kl,train_reconstruction,val_elbo,val_kl,val_reconstruction,test_elbo,lr,images_per_s,seconds",
        );
        // A hierarchical model's KL per group: val_kl_group1 (the top), val_kl_group2, ...
        let groups = history
            .iter()
            .map(|m| m.val_kl_groups.len())
            .max()
            .unwrap_or(0);
        for g in 1..=groups {
            csv.push_str(&format!(",val_kl_group{g}"));
        }
        // An IWAE fine-tune's validation bound, in its epochs.
        let iw = history.iter().any(|m| m.val_iw.is_some());
        if iw {
            csv.push_str(",val_iw");
        }
        csv.push('\n');
        for m in history {
            csv.push_str(&format!(
                "{},{},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{},{},{:.1},{:.2}",
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
            for g in 0..groups {
                csv.push(',');
                if let Some(kl) = m.val_kl_groups.get(g) {
                    csv.push_str(&format!("{kl:.4}"));
                }
            }
            if iw {
                csv.push(',');
                if let Some(v) = m.val_iw {
                    csv.push_str(&format!("{v:.4}"));
                }
            }
            csv.push('\n');
        }
        csv
    }
}

impl Observer for MetricsCsv {
    fn epoch_finished(&mut self, history: &[EpochMetrics]) -> Result<()> {
        Ok(vae_data::write_atomic(
            &self.path,
            Self::render(history).as_bytes(),
        )?)
    }
}
