//! `cargo xtask bench --model ladder`: the hierarchical VAE against its PyTorch peer, the
//! `LadderModel` that `vae export` writes for the same run (`xtask/ladder_peer.py` runs it).
//!
//! - Without `--eval`: training images/s of our `vae train --preset ladder` step against the
//!   module trained with Adam on the same batch size and threads (eager; eager with our
//!   allocator preloaded; channels-last with it; and on a CPU with bf16 hardware, bf16
//!   autocast and channels-last with it).
//! - With `--eval`: image-samples/s of the importance-weighted evaluation at k samples per
//!   image, one image at a time: ours (`vae eval`, its prepared evaluator), ours through the
//!   model's reference pass (`--iw-reference`: the same bound at the same draws), and the
//!   module's `log_likelihood` (eager; with our allocator). On a CPU with bf16 hardware, also
//!   ours in f32 throughout (`--iw-precision fp32`), and the module with its convolutions'
//!   products in bf16 (`torch.backends.mkldnn.conv.fp32_precision = "bf16"`), the arithmetic
//!   `vae eval` picks on AMX.
//!
//! Both use one ladder run: `--run`, or one trained here for `--ladder-epochs` epochs.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::{
    BenchArgs, PeerConfig, Tools, last_json_line, measure, median, ours_train, python_cmd,
};

/// One column of a pair: what runs, and how it reads its speed off the JSON it prints.
struct Column {
    name: &'static str,
    command: Command,
    /// The speed's key in the printed JSON line.
    key: &'static str,
    /// The estimate's key, for `--eval`.
    estimate: Option<&'static str>,
}

/// The ladder run the bench uses: `--run`, or a fresh `vae train --preset ladder`, exported.
pub(super) fn ladder_run(t: &Tools, a: &BenchArgs) -> Result<(PathBuf, PathBuf)> {
    let run = match &a.run {
        Some(r) => r.clone(),
        None => {
            let out = t.scratch.path().join("ladder-run");
            println!(
                "training the ladder preset for {} epoch(s) to have a checkpoint (pass --run to use one)",
                a.ladder_epochs
            );
            let mut c = ours_train(t, a, &out, &[]);
            c.args([
                "--preset",
                "ladder",
                "--epochs",
                &a.ladder_epochs.to_string(),
            ]);
            c.arg("--no-tensorboard");
            measure(c).context("training the ladder run failed")?;
            out
        }
    };
    let export = t.scratch.path().join("ladder-export");
    let status = Command::new(&t.vae)
        .args(["export", "--run"])
        .arg(&run)
        .arg("--out")
        .arg(&export)
        .stdout(std::process::Stdio::null())
        .status()
        .context("cannot run vae export")?;
    if !status.success() {
        bail!("vae export --run {} failed", run.display());
    }
    if !export.join("model.py").is_file() {
        bail!(
            "{} is not a ladder run: its export has no model.py",
            run.display()
        );
    }
    Ok((run, export))
}

/// The module's `ladder_peer.py` doing `task` on the export, with our allocator when `tuned`.
pub(super) fn peer(
    t: &Tools,
    a: &BenchArgs,
    task: &str,
    export: &Path,
    tuned: bool,
    extra: &[&str],
) -> Command {
    let script = t.variants.with_file_name("ladder_peer.py");
    let mut c = python_cmd(t, a, &[script.as_os_str(), task.as_ref()]);
    c.arg("--export").arg(export).args(extra);
    if let (true, Some(lib)) = (tuned, &t.mimalloc) {
        c.env("LD_PRELOAD", lib);
        c.env(super::PEER_MIMALLOC_ENV.0, super::PEER_MIMALLOC_ENV.1);
    }
    c
}

