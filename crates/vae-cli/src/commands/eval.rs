//! `vae eval`.

use anyhow::{Result, bail};
use vae_data::Split;
use vae_model::Likelihood;
use vae_train::{IwPath, evaluate_elbo, evaluate_iw_by, images_tensor};

use crate::args::EvalArgs;
use crate::commands::load_split;
use crate::progress::iw_bar;

/// A latent group whose mean KL is below this many nats carries almost nothing about the
/// image: it is reported as inactive.
const INACTIVE_NATS: f64 = 0.1;

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
        let path = if args.iw_reference {
            IwPath::Reference
        } else {
            IwPath::Fast
        };
        let started = std::time::Instant::now();
        let estimate = evaluate_iw_by(
            model,
            &x.narrow(0, 0, n as i64),
            (args.iw_samples, path),
            binarize,
            args.seed,
            &mut |done, _| pb.set_position(done as u64),
        )?;
        pb.finish_and_clear();
        Some((estimate, started.elapsed().as_secs_f64()))
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
    // Image-samples per second: the evaluation's speed whatever k and the number of images.
    let rate = iw.map(|(e, s)| (e.k as f64 * e.images as f64) / s.max(1e-9));
    let (iw, iw_seconds) = (iw.map(|(e, _)| e), iw.map(|(_, s)| s));
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
            eprintln!(
                "importance-weighted evaluation: {:.1} s, {:.0} image-samples/s",
                iw_seconds.unwrap_or(0.0),
                rate.unwrap_or(0.0)
            );
        }
    }
    Ok(0)
}
