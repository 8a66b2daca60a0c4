//! A table of bad inputs across the CLI and the libraries: each one is a specific, clear
//! error and a non-zero exit, never a panic.

mod common;

use std::io::Write;
use std::path::Path;

use common::*;

struct Case {
    what: &'static str,
    args: Vec<String>,
    needle: &'static str,
}

fn case(what: &'static str, args: &[&str], needle: &'static str) -> Case {
    Case {
        what,
        args: args.iter().map(|s| s.to_string()).collect(),
        needle,
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn every_bad_input_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let good = t.join("good");
    std::fs::create_dir(&good).unwrap();
    synthetic_mnist(&good, 64, 16, 8);
    let big = t.join("big");
    std::fs::create_dir(&big).unwrap();
    synthetic_mnist(&big, 32, 8, 12);
    let images = "train-images-idx3-ubyte.gz";

    // Damaged copies of the good data.
    let variant = |name: &str, f: &dyn Fn(&Path)| {
        let d = t.join(name);
        copy_dir(&good, &d);
        f(&d);
        d.display().to_string()
    };
    let empty_file = variant("empty-file", &|d| {
        std::fs::write(d.join(images), b"").unwrap()
    });
    let truncated = variant("truncated", &|d| {
        let b = std::fs::read(d.join(images)).unwrap();
        std::fs::write(d.join(images), &b[..b.len() / 2]).unwrap();
    });
    let garbage = variant("garbage", &|d| {
        std::fs::write(d.join(images), b"PK\x03\x04 this is a zip, not IDX").unwrap()
    });
    let swapped = variant("swapped", &|d| {
        std::fs::copy(d.join("train-labels-idx1-ubyte.gz"), d.join(images)).unwrap();
    });
    let mismatched = variant("mismatched", &|d| {
        let labels = vae_data::IdxArray::U8(ndarray::Array1::<u8>::zeros(10).into_dyn());
        vae_data::write_idx(d.join("train-labels-idx1-ubyte.gz"), &labels, true).unwrap();
    });
    let empty_dir = t.join("empty");
    std::fs::create_dir(&empty_dir).unwrap();

    // A trained run to point other commands at.
    let run = t.join("run");
    let out = vae(&[
        "train",
        "--data",
        good.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--epochs",
        "1",
        "--latent-dim",
        "2",
        "--channels",
        "4",
        "--batch-size",
        "16",
        "--validation-size",
        "16",
        "--device",
        "cpu",
        "--threads",
        "1",
    ]);
    assert!(out.status.success(), "{}", text(&out).1);
    let corrupt = t.join("corrupt.safetensors");
    let bytes = std::fs::read(run.join("best.safetensors")).unwrap();
    std::fs::write(&corrupt, &bytes[..bytes.len() - 100]).unwrap();
    let a_file = t.join("a-file");
    std::fs::write(&a_file, b"x").unwrap();
    let bad_toml = t.join("bad.toml");
    std::fs::write(&bad_toml, "[model]\nlatnt_dim = 3\n").unwrap();
    let broken_toml = t.join("broken.toml");
    std::fs::write(&broken_toml, "[train\nepochs = ").unwrap();
    let betas_toml = t.join("betas.toml");
    std::fs::write(&betas_toml, "[train]\nbetas = [1.5, 0.999]\n").unwrap();

    let g = good.to_str().unwrap();
    let r = run.to_str().unwrap();
    let o = t.join("out").display().to_string();
    let o = o.as_str();
    let model_file = t.join("model.safetensors").display().to_string();
    let v16 = "16";
    let train = |extra: &[&str]| -> Vec<String> {
        let mut a = vec!["train", "--data", g, "--out", o, "--validation-size", v16];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect()
    };
    let mut cases = vec![
        case(
            "missing data folder",
            &["train", "--data", "/nonexistent/mnist"],
            "cargo xtask download",
        ),
        case(
            "empty data folder",
            &["train", "--data", empty_dir.to_str().unwrap()],
            "no train images file",
        ),
        case(
            "empty image file",
            &["train", "--data", &empty_file],
            "truncated header",
        ),
        case(
            "truncated gzip file",
            &["train", "--data", &truncated],
            "gzip stream is corrupt",
        ),
        case(
            "garbage image file",
            &["train", "--data", &garbage],
            "not an IDX file",
        ),
        case(
            "labels where images belong",
            &["train", "--data", &swapped],
            "expected u8 images of rank 3",
        ),
        case(
            "image and label counts differ",
            &["train", "--data", &mismatched],
            "holds 64 images but",
        ),
        case(
            "more validation than data",
            &["train", "--data", g, "--out", o, "--validation-size", "100"],
            "cannot hold out 100 validation images from a training set of 64: set validation_size (--validation-size)",
        ),
        case(
            "epochs -1",
            &["train", "--data", g, "--epochs", "-1"],
            "invalid value '-1'",
        ),
        case(
            "unknown flag",
            &["train", "--data", g, "--epoch", "3"],
            "unexpected argument",
        ),
        case(
            "eval of a missing run",
            &["eval", "--run", "/nonexistent/run", "--data", g],
            "run directory made by `vae train`",
        ),
        case(
            "eval of a corrupt checkpoint",
            &["eval", "--run", corrupt.to_str().unwrap(), "--data", g],
            "damaged or truncated",
        ),
        case(
            "eval with a bogus checkpoint name",
            &["eval", "--run", r, "--data", g, "--checkpoint", "newest"],
            "[possible values: best, last]",
        ),
        case(
            "eval on images of another size",
            &["eval", "--run", r, "--data", big.to_str().unwrap()],
            "trained on 8x8",
        ),
        case(
            "eval with negative k",
            &["eval", "--run", r, "--data", g, "--iw-samples", "-5"],
            "at least 0",
        ),
        case(
            "eval with zero images",
            &["eval", "--run", r, "--data", g, "--images", "0"],
            "--images must be at least 1",
        ),
        case(
            "resume of a folder without a run",
            &[
                "train",
                "--data",
                g,
                "--resume",
                empty_dir.to_str().unwrap(),
            ],
            "last.safetensors",
        ),
        case(
            "resume on data of another size",
            &[
                "train",
                "--data",
                big.to_str().unwrap(),
                "--resume",
                r,
                "--epochs",
                "2",
            ],
            "the model expects 8x8",
        ),
        case(
            "output over an existing run",
            &["train", "--data", g, "--out", r, "--validation-size", "16"],
            "already holds a run",
        ),
        case(
            "unwritable output directory",
            &[
                "train",
                "--data",
                g,
                "--out",
                &format!("{}/sub", a_file.display()),
                "--validation-size",
                "16",
            ],
            "Not a directory",
        ),
        case(
            "sample -n 0",
            &["sample", "--run", r, "-n", "0"],
            "-n must be at least 1",
        ),
        case(
            "sample at temperature 0",
            &["sample", "--run", r, "--temperature", "0"],
            "--temperature must be a positive number",
        ),
        case(
            "interpolate with one step",
            &[
                "interpolate",
                "--run",
                r,
                "--data",
                g,
                "--from",
                "0",
                "--to",
                "1",
                "--steps",
                "1",
            ],
            "--steps must be at least 2",
        ),
        case(
            "interpolate past the test set",
            &[
                "interpolate",
                "--run",
                r,
                "--data",
                g,
                "--from",
                "0",
                "--to",
                "16",
            ],
            "out of range",
        ),
        case(
            "reference names for another architecture",
            &["export", "--run", r, "--reference-names", "--out", o],
            "--reference-names needs the reference architecture (that of --preset fast), but this model has 1x8x8 images",
        ),
        case(
            "a .safetensors file as the export folder",
            &["export", "--run", r, "--out", &model_file],
            "without --reference-names --out is the folder that receives model.safetensors and model.py",
        ),
        case(
            "sweep of size 0",
            &["sweep", "--latent-dims", "0,2", "--data", g],
            "positive sizes",
        ),
    ];
    for (what, extra, needle) in [
        (
            "batch 0",
            &["--batch-size", "0"][..],
            "batch size must be at least 1",
        ),
        (
            "batch larger than the data",
            &["--batch-size", "100"][..],
            "larger than the training set",
        ),
        (
            "latent 0",
            &["--latent-dim", "0"][..],
            "latent_dim must be at least 1",
        ),
        (
            "lr NaN",
            &["--lr", "NaN"][..],
            "learning rate must be a positive number",
        ),
        (
            "lr negative",
            &["--lr", "-0.1"][..],
            "learning rate must be a positive number",
        ),
        (
            "beta negative",
            &["--beta", "-1"][..],
            "beta must be a non-negative number",
        ),
        (
            "zero threads",
            &["--threads", "0"][..],
            "threads must be at least 1",
        ),
        ("unknown device", &["--device", "tpu"][..], "unknown device"),
        (
            "image too small for the convs",
            &["--channels", "2,2,2,2,2"][..],
            "divisible by 32",
        ),
        (
            "misspelt config key",
            &["--config", bad_toml.to_str().unwrap()][..],
            "unknown field",
        ),
        (
            "malformed config",
            &["--config", broken_toml.to_str().unwrap()][..],
            "invalid config",
        ),
        (
            "Adam betas out of range",
            &["--config", betas_toml.to_str().unwrap()][..],
            "betas must lie in [0, 1)",
        ),
        (
            "unknown prior",
            &["--prior", "flat"][..],
            "invalid value 'flat' for '--prior <PRIOR>'",
        ),
        (
            "pseudo-inputs without the VampPrior",
            &["--prior", "standard", "--pseudo-inputs", "10"][..],
            "needs --prior vamp",
        ),
        (
            "zero pseudo-inputs",
            &["--prior", "vamp", "--pseudo-inputs", "0"][..],
            "pseudo-inputs",
        ),
        (
            "free bits with the VampPrior",
            &["--prior", "vamp", "--free-bits", "0.5"][..],
            "cannot be combined with the VampPrior",
        ),
        (
            "unknown optimizer",
            &["--optimizer", "sgd"][..],
            "[possible values: adam, adamw, adamax]",
        ),
        (
            "weight decay without AdamW",
            &["--weight-decay", "0.1"][..],
            "use --optimizer adamw",
        ),
        (
            "EMA decay of 1",
            &["--ema-decay", "1"][..],
            "EMA decay must lie in [0, 1)",
        ),
        (
            "too many residual blocks",
            &["--res-blocks", "1000"][..],
            "res_blocks must be at most 64",
        ),
        (
            "pixel head layers without a pixel head",
            &["--pixel-head-layers", "2"][..],
            "needs --pixel-head",
        ),
        (
            "an oversized pixel head",
            &["--pixel-head", "100000"][..],
            "pixel head needs 1 to 4096 channels",
        ),
    ] {
        cases.push(Case {
            what,
            args: train(extra),
            needle,
        });
    }
    if !tch::Cuda::is_available() {
        cases.push(Case {
            what: "cuda without a GPU",
            args: train(&["--device", "cuda"]),
            needle: "CUDA",
        });
    }
    assert!(cases.len() >= 25);

    let mut failures = Vec::new();
    for c in &cases {
        let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
        let out = vae(&args);
        let stderr = text(&out).1;
        // The cause is said once: no OS error twice in a message.
        if out.status.success()
            || !stderr.contains(c.needle)
            || stderr.contains("panicked")
            || stderr.matches("(os error").count() > 1
        {
            failures.push(format!(
                "{}: exit {:?}, wanted {:?} in:\n{stderr}",
                c.what,
                out.status.code(),
                c.needle
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert!(
        !Path::new(&model_file).exists(),
        "a refused export made {model_file}"
    );
    println!("{} bad CLI inputs rejected cleanly", cases.len());
}

#[test]
fn libraries_reject_bad_input_with_typed_errors() {
    use vae_data::{DataError, IdxArray, ImageDataset};
    // Disk full: /dev/full refuses every write with ENOSPC.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let a = IdxArray::U8(ndarray::Array1::<u8>::zeros(100_000).into_dyn());
    let err = vae_data::write_idx_to(full, &a).unwrap_err();
    assert!(
        matches!(err, DataError::Io { .. }) && err.to_string().contains("No space left"),
        "{err}"
    );

    // Labels outside the classes a caller expects.
    let images = ndarray::Array3::<u8>::zeros((3, 4, 4));
    let ds = ImageDataset::from_arrays(images, ndarray::Array1::from(vec![1u8, 12, 3])).unwrap();
    let err = ds.check_labels(10).unwrap_err().to_string();
    assert!(
        err.contains("label 12") && err.contains("example 1") && err.contains("10 classes"),
        "{err}"
    );

    // A checkpoint of a different latent size.
    let dir = tempfile::tempdir().unwrap();
    synthetic_mnist(dir.path(), 48, 8, 8);
    let run = dir.path().join("r");
    let out = vae(&[
        "train",
        "--data",
        dir.path().to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--epochs",
        "1",
        "--latent-dim",
        "3",
        "--channels",
        "4",
        "--batch-size",
        "16",
        "--validation-size",
        "16",
        "--device",
        "cpu",
    ]);
    assert!(out.status.success());
    let mut vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let cfg = vae_model::ConvVaeConfig {
        input_height: 8,
        input_width: 8,
        latent_dim: 5,
        channels: vec![4],
        ..Default::default()
    };
    let _m = vae_model::ConvVae::new(&vs.root(), &cfg).unwrap();
    let ckpt = vae_train::Checkpoint::load(run.join("last.safetensors")).unwrap();
    let err = ckpt.restore_variables(&mut vs).unwrap_err().to_string();
    assert!(err.contains("another latent size"), "{err}");

    // A checkpoint that is not one.
    let fake = dir.path().join("fake.safetensors");
    std::fs::File::create(&fake)
        .unwrap()
        .write_all(&[0u8; 7])
        .unwrap();
    assert!(vae_train::Checkpoint::load(&fake).is_err());
}
