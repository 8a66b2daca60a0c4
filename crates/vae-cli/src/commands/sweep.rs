//! `vae sweep`: one model per latent size (same seed and budget), compared on validation
//! ELBO, test IW NLL and active units: the principled way to choose the latent size.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use vae_data::{ImageDataset, Split};
use vae_model::ConvVaeConfig;
use vae_model::latent::active_units;
use vae_train::{
    Checkpoint, RunConfig, TrainConfig, Trainer, encode_images, evaluate_iw, files, images_tensor,
};

use crate::args::SweepArgs;
use crate::progress::{EpochBar, iw_bar};

/// One row of the table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SweepRow {
    pub latent_dim: i64,
    pub tie_weights: bool,
    pub parameters: i64,
    pub val_elbo: f64,
    pub test_iw_nll: f64,
    pub test_iw_std_error: f64,
    pub active_units: i64,
    pub train_seconds: f64,
}

pub fn run(a: SweepArgs) -> Result<u8> {
    if a.latent_dims.is_empty() || a.latent_dims.iter().any(|&d| d < 1) {
        bail!(
            "--latent-dims must list positive sizes, got {:?}",
            a.latent_dims
        );
    }
    if a.iw_samples < 1 || a.iw_images == 0 {
        bail!("--iw-samples and --iw-images must be at least 1");
    }
    let device = a.device.resolve()?;
    let full = ImageDataset::load(&a.data, Split::Train).context("cannot load the training set")?;
    let test = ImageDataset::load(&a.data, Split::Test).context("cannot load the test set")?;
    let out = a.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(format!(
            "sweep-{}",
            chrono::Local::now().format("%Y%m%d-%H%M%S")
        ))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let test_x = images_tensor(&test, device);
    let n_iw = a.iw_images.min(test.len()) as i64;

    let mut rows = Vec::new();
    for &d in &a.latent_dims {
        for tie in if a.tie_weights {
            vec![false, true]
        } else {
            vec![false]
        } {
            let name = format!("z{d}{}", if tie { "-tied" } else { "" });
            let run = RunConfig {
                model: ConvVaeConfig {
                    latent_dim: d,
                    tie_weights: tie,
                    ..ConvVaeConfig::default()
                }
                .into(),
                train: TrainConfig {
                    epochs: a.epochs,
                    batch_size: a.batch_size,
                    seed: a.seed,
                    device: a.device,
                    threads: a.threads,
                    validation_size: a.validation_size,
                    ..TrainConfig::default()
                },
            };
            eprintln!("sweep: training {name} ({} epochs)", a.epochs);
            let mut trainer = Trainer::start(out.join(&name), &full, run)?;
            trainer.observe(EpochBar::default());
            trainer.run()?;
            let seconds: f64 = trainer.state().history.iter().map(|m| m.seconds).sum();
            drop(trainer);
            let loaded = Checkpoint::load(out.join(&name).join(files::BEST))?.into_model(device)?;
            let model = loaded.model.as_ref();
            let pb = iw_bar(a.iw_samples, n_iw as usize, true);
            let iw = evaluate_iw(
                model,
                &test_x.narrow(0, 0, n_iw),
                a.iw_samples,
                true,
                123,
                &mut |done, _| pb.set_position(done as u64),
            )?;
            pb.finish_and_clear();
            let (mu, _) = encode_images(model, &test_x.narrow(0, 0, n_iw))?;
            let row = SweepRow {
                latent_dim: d,
                tie_weights: tie,
                parameters: loaded
                    .vars
                    .variables()
                    .values()
                    .map(|t| t.numel() as i64)
                    .sum(),
                val_elbo: loaded.checkpoint.state.best_val_elbo.unwrap_or(f64::NAN),
                test_iw_nll: -iw.log_likelihood,
                test_iw_std_error: iw.std_error,
                active_units: active_units(&mu),
                train_seconds: seconds,
            };
            eprintln!(
                "sweep: {name}: val ELBO {:.2}, test NLL {:.2}, {} active units",
                row.val_elbo, row.test_iw_nll, row.active_units
            );
            rows.push(row);
        }
    }
    let mut md = format!(
        "| latent | tied | parameters | val ELBO | test NLL (k={}, {} images) | active units | train s |\n|---:|:---:|---:|---:|---:|---:|---:|\n",
        a.iw_samples, n_iw
    );
    let mut csv = String::from(
        "latent_dim,tie_weights,parameters,val_elbo,test_iw_nll,test_iw_std_error,active_units,train_seconds\n",
    );
    for r in &rows {
        md.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.2} ± {:.2} | {} / {} | {:.0} |\n",
            r.latent_dim,
            if r.tie_weights { "yes" } else { "no" },
            r.parameters,
            r.val_elbo,
            r.test_iw_nll,
            r.test_iw_std_error,
            r.active_units,
            r.latent_dim,
            r.train_seconds
        ));
        csv.push_str(&format!(
            "{},{},{},{:.4},{:.4},{:.4},{},{:.2}\n",
            r.latent_dim,
            r.tie_weights,
            r.parameters,
            r.val_elbo,
            r.test_iw_nll,
            r.test_iw_std_error,
            r.active_units,
            r.train_seconds
        ));
    }
    vae_data::write_atomic(out.join("sweep.md"), md.as_bytes())?;
    vae_data::write_atomic(out.join("sweep.csv"), csv.as_bytes())?;
    print!("{md}");
    println!(
        "wrote {} and {}",
        out.join("sweep.md").display(),
        out.join("sweep.csv").display()
    );
    Ok(0)
}
