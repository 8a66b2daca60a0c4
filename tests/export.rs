//! `vae export` works for every model the toolkit trains: the generated PyTorch module
//! (`model.py`), run by the Python whose torch `cargo xtask download` set up, gives our decoder
//! outputs and our per-image ELBO (same inputs, same noise) for each preset and the options
//! that change the architecture.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use tch::{Device, Kind, Tensor};
use vae_data::{ImageDataset, Split};
use vae_train::{Checkpoint, images_tensor};

/// Moves every weight of the checkpoint at `path` by a fixed, varied amount (up to ±0.1), so
/// that no part of the model is near its initial value (the pixel head's output layer starts
/// at zero, and one epoch hardly moves it): each part then shows in the outputs compared.
fn perturb_checkpoint(path: &Path) {
    use safetensors::{Dtype, SafeTensors, tensor::TensorView};
    let bytes = std::fs::read(path).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut owned = Vec::new();
    for (name, view) in st.tensors() {
        let values: Vec<u8> = view
            .data()
            .chunks_exact(4)
            .enumerate()
            .flat_map(|(i, c)| {
                let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                (v + 0.1 * (i as f32 * 0.7 + name.len() as f32).sin()).to_le_bytes()
            })
            .collect();
        owned.push((name, view.shape().to_vec(), values));
    }
    let views: Vec<(String, TensorView<'_>)> = owned
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let out = safetensors::serialize(views, header.metadata().clone()).unwrap();
    std::fs::write(path, out).unwrap();
}

/// Our side on fixed inputs: decoder outputs at latents `z`, and the ELBO's terms of test
/// images at noise `eps`, written for the Python side to compare.
fn our_outputs(run: &Path, data: &Path, out: &Path) {
    let loaded = Checkpoint::load(run.join("best.safetensors"))
        .unwrap()
        .into_model(Device::Cpu)
        .unwrap();
    let model = loaded.model.as_ref();
    let test = ImageDataset::load(data, Split::Test).unwrap();
    let x = images_tensor(&test, Device::Cpu).to_kind(Kind::Float) / 255.0;
    // Binary images for the Bernoulli, the 256 levels for the others.
    let x = if model.likelihood().binarised_data() {
        x.round()
    } else {
        x
    };
    let n = x.size()[0];
    let d = model.latent_dim();
    let z = Tensor::linspace(-2.0, 2.0, 5 * d, (Kind::Float, Device::Cpu)).view([5, d]);
    // Every group's noise, for a hierarchical model.
    let e = model.noise_dim();
    let eps = Tensor::linspace(1.5, -1.5, n * e, (Kind::Float, Device::Cpu)).view([n, e]);
    let (decoded, terms) = tch::no_grad(|| {
        (
            model.decode(&z).unwrap(),
            model.elbo_with_noise(&x, &eps).unwrap(),
        )
    });
    Tensor::write_safetensors(
        &[
            ("x", x),
            ("z", z),
            ("eps", eps),
            ("decoded", decoded),
            ("elbo", terms.elbo()),
            ("reconstruction", terms.reconstruction),
            ("kl", terms.kl),
            ("kl_groups", Tensor::stack(&terms.kl_groups, 1)),
        ],
        out,
    )
    .unwrap();
}

const COMPARE: &str = r#"
import json, struct, sys, torch
sys.path.insert(0, sys.argv[1])
from model import Model, _read_safetensors
model = Model.from_safetensors(sys.argv[1] + "/model.safetensors")
ours = _read_safetensors(sys.argv[2])
with torch.no_grad():
    decoded = model.decode(ours["z"])
    terms = model.elbo(ours["x"], ours["eps"])
    elbo, rec, kl = terms[:3]
    # Each group's KL, for a hierarchical model; the one KL for the conv VAE.
    groups = torch.stack(terms[3], 1) if len(terms) > 3 else kl.unsqueeze(1)
    # The rest of the module runs too: the IW bound, samples, reconstructions.
    torch.manual_seed(0)
    iw = model.log_likelihood(ours["x"], k=8, chunk=3)
    pictures = [model.sample(2), model.reconstruct(ours["x"])]
images_ok = all(
    p.shape[1:] == ours["x"].shape[1:] and bool(torch.isfinite(p).all())
    and bool(((p >= 0) & (p <= 1)).all())
    for p in pictures
)
def rel(a, b):
    return ((a - b).abs() / b.abs().clamp_min(1.0)).max().item()
print(json.dumps({
    "decoded": rel(decoded, ours["decoded"]),
    "elbo": rel(elbo, ours["elbo"]),
    "reconstruction": rel(rec, ours["reconstruction"]),
    "kl": rel(kl, ours["kl"]),
    "kl_groups": rel(groups, ours["kl_groups"]),
    "elbo_mean": elbo.mean().item(),
    "iw_mean": iw.mean().item() if bool(torch.isfinite(iw).all()) else None,
    "images_ok": images_ok,
}))
"#;

#[test]
fn the_exported_module_matches_ours_for_every_preset_and_option() {
    let grey = tempfile::tempdir().unwrap();
    synthetic_mnist(grey.path(), 64, 12, 8);
    let colour = tempfile::tempdir().unwrap();
    synthetic_colour(colour.path(), 64, 12, 8);
    let runs = tempfile::tempdir().unwrap();
    let tied = runs.path().join("tied.toml");
    std::fs::write(&tied, "[model]\ntie_weights = true\n").unwrap();
    let ladder = runs.path().join("ladder.toml");
    std::fs::write(
        &ladder,
        "[model]\nkind = \"ladder\"\nchannels = [8, 16]\ngroup_channels = [2, 3]\ntop_dim = 6\ncells = [2, 1]\n",
    )
    .unwrap();
    let ladder_cfg = ladder.to_str().unwrap();
    let standard_top = runs.path().join("ladder-standard.toml");
    let base = std::fs::read_to_string(&ladder).unwrap();
    std::fs::write(
        &standard_top,
        base + "top_prior = { kind = \"standard\" }\ngroups = [2, 3]\n",
    )
    .unwrap();
    let standard_top = standard_top.to_str().unwrap();
    let variants: [(&str, Vec<&str>); 12] = [
        ("fast", vec!["--preset", "fast"]),
        ("default", vec![]),
        ("best", vec!["--preset", "best"]),
        (
            "pixel-head",
            vec!["--pixel-head", "8", "--pixel-head-layers", "2"],
        ),
        (
            "hidden-tied",
            vec![
                "--preset",
                "fast",
                "--hidden-dim",
                "24",
                "--config",
                tied.to_str().unwrap(),
            ],
        ),
        (
            "logistic",
            vec!["--likelihood", "logistic", "--logistic-components", "3"],
        ),
        (
            "continuous-bernoulli",
            vec!["--likelihood", "continuous-bernoulli"],
        ),
        ("colour", vec!["--preset", "best"]),
        // The ladder: with its preset's VampPrior top, with a standard top, several groups at
        // each resolution and the logistic likelihood, and on colour images.
        ("ladder", vec!["--preset", "ladder", "--config", ladder_cfg]),
        (
            "ladder-logistic",
            vec![
                "--preset",
                "ladder",
                "--config",
                standard_top,
                "--likelihood",
                "logistic:2",
            ],
        ),
        (
            "ladder-colour",
            vec!["--preset", "ladder", "--config", ladder_cfg],
        ),
        // The ladder with a pixel head over a logistic mixture's parameters.
        (
            "ladder-logistic-pixel-head",
            vec![
                "--preset",
                "ladder",
                "--config",
                ladder_cfg,
                "--likelihood",
                "logistic:2",
                "--pixel-head",
                "4",
                "--pixel-head-layers",
                "2",
            ],
        ),
    ];
    for (name, extra) in variants {
        let data = if name.ends_with("colour") {
            &colour
        } else {
            &grey
        };
        let run = runs.path().join(name);
        let args = train_args(
            data.path().to_str().unwrap(),
            run.to_str().unwrap(),
            "1",
            &[&QUICK[..], &extra[..]].concat(),
        );
        let out = vae(&args);
        assert!(out.status.success(), "{name}: {}", text(&out).1);
        let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
        assert_eq!(
            config.contains("[model.pixel_head]"),
            name.ends_with("pixel-head"),
            "{name}: {config}"
        );
        perturb_checkpoint(&run.join("best.safetensors"));
        let out = vae(&["export", "--run", run.to_str().unwrap()]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{name}: {stderr}");
        let export = run.join("export");
        assert!(stdout.contains("model.py"), "{stdout}");

        let ours = run.join("ours.safetensors");
        our_outputs(&run, data.path(), &ours);
        let out = Command::new(torch_python())
            .arg("-c")
            .arg(COMPARE)
            .arg(&export)
            .arg(&ours)
            .env("PYTHONWARNINGS", "ignore")
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{name}: {stdout}\n{stderr}");
        let line = stdout.lines().last().unwrap();
        eprintln!("{name}: {line}");
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for key in ["decoded", "elbo", "reconstruction", "kl", "kl_groups"] {
            let diff = v[key].as_f64().unwrap();
            assert!(
                diff < 1e-4,
                "{name}: {key} differs by {diff} (relative to max(1, |ours|)): {line}"
            );
        }
        // A density (the continuous Bernoulli's) can exceed 1, so only finiteness is general.
        assert!(
            v["elbo_mean"].as_f64().unwrap().is_finite(),
            "{name}: {line}"
        );
        assert!(
            v["iw_mean"].is_f64(),
            "{name}: a non-finite IW bound: {line}"
        );
        assert_eq!(
            v["images_ok"], true,
            "{name}: samples or reconstructions of the wrong shape or outside [0, 1]: {line}"
        );
        if name == "ladder" {
            ladder_peer_runs(&export, data.path());
        }
    }
}

/// `xtask/ladder_peer.py`, the ladder's peer in `cargo xtask bench --model ladder`, trains and
/// evaluates the exported module and prints the JSON line the bench reads; its training steps'
/// profile (`cargo xtask bench --breakdown`) is a Chrome trace of their operators.
fn ladder_peer_runs(export: &Path, data: &Path) {
    let script = root().join("xtask/ladder_peer.py");
    let trace = export.join("peer.trace.json");
    let trace_arg = trace.to_str().unwrap();
    for (task, args, key) in [
        (
            "train",
            vec!["--steps", "2", "--batch", "8", "--profile", trace_arg],
            "train_images_per_s",
        ),
        (
            "eval",
            vec!["--k", "6", "--images", "3"],
            "image_samples_per_s",
        ),
    ] {
        let out = Command::new(torch_python())
            .arg(&script)
            .arg(task)
            .arg("--export")
            .arg(export)
            .arg("--data")
            .arg(data)
            .args(["--threads", "1"])
            .args(args)
            .env("PYTHONWARNINGS", "ignore")
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert!(
            out.status.success(),
            "ladder_peer.py {task}: {stdout}\n{stderr}"
        );
        let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        assert!(v[key].as_f64().unwrap() > 0.0, "{task}: {v}");
        if task == "train" {
            let t: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&trace).unwrap()).unwrap();
            let backward = t["traceEvents"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["name"] == "aten::convolution_backward")
                .count();
            assert!(backward > 0 && backward % 2 == 0, "2 steps: {backward}");
        }
        if task == "eval" {
            let ll = v["log_likelihood"].as_f64().unwrap();
            assert!(
                ll.is_finite() && ll < 0.0,
                "a log-likelihood of binary images: {v}"
            );
        }
    }
}