/// The columns of one pair.
fn columns(t: &Tools, a: &BenchArgs, run: &Path, export: &Path, pair: usize) -> Vec<Column> {
    if a.eval {
        let ours = |how: &str| {
            let mut c = Command::new(&t.vae);
            c.args(["eval", "--run"])
                .arg(run)
                .arg("--data")
                .arg(&t.data);
            c.args([
                "--iw-samples",
                &a.iw.to_string(),
                "--images",
                &a.iw_images.to_string(),
                "--json",
            ]);
            match how {
                "reference" => {
                    c.arg("--iw-reference");
                }
                precision => {
                    // Computed in every pair, not read back from the previous pair's record.
                    c.args(["--fresh", "--iw-precision", precision]);
                }
            }
            c
        };
        let k = a.iw.to_string();
        let images = a.iw_images.to_string();
        let args = ["--k", k.as_str(), "--images", images.as_str()];
        let bf16_products = [
            "--k",
            k.as_str(),
            "--images",
            images.as_str(),
            "--conv-bf16-products",
        ];
        let mut columns = vec![
            Column {
                name: "ours",
                command: ours("auto"),
                key: "iw_image_samples_per_s",
                estimate: Some("iw_log_likelihood"),
            },
            Column {
                name: "ours-reference",
                command: ours("reference"),
                key: "iw_image_samples_per_s",
                estimate: Some("iw_log_likelihood"),
            },
            Column {
                name: "peer-eager",
                command: peer(t, a, "eval", export, false, &args),
                key: "image_samples_per_s",
                estimate: Some("log_likelihood"),
            },
            Column {
                name: "peer-eager-mimalloc",
                command: peer(t, a, "eval", export, true, &args),
                key: "image_samples_per_s",
                estimate: Some("log_likelihood"),
            },
        ];
        if a.peers.contains(&PeerConfig::Bf16ChannelsLast) {
            columns.push(Column {
                name: "ours-fp32",
                command: ours("fp32"),
                key: "iw_image_samples_per_s",
                estimate: Some("iw_log_likelihood"),
            });
            columns.push(Column {
                name: "peer-conv-bf16-products-mimalloc",
                command: peer(t, a, "eval", export, true, &bf16_products),
                key: "image_samples_per_s",
                estimate: Some("log_likelihood"),
            });
        }
        columns
    } else {
        let out = t.scratch.path().join(format!("ladder-speed-{pair}"));
        let mut ours = ours_train(t, a, &out, &[]);
        ours.args([
            "--preset",
            "ladder",
            "--max-steps",
            &a.steps.to_string(),
            "--untimed-steps",
            "5",
        ]);
        ours.args(["--batch-size", &a.batch.to_string(), "--no-tensorboard"]);
        let steps = a.steps.to_string();
        let args = ["--steps", steps.as_str()];
        let cl = ["--steps", steps.as_str(), "--channels-last"];
        let bf16_cl = [
            "--steps",
            steps.as_str(),
            "--channels-last",
            "--autocast",
            "bf16",
        ];
        let mut columns = vec![
            Column {
                name: "ours",
                command: ours,
                key: "train_images_per_s",
                estimate: None,
            },
            Column {
                name: "peer-eager",
                command: peer(t, a, "train", export, false, &args),
                key: "train_images_per_s",
                estimate: None,
            },
            Column {
                name: "peer-eager-mimalloc",
                command: peer(t, a, "train", export, true, &args),
                key: "train_images_per_s",
                estimate: None,
            },
            Column {
                name: "peer-channels-last-mimalloc",
                command: peer(t, a, "train", export, true, &cl),
                key: "train_images_per_s",
                estimate: None,
            },
        ];
        // The conv bench's bf16-channels-last configuration, on CPUs with bf16 hardware (the
        // bench leaves it out elsewhere), with our allocator as the other tuned column.
        if a.peers.contains(&PeerConfig::Bf16ChannelsLast) {
            columns.push(Column {
                name: "peer-bf16-channels-last-mimalloc",
                command: peer(t, a, "train", export, true, &bf16_cl),
                key: "train_images_per_s",
                estimate: None,
            });
        }
        columns
    }
}

