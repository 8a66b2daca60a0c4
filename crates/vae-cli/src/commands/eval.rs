//! `vae eval`.

use std::path::Path;

use anyhow::{Context, Result, bail};
use vae_data::Split;
use vae_model::Likelihood;
use vae_train::{
    IwPath, IwRecord, IwRun, evaluate_elbo, evaluate_iw_by, evaluate_iw_recorded, images_tensor,
};

use crate::args::EvalArgs;
use crate::commands::load_split;
use crate::progress::iw_bar;

/// A latent group whose mean KL is below this many nats carries almost nothing about the
/// image: it is reported as inactive.
const INACTIVE_NATS: f64 = 0.1;

/// The record of an importance-weighted evaluation of `checkpoint`, beside it, or `None`
/// (with a warning) where the checkpoint cannot be read back to identify it. An evaluation
/// with bf16 conv products has a record of its own (`-bf16`), so it never starts an f32
/// record over.
fn iw_record(
    checkpoint: &Path,
    (k, seed, n): (i64, u64, usize),
    bf16_products: bool,
    fresh: bool,
) -> Option<IwRecord> {
    use sha2::{Digest, Sha256};
    let digest = match std::fs::read(checkpoint) {
        Ok(bytes) => Sha256::digest(&bytes),
        Err(e) => {
            eprintln!(
                "warning: cannot read {} to identify it ({e}); evaluating without a record to resume from",
                checkpoint.display()
            );
            return None;
        }
    };
    let name = checkpoint.file_name()?.to_string_lossy();
    let arithmetic = if bf16_products { "-bf16" } else { "" };
    let file = checkpoint.with_file_name(format!("{name}.iw-k{k}-seed{seed}-n{n}{arithmetic}.csv"));
    // A checkpoint in a folder this user cannot write to is still evaluated.
    if let Err(e) = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&file)
    {
        eprintln!(
            "warning: cannot write {} ({e}); evaluating without a record to resume from",
            file.display()
        );
        return None;
    }
    Some(IwRecord {
        file,
        model_id: format!(
            "sha256 {}",
            digest
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ),
        fresh,
    })
}

