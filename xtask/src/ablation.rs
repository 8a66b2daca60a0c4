//! `cargo xtask ablation`: each model and training option switched on (or, for what the
//! default has, off) alone against the default, with the same number of epochs, compared by
//! best validation ELBO (and time).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::json;

/// Settings of an ablation.
#[derive(Debug, Clone)]
pub struct AblationArgs {
    pub epochs: usize,
    pub threads: usize,
    pub only: Vec<String>,
    pub keep: bool,
    pub json: bool,
}

/// (name, what it switches, `vae train` flags). The first is the baseline.
pub const VARIANTS: &[(&str, &str, &[&str])] = &[
    ("default", "the default model and schedule", &[]),
    (
        "iwae-k5",
        "IWAE objective, k = 5",
        &["--objective", "iwae", "--iw-k", "5"],
    ),
    (
        "free-bits",
        "free bits, 0.1 nats per dim",
        &["--free-bits", "0.1"],
    ),
    (
        "kl-warmup",
        "KL warm-up over 2000 steps",
        &["--kl-warmup-steps", "2000"],
    ),
    (
        "standard-prior",
        "standard normal prior instead of the VampPrior",
        &["--prior", "standard"],
    ),
    (
        "vamp-500",
        "VampPrior with 500 pseudo-inputs",
        &["--pseudo-inputs", "500"],
    ),
    (
        "res-blocks",
        "1 residual block per level",
        &["--res-blocks", "1"],
    ),
    (
        "hidden-256",
        "dense hidden layer of 256",
        &["--hidden-dim", "256"],
    ),
    ("wide", "channels 64,128", &["--channels", "64,128"]),
    (
        "pixel-head",
        "autoregressive pixel head, 16 channels, 3 layers",
        &["--pixel-head", "16"],
    ),
    ("latent-64", "64 latent dims", &["--latent-dim", "64"]),
    (
        "adamw",
        "AdamW, weight decay 1e-2",
        &["--optimizer", "adamw", "--weight-decay", "0.01"],
    ),
    ("adamax", "Adamax", &["--optimizer", "adamax"]),
    ("ema", "weight EMA, decay 0.999", &["--ema-decay", "0.999"]),
    (
        "grad-clip",
        "gradient clipping at norm 50",
        &["--grad-clip", "50"],
    ),
];

/// Best validation ELBO and total training seconds from a run's metrics.csv.
fn summarise(run: &Path) -> Result<(f64, f64)> {
    let path = run.join("metrics.csv");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .context("empty metrics.csv")?
        .split(',')
        .collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .with_context(|| format!("metrics.csv has no {name} column"))
    };
    let (val, secs) = (col("val_elbo")?, col("seconds")?);
    let (mut best, mut total) = (f64::NEG_INFINITY, 0.0);
    for line in lines {
        let cells: Vec<&str> = line.split(',').collect();
        best = best.max(cells[val].parse::<f64>()?);
        total += cells[secs].parse::<f64>()?;
    }
    Ok((best, total))
}

pub fn run(root: &Path, cargo: &str, a: &AblationArgs) -> Result<()> {
    let data = crate::bench::mnist_dir(root)?;
    for name in &a.only {
        if !VARIANTS.iter().any(|(n, _, _)| n == name) {
            let known: Vec<&str> = VARIANTS.iter().map(|v| v.0).collect();
            bail!("unknown variant {name:?}; known: {}", known.join(", "));
        }
    }
    let vae = crate::bench::build_vae(root, cargo)?;
    let scratch = tempfile::tempdir()?;
    let base_dir = if a.keep {
        root.join("runs/ablation")
    } else {
        scratch.path().to_path_buf()
    };
    let mut rows = Vec::new();
    for (name, what, flags) in VARIANTS {
        if *name != "default" && !a.only.is_empty() && !a.only.iter().any(|o| o == name) {
            continue;
        }
        let out = base_dir.join(name);
        if out.exists() {
            std::fs::remove_dir_all(&out)?;
        }
        if !a.json {
            eprintln!("ablation: {name} ({what}) ...");
        }
        let result = Command::new(&vae)
            .arg("train")
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&out)
            .args(["--epochs", &a.epochs.to_string()])
            .args(["--threads", &a.threads.to_string(), "--device", "cpu"])
            .args(*flags)
            .output()?;
        if !result.status.success() {
            // An option that does not combine with the default (free bits need the standard
            // prior) is a row saying why, not the end of the table.
            let stderr = String::from_utf8_lossy(&result.stderr);
            let reason = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            if *name == "default" {
                bail!("vae train with the defaults failed:\n{stderr}");
            }
            rows.push(json!({"name": name, "what": what, "flags": flags.join(" "),
                             "error": reason.trim()}));
            continue;
        }
        let (best, seconds) = summarise(&out)?;
        rows.push(json!({"name": name, "what": what, "flags": flags.join(" "),
                         "best_val_elbo": best, "train_seconds": seconds}));
    }
    let base = rows[0]["best_val_elbo"].as_f64().unwrap_or(f64::NAN);
    let base_s = rows[0]["train_seconds"].as_f64().unwrap_or(f64::NAN);
    for r in &mut rows {
        if r.get("error").is_some() {
            continue;
        }
        let v = r["best_val_elbo"].as_f64().unwrap_or(f64::NAN);
        let s = r["train_seconds"].as_f64().unwrap_or(f64::NAN);
        r["delta"] = json!(v - base);
        r["time_ratio"] = json!(s / base_s);
    }
    if a.json {
        println!(
            "{}",
            json!({"epochs": a.epochs, "threads": a.threads, "variants": rows})
        );
        return Ok(());
    }
    println!(
        "\n{} epochs each, batch 128, {} CPU threads; validation = the last 10,000 training images\n",
        a.epochs, a.threads
    );
    println!("| variant | flags | best val ELBO | Δ vs default | train time |");
    println!("|---|---|---:|---:|---:|");
    for r in &rows {
        let get = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        let flags = r["flags"].as_str().unwrap_or_default();
        if let Some(e) = r["error"].as_str() {
            println!(
                "| {} | `{flags}` | n/a: {e} | | |",
                r["what"].as_str().unwrap_or_default()
            );
            continue;
        }
        println!(
            "| {} | {} | {:.2} | {:+.2} | {:.0} s ({:.2}×) |",
            r["what"].as_str().unwrap_or_default(),
            if flags.is_empty() {
                "—".to_string()
            } else {
                format!("`{flags}`")
            },
            get("best_val_elbo"),
            get("delta"),
            get("train_seconds"),
            get("time_ratio"),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarise_reads_the_best_validation_elbo_and_total_time() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("metrics.csv"),
            "epoch,step,val_elbo,seconds\n1,10,-120.5,3.0\n2,20,-110.25,4.5\n3,30,-111.0,4.0\n",
        )
        .unwrap();
        assert_eq!(summarise(dir.path()).unwrap(), (-110.25, 11.5));
        std::fs::write(dir.path().join("metrics.csv"), "epoch,step\n").unwrap();
        assert!(summarise(dir.path()).is_err());
    }

    #[test]
    fn variants_have_unique_names_and_default_first() {
        assert_eq!(VARIANTS[0].0, "default");
        let mut names: Vec<&str> = VARIANTS.iter().map(|v| v.0).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), VARIANTS.len());
    }
}
