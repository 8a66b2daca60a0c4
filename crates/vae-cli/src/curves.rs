//! `curves.png`: a run's training curves.

use std::path::Path;

use anyhow::Result;
use vae_train::EpochMetrics;

use crate::plot::{PALETTE, Panel, Series, line_chart};

/// Draws `curves.png`: ELBO, KL and reconstruction per epoch, train and validation.
pub fn write_curves(path: &Path, history: &[EpochMetrics]) -> Result<()> {
    let pts = |f: &dyn Fn(&EpochMetrics) -> f64| {
        history
            .iter()
            .map(|m| (m.epoch as f64, f(m)))
            .collect::<Vec<_>>()
    };
    let panel =
        |title: &str, tr: &dyn Fn(&EpochMetrics) -> f64, va: &dyn Fn(&EpochMetrics) -> f64| Panel {
            title: title.into(),
            x_name: "epoch".into(),
            series: vec![
                Series {
                    name: "train".into(),
                    color: PALETTE[0],
                    points: pts(tr),
                },
                Series {
                    name: "validation".into(),
                    color: PALETTE[1],
                    points: pts(va),
                },
            ],
        };
    line_chart(
        path,
        &[
            panel("ELBO (nats)", &|m| m.train_elbo, &|m| m.val_elbo),
            panel("KL (nats)", &|m| m.train_kl, &|m| m.val_kl),
            panel(
                "reconstruction -log p(x|z)",
                &|m| m.train_reconstruction,
                &|m| m.val_reconstruction,
            ),
        ],
    )
}