pub fn run(args: EvalArgs) -> Result<u8> {
    if args.iw_samples < 0 {
        bail!("--iw-samples must be at least 0, got {}", args.iw_samples);
    }
    let path = args.model.path()?;
    let loaded = args.model.load()?;
    let (model, ckpt) = (loaded.model.as_ref(), &loaded.checkpoint);
    let device = model.device();
    let test = load_split(&args.data, Split::Test, model)?;
    let binarize = ckpt.train_config.binarizes(model.likelihood());
    let x = images_tensor(&test, device);
    let elbo = evaluate_elbo(model, &x, binarize, args.seed)?;
    let iw = if args.iw_samples > 0 {
        let n = args.images.unwrap_or(test.len()).min(test.len());
        if n == 0 {
            bail!("--images must be at least 1");
        }
        let pb = iw_bar(args.iw_samples, n, !args.json);
        let images = x.narrow(0, 0, n as i64);
        let iw_path = if args.iw_reference {
            IwPath::Reference
        } else {
            IwPath::Fast(args.iw_precision)
        };
        let record = if args.iw_reference {
            // A check of the computation: nothing is read back.
            None
        } else {
            iw_record(
                &path,
                (args.iw_samples, args.seed, n),
                iw_path.bf16_products(model),
                args.fresh,
            )
        };
        let started = std::time::Instant::now();
        let run = match &record {
            Some(record) => evaluate_iw_recorded(
                model,
                &images,
                (args.iw_samples, iw_path),
                binarize,
                args.seed,
                record,
                &mut |done, _| pb.set_position(done as u64),
            )
            .with_context(|| "the importance-weighted evaluation failed")?,
            None => IwRun {
                estimate: evaluate_iw_by(
                    model,
                    &images,
                    (args.iw_samples, iw_path),
                    binarize,
                    args.seed,
                    &mut |done, _| pb.set_position(done as u64),
                )?,
                resumed: 0,
            },
        };
        pb.finish_and_clear();
        if run.resumed > 0 && !args.json {
            eprintln!(
                "resumed the importance-weighted evaluation from {}: {} of {n} images were done (--fresh starts over)",
                record
                    .as_ref()
                    .map_or(String::new(), |r| r.file.display().to_string()),
                run.resumed,
            );
        }
        Some((run, started.elapsed().as_secs_f64(), record.map(|r| r.file)))
    } else {
        None
    };
    // Bits per dimension, for a likelihood that is a mass function over 8-bit levels.
    let [c, h, w] = model.image_shape();
    let per_dim = model
        .likelihood()
        .is_8bit()
        .then(|| ((c * h * w) as f64) * std::f64::consts::LN_2);
    let bits = |nats: f64| per_dim.map(|d| nats / d);
    // Image-samples per second over the images computed now (not those read back from the
    // record): the evaluation's speed whatever k and the number of images.
    let rate = iw.as_ref().and_then(|(r, s, _)| {
        let computed = r.estimate.images - r.resumed;
        (computed > 0).then(|| (r.estimate.k as f64 * computed as f64) / s.max(1e-9))
    });
    let resumed = iw.as_ref().map(|(r, _, _)| r.resumed);
    let record = iw
        .as_ref()
        .and_then(|(_, _, f)| f.as_ref().map(|f| f.display().to_string()));
    let (iw, iw_seconds) = (
        iw.as_ref().map(|(r, _, _)| r.estimate),
        iw.as_ref().map(|(_, s, _)| *s),
    );
    if args.json {
        let v = serde_json::json!({
            "likelihood": model.likelihood().name(),
            "elbo_bits_per_dim": bits(-elbo.elbo),
            "iw_bits_per_dim": iw.and_then(|e| bits(-e.log_likelihood)),
            "checkpoint": path.display().to_string(),
            "epochs": ckpt.state.history.len(),
            "step": ckpt.state.step,
            "test_elbo": elbo.elbo,
            "test_kl": elbo.kl,
            "test_kl_groups": elbo.kl_groups,
            "test_reconstruction": elbo.reconstruction,
            "elbo_images": elbo.images,
            "iw_log_likelihood": iw.map(|e| e.log_likelihood),
            "iw_nll": iw.map(|e| -e.log_likelihood),
            "iw_std_error": iw.map(|e| e.std_error),
            "iw_k": iw.map(|e| e.k),
            "iw_images": iw.map(|e| e.images),
            "iw_seconds": iw_seconds,
            "iw_image_samples_per_s": rate,
            "iw_resumed_images": resumed,
            "iw_record": record,
            "iw_bf16_products": iw.map(|e| e.bf16_products),
        });
        println!("{v}");
    } else {
        println!(
            "checkpoint {} (epoch {}, step {})",
            path.display(),
            ckpt.state.history.len(),
            ckpt.state.step
        );
        let in_bits = |nats: f64| {
            bits(nats)
                .map(|b| format!(" = {b:.4} bits/dim"))
                .unwrap_or_default()
        };
        println!(
            "test ELBO {:.2} nats{} (KL {:.2}, reconstruction {:.2}; {} images; {} likelihood)",
            elbo.elbo,
            in_bits(-elbo.elbo),
            elbo.kl,
            elbo.reconstruction,
            elbo.images,
            model.likelihood()
        );
        if elbo.kl_groups.len() > 1 {
            let groups: Vec<String> = elbo
                .kl_groups
                .iter()
                .enumerate()
                .map(|(g, kl)| {
                    let name = if g == 0 {
                        "top".to_string()
                    } else {
                        format!("{}", g + 1)
                    };
                    let state = if *kl < INACTIVE_NATS {
                        ", inactive"
                    } else {
                        ""
                    };
                    format!("{name} {kl:.2}{state}")
                })
                .collect();
            println!("KL per latent group, top first: {}", groups.join("; "));
        }
        if model.likelihood() == Likelihood::Bernoulli && !binarize {
            eprintln!(
                "note: this run's Bernoulli scores intensities in [0, 1] (--no-binarize), which is not a likelihood of them: these figures are no NLL; train with --likelihood logistic or continuous-bernoulli for one"
            );
        }
        if let Some(e) = iw {
            println!(
                "test NLL {:.2} ± {:.2} nats{} (importance-weighted, k = {}, first {} images)",
                -e.log_likelihood,
                e.std_error,
                in_bits(-e.log_likelihood),
                e.k,
                e.images,
            );
            // On stderr: the figures above are the same every run, the time is not.
            if let Some(rate) = rate {
                eprintln!(
                    "importance-weighted evaluation: {:.1} s, {rate:.0} image-samples/s{}",
                    iw_seconds.unwrap_or(0.0),
                    if e.bf16_products {
                        " (top-down convolutions with bf16 products; --iw-precision fp32 for f32 throughout)"
                    } else {
                        ""
                    },
                );
            }
        }
    }
    Ok(0)
}
