//! The `vae` command end to end, on small synthetic data (CPU).

mod common;

use std::path::PathBuf;

use common::*;
use tempfile::TempDir;

const TINY: &[&str] = &[
    "--epochs",
    "2",
    "--latent-dim",
    "2",
    "--channels",
    "4,8",
    "--batch-size",
    "16",
    "--validation-size",
    "16",
    "--device",
    "cpu",
    "--threads",
    "1",
];

/// A tiny run on fresh synthetic data (96 training, 24 test images of 8x8): `vae train` with
/// [`TINY`] and `extra`, which must succeed. Returns the data and runs folders (deleted when
/// dropped), the run directory and train's stdout.
fn train_tiny(extra: &[&str]) -> (TempDir, TempDir, PathBuf, String) {
    let data = tempfile::tempdir().unwrap();
    synthetic_mnist(data.path(), 96, 24, 8);
    let runs = tempfile::tempdir().unwrap();
    let run = runs.path().join("r");
    let (d, r) = (data.path().to_str().unwrap(), run.to_str().unwrap());
    let mut args = vec!["train", "--data", d, "--out", r];
    args.extend_from_slice(TINY);
    args.extend_from_slice(extra);
    let out = vae(&args);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    (data, runs, run, stdout)
}

#[test]
fn train_eval_resume_on_synthetic_data() {
    let (data, _runs, run, stdout) = train_tiny(&[]);
    let (d, r) = (data.path().to_str().unwrap(), run.to_str().unwrap());
    assert!(stdout.contains("test ELBO"), "{stdout}");
    for f in [
        "last.safetensors",
        "best.safetensors",
        "metrics.csv",
        "config.toml",
        "samples.png",
        "reconstructions.png",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    // 8x8 images, 2-pixel borders: 64 samples in 8 columns; 16 originals + 16 reconstructions.
    let (w, h, px) = read_png(&run.join("samples.png"));
    assert_eq!((w, h), (82, 82));
    assert!(px.iter().any(|&p| p > 100), "samples are not all dark");
    let (w, h, _) = read_png(&run.join("reconstructions.png"));
    assert_eq!((w, h), (82, 42));

    let out = vae(&[
        "eval",
        "--run",
        r,
        "--data",
        d,
        "--iw-samples",
        "50",
        "--images",
        "8",
        "--json",
        "--device",
        "cpu",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["iw_k"], 50);
    assert_eq!(v["iw_images"], 8);
    assert_eq!(v["elbo_images"], 24);
    let (nll, elbo) = (
        v["iw_nll"].as_f64().unwrap(),
        v["test_elbo"].as_f64().unwrap(),
    );
    assert!(
        nll > 0.0 && -nll > elbo - 5.0,
        "IW NLL {nll} vs ELBO {elbo}"
    );

    let out = vae(&[
        "eval",
        "--run",
        r,
        "--data",
        d,
        "--iw-samples",
        "10",
        "--images",
        "4",
        "--device",
        "cpu",
    ]);
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("test NLL") && stdout.contains("k = 10"),
        "{stdout}"
    );

    // Resume to a third epoch.
    let out = vae(&["train", "--data", d, "--resume", r, "--epochs", "3"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");
}

#[test]
fn the_pixel_head_trains_samples_and_evaluates_from_the_cli() {
    let (data, _runs, run, _) = train_tiny(&["--pixel-head", "4", "--pixel-head-layers", "2"]);
    let (d, r) = (data.path().to_str().unwrap(), run.to_str().unwrap());
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("[model.pixel_head]"), "{config}");
    assert!(
        config.contains("channels = 4") && config.contains("layers = 2"),
        "{config}"
    );
    // Samples are drawn pixel by pixel; the grid is the same size as without the head.
    let (w, h, px) = read_png(&run.join("samples.png"));
    assert_eq!((w, h), (82, 82));
    assert!(px.iter().any(|&p| p > 100), "samples are not all dark");
    let out = vae(&[
        "eval",
        "--run",
        r,
        "--data",
        d,
        "--iw-samples",
        "20",
        "--images",
        "8",
        "--json",
        "--device",
        "cpu",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let (nll, elbo) = (
        v["iw_nll"].as_f64().unwrap(),
        v["test_elbo"].as_f64().unwrap(),
    );
    assert!(
        nll > 0.0 && -nll > elbo - 5.0,
        "IW NLL {nll} vs ELBO {elbo}"
    );
}

/// `--untimed-steps` (for `cargo xtask bench`): warm-up steps first, then `--max-steps` timed
/// ones, whose rate is printed as JSON; timed steps that would cross an epoch's end are refused.
#[test]
fn untimed_warm_up_steps_are_left_out_of_the_printed_timing() {
    let data = tempfile::tempdir().unwrap();
    // 80 training images after validation, batch 16: 5 steps per epoch.
    synthetic_mnist(data.path(), 96, 24, 8);
    let runs = tempfile::tempdir().unwrap();
    let d = data.path().to_str().unwrap();
    let train = |name: &str, untimed: &str, timed: &str| {
        let run = runs.path().join(name);
        let mut args = vec!["train", "--data", d, "--out", run.to_str().unwrap()];
        args.extend_from_slice(TINY);
        args.extend_from_slice(&["--untimed-steps", untimed, "--max-steps", timed]);
        vae(&args)
    };

    let out = train("a", "2", "2");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("stopped at step 4 (step limit)"),
        "{stderr}"
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["timed_steps"], 2);
    let (seconds, rate) = (
        v["seconds"].as_f64().unwrap(),
        v["train_images_per_s"].as_f64().unwrap(),
    );
    assert!(seconds > 0.0, "{v}");
    assert!(
        (rate * seconds - 32.0).abs() < 1e-6,
        "2 steps of 16 images: {v}"
    );

    let out = train("b", "2", "3");
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("must end before the first epoch does"),
        "{stderr}"
    );
}

/// `--profile` (for `cargo xtask bench --breakdown`) writes libtorch's operators of the timed
/// steps, and only theirs, as a Chrome trace.
#[test]
fn the_profile_holds_the_timed_steps_operators() {
    let data = tempfile::tempdir().unwrap();
    synthetic_mnist(data.path(), 96, 24, 8);
    let runs = tempfile::tempdir().unwrap();
    let trace = runs.path().join("trace.json");
    let run = runs.path().join("run");
    let mut args = vec![
        "train",
        "--data",
        data.path().to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
    ];
    args.extend_from_slice(TINY);
    args.extend_from_slice(&["--untimed-steps", "1", "--max-steps", "3"]);
    args.extend_from_slice(&["--profile", trace.to_str().unwrap()]);
    let out = vae(&args);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let trace: serde_json::Value = serde_json::from_slice(&std::fs::read(&trace).unwrap()).unwrap();
    let count = |name: &str| {
        trace["traceEvents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["name"] == name && e["cat"] == "cpu_op")
            .count()
    };
    // The Bernoulli loss runs once a step: 3 timed steps, not the warm-up one.
    assert_eq!(count("aten::binary_cross_entropy_with_logits"), 3);
    // Backward is recorded too: the same convolutions' gradients every step.
    let backward = count("aten::convolution_backward");
    assert!(backward > 0 && backward % 3 == 0, "{backward}");

    // Without --untimed-steps there are no timed steps to record.
    let out = vae(&["train", "--profile", "x.json", "--max-steps", "1"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("--untimed-steps"), "{stderr}");
}

/// `vae eval` keeps each image's importance-weighted bound beside the checkpoint: a second
/// run reads them back (the same estimate, nothing computed), one whose record was cut short
/// computes only the rest, and `--fresh` starts over.
#[test]
fn an_evaluation_resumes_from_its_record() {
    let (data, _runs, run, _) = train_tiny(&[]);
    let (d, r) = (data.path().to_str().unwrap(), run.to_str().unwrap());
    let eval = |extra: &[&str]| {
        let mut args = vec!["--iw-samples", "600", "--images", "8"];
        args.extend_from_slice(extra);
        eval_json(r, d, &args)
    };
    let first = eval(&[]);
    let record = run.join("best.safetensors.iw-k600-seed123-n8.csv");
    assert_eq!(first["iw_record"], record.to_str().unwrap());
    assert_eq!(first["iw_resumed_images"], 0);
    let text = std::fs::read_to_string(&record).unwrap();
    assert_eq!(text.lines().count(), 2 + 8, "{text}");

    let again = eval(&[]);
    assert_eq!(again["iw_resumed_images"], 8);
    assert_eq!(again["iw_log_likelihood"], first["iw_log_likelihood"]);
    assert_eq!(again["iw_image_samples_per_s"], serde_json::Value::Null);

    // As if stopped after 5 images (k = 600: one image per batch on the CPU).
    let kept: Vec<&str> = text.lines().take(2 + 5).collect();
    std::fs::write(&record, kept.join("\n") + "\n").unwrap();
    let resumed = eval(&[]);
    assert_eq!(resumed["iw_resumed_images"], 5);
    assert_eq!(resumed["iw_log_likelihood"], first["iw_log_likelihood"]);
    assert_eq!(std::fs::read_to_string(&record).unwrap(), text);

    let fresh = eval(&["--fresh"]);
    assert_eq!(fresh["iw_resumed_images"], 0);
    assert_eq!(fresh["iw_log_likelihood"], first["iw_log_likelihood"]);
    // The model's reference pass is a check of the computation: it reads no record.
    let reference = eval(&["--iw-reference"]);
    assert_eq!(reference["iw_resumed_images"], 0);
    assert_eq!(reference["iw_record"], serde_json::Value::Null);
}
