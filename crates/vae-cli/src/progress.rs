//! Progress bars: the trainer's [`Observer`] and the importance-sampling evaluation's callback.

use indicatif::{ProgressBar, ProgressStyle};
use vae_train::{Observer, StepProgress};

/// One bar per epoch (drawn on a terminal only), with the running ELBO and images/s.
#[derive(Default)]
pub struct EpochBar {
    bar: Option<ProgressBar>,
}

impl Observer for EpochBar {
    fn epoch_started(&mut self, epoch: usize, epochs: usize, steps_per_epoch: u64, done: u64) {
        let pb = ProgressBar::new(steps_per_epoch);
        pb.set_style(
            ProgressStyle::with_template("epoch {prefix:>3} [{bar:30}] {pos}/{len} {msg} {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        pb.set_prefix(format!("{epoch}/{epochs}"));
        pb.set_position(done);
        self.bar = Some(pb);
    }

    fn step(&mut self, p: &StepProgress) {
        if let Some(pb) = &self.bar {
            if let (Some(elbo), Some(rate)) = (p.elbo, p.images_per_s) {
                pb.set_message(format!("ELBO {elbo:8.2}  {rate:6.0} img/s"));
            }
            pb.set_position(p.step_in_epoch);
        }
    }

    fn steps_ended(&mut self) {
        if let Some(pb) = self.bar.take() {
            pb.finish_and_clear();
        }
    }
}

/// A bar over the images of an importance-weighted evaluation with `k` samples each (hidden
/// unless `shown`); move it with `set_position` from `evaluate_iw`'s callback.
pub fn iw_bar(k: i64, images: usize, shown: bool) -> ProgressBar {
    let pb = if shown {
        ProgressBar::new(images as u64)
    } else {
        ProgressBar::hidden()
    };
    pb.set_style(
        ProgressStyle::with_template("IW k={msg} [{bar:30}] {pos}/{len} images {eta}")
            .expect("valid template"),
    );
    pb.set_message(k.to_string());
    pb
}
