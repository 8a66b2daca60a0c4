//! The hierarchical VAE through every command: `vae train --preset ladder` (made tiny by a
//! `--config` file), resume, eval with the KL of each group, sample at two temperatures,
//! reconstruct, interpolate, latents, export.

mod common;

use common::*;
use std::path::{Path, PathBuf};

/// A two-resolution ladder for 8×8 images: groups at 4×4 and 2×2 under a 3-dimensional top.
const TINY_LADDER: &str = r#"
[model]
kind = "ladder"
channels = [4, 4]
group_channels = [1, 2]
top_dim = 3
cells = [0, 1]

[train]
kl_warmup_steps = 5
kl_balance = true
"#;

/// A synthetic data set of `train` and `test` 8×8 images in `tmp/folder`, [`TINY_LADDER`] in
/// `tmp/tiny.toml`, and the run directory `tmp/run` (not made): (data, run, config).
fn tiny_ladder(tmp: &Path, folder: &str, train: usize, test: usize) -> [PathBuf; 3] {
    let data = tmp.join(folder);
    std::fs::create_dir_all(&data).unwrap();
    synthetic_mnist(&data, train, test, 8);
    let config = tmp.join("tiny.toml");
    std::fs::write(&config, TINY_LADDER).unwrap();
    [data, tmp.join("run"), config]
}