/// Runs the pairs and prints each, then the medians and ratios.
pub(super) fn run(t: &Tools, a: &BenchArgs) -> Result<Value> {
    let (run, export) = ladder_run(t, a)?;
    let what = if a.eval {
        format!(
            "IW evaluation, k = {}, first {} test images, image-samples/s",
            a.iw, a.iw_images
        )
    } else {
        format!("training, {} steps x batch {}, images/s", a.steps, a.batch)
    };
    println!("ladder ({what}), run {}", run.display());
    let names: Vec<&str> = columns(t, a, &run, &export, 0)
        .iter()
        .map(|c| c.name)
        .collect();
    let mut speeds: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut rss: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut estimates: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut pairs = Vec::new();
    for pair in 0..a.pairs {
        let mut cols: Vec<(usize, Column)> = columns(t, a, &run, &export, pair)
            .into_iter()
            .enumerate()
            .collect();
        // Counterbalanced against the machine's drift, as the conv bench.
        if pair % 2 == 1 {
            cols.reverse();
        }
        let mut row = vec![Value::Null; names.len()];
        for (i, col) in cols {
            let m = measure(col.command).with_context(|| format!("{} failed", col.name))?;
            let j = last_json_line(&m)?;
            let speed = j[col.key].as_f64().unwrap_or(f64::NAN);
            let estimate = col.estimate.and_then(|e| j[e].as_f64());
            speeds[i].push(speed);
            rss[i].push(m.peak_rss_mb);
            if let Some(e) = estimate {
                estimates[i].push(e);
            }
            row[i] = json!({"speed": speed, "peak_rss_mb": m.peak_rss_mb, "estimate": estimate});
        }
        let line: Vec<String> = names
            .iter()
            .zip(&row)
            .map(|(n, r)| {
                let est = r["estimate"]
                    .as_f64()
                    .map(|e| format!(" ({e:.3})"))
                    .unwrap_or_default();
                format!(
                    "{n} {:.0}{est} {:.0} MB",
                    r["speed"].as_f64().unwrap_or(f64::NAN),
                    r["peak_rss_mb"].as_f64().unwrap_or(f64::NAN)
                )
            })
            .collect();
        let ours = row[0]["speed"].as_f64().unwrap_or(f64::NAN);
        let ratios: Vec<String> = names[1..]
            .iter()
            .zip(&row[1..])
            .map(|(n, r)| format!("/{n} {:.2}", ours / r["speed"].as_f64().unwrap_or(f64::NAN)))
            .collect();
        println!(
            "pair {}: {} | ours{}",
            pair + 1,
            line.join(" | "),
            ratios.join(" ")
        );
        pairs.push(Value::Array(row));
    }
    let med: Vec<f64> = speeds.iter_mut().map(|v| median(v)).collect();
    let med_rss: Vec<f64> = rss.iter_mut().map(|v| median(v)).collect();
    // Ratios are medians of each pair's ratio, so drift between pairs cancels.
    let ratio = |i: usize| {
        let mut r: Vec<f64> = speeds[0]
            .iter()
            .zip(&speeds[i])
            .map(|(o, p)| o / p)
            .collect();
        median(&mut r)
    };
    let mut summary = serde_json::Map::new();
    let mut text = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let mut e = estimates[i].clone();
        summary.insert(
            (*n).into(),
            json!({"median_speed": med[i], "median_peak_rss_mb": med_rss[i],
                   "ours_over_this": if i > 0 { json!(ratio(i)) } else { Value::Null },
                   "median_estimate": if e.is_empty() { Value::Null } else { json!(median(&mut e)) }}),
        );
        let r = if i > 0 {
            format!(", ours / it {:.2}", ratio(i))
        } else {
            String::new()
        };
        text.push(format!("{n} {:.0} ({:.0} MB{r})", med[i], med_rss[i]));
    }
    println!("medians of {} pairs: {}", a.pairs, text.join("; "));
    if a.eval {
        println!(
            "estimates: ours, ours-fp32 and ours-reference draw the same noise (they agree to float rounding, and ours to bf16 rounding of its conv products where it takes them: `vae eval --json` says so in iw_bf16_products); the peer draws its own binarisation and samples"
        );
    }
    Ok(
        json!({"model": "ladder", "eval": a.eval, "run": run.display().to_string(), "columns": names,
              "pairs": pairs, "summary": summary}),
    )
}