#[test]
fn a_ladder_vae_trains_resumes_evaluates_and_explores() {
    let tmp = tempfile::tempdir().unwrap();
    let [data, run, config] = tiny_ladder(tmp.path(), "bars", 96, 32);
    let [d, r, c] = [&data, &run, &config].map(|p| p.to_str().unwrap());

    let mut args = train_args(d, r, "1", &QUICK);
    args.extend([
        "--preset",
        "ladder",
        "--config",
        c,
        "--validation-size",
        "16",
    ]);
    let out = vae(&args);
    assert!(out.status.success(), "{:?}", text(&out));
    let saved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(saved.contains("kind = \"ladder\""), "{saved}");
    assert!(saved.contains("kl_balance = true"), "{saved}");
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let header = csv.lines().next().unwrap();
    assert!(
        header.ends_with("val_kl_group1,val_kl_group2,val_kl_group3"),
        "one KL column per group: {header}"
    );

    // A conv-only flag says which kind the run has.
    let other = format!("{r}-flag");
    let mut args = train_args(d, &other, "1", &QUICK);
    args.extend(["--preset", "ladder", "--latent-dim", "4"]);
    let out = vae(&args);
    assert!(!out.status.success());
    let (_, err) = text(&out);
    assert!(
        err.contains("--latent-dim sets the conv VAE") && err.contains("ladder"),
        "{err}"
    );

    // Resumed for two more epochs, the last an IWAE fine-tune.
    let out = vae(&[
        "train",
        "--resume",
        r,
        "--data",
        d,
        "--epochs",
        "3",
        "--iwae-epochs",
        "1",
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4, "{csv}");
    assert!(lines[0].ends_with(",val_kl_group3,val_iw"), "{csv}");
    assert!(lines[2].ends_with(',') && !lines[3].ends_with(','), "{csv}");

    let out = vae(&[
        "eval",
        "--run",
        r,
        "--data",
        d,
        "--iw-samples",
        "20",
        "--json",
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let groups = v["test_kl_groups"].as_array().unwrap();
    assert_eq!(groups.len(), 3, "{v}");
    let sum: f64 = groups.iter().map(|g| g.as_f64().unwrap()).sum();
    assert!((sum - v["test_kl"].as_f64().unwrap()).abs() < 1e-3, "{v}");
    assert!(v["iw_nll"].as_f64().unwrap() > 0.0);
    let out = vae(&["eval", "--run", r, "--data", d, "--iw-samples", "0"]);
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("KL per latent group, top first: top "),
        "{stdout}"
    );

    for (t, name) in [("1.0", "s1.png"), ("0.7", "s07.png")] {
        let png = tmp.path().join(name);
        let out = vae(&[
            "sample",
            "--run",
            r,
            "-n",
            "4",
            "--temperature",
            t,
            "--out",
            png.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{:?}", text(&out));
        assert!(read_png(&png).0 > 8);
    }
    let png = tmp.path().join("recon.png");
    let out = vae(&[
        "reconstruct",
        "--run",
        r,
        "--data",
        d,
        "--out",
        png.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
    let png = tmp.path().join("interp.png");
    let out = vae(&[
        "interpolate",
        "--run",
        r,
        "--data",
        d,
        "--from",
        "0",
        "--to",
        "1",
        "--out",
        png.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
    let npy = tmp.path().join("z.npy");
    let png = tmp.path().join("latents.png");
    let out = vae(&[
        "latents",
        "--run",
        r,
        "--data",
        d,
        "--npy",
        npy.to_str().unwrap(),
        "--out",
        png.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("3 latent dims"),
        "the top group's latents: {stdout}"
    );

    let export = tmp.path().join("export");
    let out = vae(&["export", "--run", r, "--out", export.to_str().unwrap()]);
    assert!(out.status.success(), "{:?}", text(&out));
    let (stdout, _) = text(&out);
    // The ladder exports as a PyTorch module too (checked against ours in tests/export.rs).
    assert!(
        stdout.contains("a PyTorch module of this ladder model"),
        "{stdout}"
    );
    let bytes = std::fs::read(export.join("model.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let config = &meta.metadata().as_ref().unwrap()["config"];
    assert!(config.contains("\"kind\":\"ladder\""), "{config}");
    assert!(export.join("model.py").exists());
}

#[test]
fn the_8bit_ladder_keeps_its_logistic_likelihood_and_its_bound_holds_one_image_at_a_time() {
    // A folder named mnist means the Bernoulli to `vae train`, unless the preset names the
    // likelihood itself, as ladder-8bit does.
    let tmp = tempfile::tempdir().unwrap();
    let [data, run, config] = tiny_ladder(tmp.path(), "mnist", 64, 8);
    let [d, r, c] = [&data, &run, &config].map(|p| p.to_str().unwrap());
    let mut args = train_args(d, r, "1", &QUICK);
    args.extend(["--preset", "ladder-8bit", "--config", c]);
    let out = vae(&args);
    assert!(out.status.success(), "{:?}", text(&out));
    let (_, err) = text(&out);
    assert!(!err.contains("likelihood:"), "the preset's own: {err}");
    let saved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(saved.contains("kind = \"logistic\""), "{saved}");
    assert!(saved.contains("grad_clip = 2000.0"), "{saved}");

    // At 600 samples the evaluation takes one image at a time (1,024 rows on the CPU): its
    // bound is the IW bound of that image, not of a broadcast over the likelihood's channels.
    let out = vae(&[
        "eval",
        "--run",
        r,
        "--data",
        d,
        "--iw-samples",
        "600",
        "--json",
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["likelihood"], "logistic");
    let (iw, elbo) = (
        v["iw_nll"].as_f64().unwrap(),
        -v["test_elbo"].as_f64().unwrap(),
    );
    assert!(
        iw > 0.0 && iw < elbo * 1.05,
        "IW {iw} against -ELBO {elbo}: {v}"
    );
}

/// Trains a long `preset` for `epochs` on tiny "mnist" data in `tmp` and checks that its
/// saved `config.toml` names the default pixel head and each of `keys`: for each epoch,
/// whether it was scored on the validation IWAE bound, and the tiny model's config file.
fn train_long_preset(
    tmp: &Path,
    preset: &str,
    epochs: &str,
    keys: [&str; 2],
) -> (Vec<bool>, PathBuf) {
    let [data, run, config] = tiny_ladder(tmp, "mnist", 64, 8);
    let [d, r, c] = [&data, &run, &config].map(|p| p.to_str().unwrap());
    let mut args = train_args(d, r, epochs, &QUICK);
    args.extend(["--preset", preset, "--config", c]);
    let out = vae(&args);
    assert!(out.status.success(), "{:?}", text(&out));
    let saved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    for key in ["[model.pixel_head]", "channels = 16"]
        .into_iter()
        .chain(keys)
    {
        assert!(saved.contains(key), "{key} missing: {saved}");
    }
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let rows: Vec<&str> = metrics.lines().collect();
    assert!(rows[0].ends_with(",val_iw"), "{metrics}");
    let on_the_bound = rows[1..].iter().map(|r| !r.ends_with(',')).collect();
    (on_the_bound, config)
}

#[test]
fn the_long_ladder_has_a_pixel_head_and_ends_with_iwae_epochs() {
    let tmp = tempfile::tempdir().unwrap();
    // Three epochs: one on the ELBO, then the preset's two on the IWAE bound.
    let keys = ["kind = \"bernoulli\"", "iwae_epochs = 2"];
    let (on_the_bound, _) = train_long_preset(tmp.path(), "ladder-long", "3", keys);
    assert_eq!(on_the_bound, [false, true, true]);
}

#[test]
fn the_long_8bit_ladder_has_a_pixel_head_and_refuses_colour_in_one_sentence() {
    let tmp = tempfile::tempdir().unwrap();
    // Its last epoch is the IWAE fine-tune, scored on the validation IWAE bound.
    let keys = ["kind = \"logistic\"", "iwae_epochs = 1"];
    let (on_the_bound, config) = train_long_preset(tmp.path(), "ladder-8bit-long", "2", keys);
    assert_eq!(on_the_bound, [false, true]);

    // The head orders the pixels of one plane: colour data gets an error before training.
    let colour = tmp.path().join("colour");
    std::fs::create_dir(&colour).unwrap();
    synthetic_colour(&colour, 64, 8, 8);
    let run = tmp.path().join("colour-run");
    let mut args = train_args(colour.to_str().unwrap(), run.to_str().unwrap(), "1", &QUICK);
    args.extend([
        "--preset",
        "ladder-8bit-long",
        "--config",
        config.to_str().unwrap(),
    ]);
    let out = vae(&args);
    assert!(!out.status.success());
    let (_, err) = text(&out);
    assert!(err.contains("one-channel images only"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// `vae eval --iw-precision`: on a CPU with AMX-BF16 the default (`auto`) evaluation of a
/// binary ladder takes its top-down convolutions' products in bf16, and keeps a record of its
/// own, so an f32 record is never started over by it; `fp32` is IEEE f32 throughout, as the
/// reference pass, which takes no precision. Elsewhere `auto` is f32 and shares the record.
#[test]
fn an_evaluation_with_bf16_products_keeps_a_record_of_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let [data, run, config] = tiny_ladder(tmp.path(), "bars", 48, 6);
    let [d, r, c] = [&data, &run, &config].map(|p| p.to_str().unwrap());
    let mut args = train_args(d, r, "1", &QUICK);
    args.extend(["--preset", "ladder", "--config", c]);
    let out = vae(&args);
    assert!(out.status.success(), "{:?}", text(&out));
    let info = vae(&["info", "--json"]);
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let amx = info["cpu"]["flags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "amx_bf16");

    let eval = |extra: &[&str]| {
        let mut args = vec!["--iw-samples", "64"];
        args.extend_from_slice(extra);
        eval_json(r, d, &args)
    };
    let f32_record = run.join("best.safetensors.iw-k64-seed123-n6.csv");
    let exact = eval(&["--iw-precision", "fp32"]);
    assert_eq!(exact["iw_bf16_products"], false);
    assert_eq!(exact["iw_record"], f32_record.to_str().unwrap());
    let f32_text = std::fs::read_to_string(&f32_record).unwrap();

    let auto = eval(&[]);
    assert_eq!(auto["iw_bf16_products"], amx, "{auto}");
    let (a, e) = (
        auto["iw_nll"].as_f64().unwrap(),
        exact["iw_nll"].as_f64().unwrap(),
    );
    if amx {
        let record = run.join("best.safetensors.iw-k64-seed123-n6-bf16.csv");
        assert_eq!(auto["iw_record"], record.to_str().unwrap());
        assert_eq!(auto["iw_resumed_images"], 0);
        let head = std::fs::read_to_string(&record).unwrap();
        assert!(
            head.lines()
                .next()
                .unwrap()
                .ends_with("; conv products bf16"),
            "{head}"
        );
        // bf16 rounding of the products moves the bound a little.
        assert!((a - e).abs() < 1e-2 * e.abs(), "{a} against {e}");
    } else {
        // The same arithmetic: the f32 record is read back whole.
        assert_eq!(auto["iw_resumed_images"], 6, "{auto}");
        assert_eq!(a, e);
    }
    assert_eq!(std::fs::read_to_string(&f32_record).unwrap(), f32_text);

    let out = vae(&[
        "eval",
        "--run",
        r,
        "--data",
        d,
        "--iw-reference",
        "--iw-precision",
        "fp32",
    ]);
    assert!(!out.status.success());
    let (_, err) = text(&out);
    assert!(err.contains("--iw-precision"), "{err}");
}
