//! What users do with a trained model: every `vae` subcommand on a fresh run directory.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn train(data: &Path, run: &Path, extra: &[&str]) {
    let mut args = vec![
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
    ];
    args.extend_from_slice(&[
        "--batch-size",
        "16",
        "--validation-size",
        "16",
        "--device",
        "cpu",
        "--threads",
        "1",
    ]);
    args.extend_from_slice(extra);
    let out = vae(&args);
    assert!(out.status.success(), "{}", text(&out).1);
}

fn ok(args: &[&str]) -> String {
    let out = vae(args);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{args:?}\n{stdout}\n{stderr}");
    stdout
}

#[test]
fn picture_commands_write_images_of_the_right_size() {
    let data = tempfile::tempdir().unwrap();
    synthetic_mnist(data.path(), 96, 24, 8);
    let runs = tempfile::tempdir().unwrap();
    let run = runs.path().join("r");
    train(
        data.path(),
        &run,
        &["--epochs", "2", "--latent-dim", "2", "--channels", "4,8"],
    );
    let (d, r) = (data.path().to_str().unwrap(), run.to_str().unwrap());

    // The default VampPrior's 100 pseudo-inputs, 10 to a row: 10-pixel cells plus 2.
    assert_eq!(read_png(&run.join("pseudo_inputs.png")).0, 102);

    // Training drew its curves: three panels.
    let (w, h, color, _) = read_any_png(&run.join("curves.png"));
    assert_eq!((w, h, color), (1020, 260, png::ColorType::Rgb));

    // 8x8 images with 2-pixel borders: a cell is 10 pixels, plus 2. With --draw, images
    // drawn from the Bernoulli: binary.
    ok(&["sample", "--run", r, "--seed", "3", "--draw"]);
    assert_eq!(read_png(&run.join("sample.png")).0, 82);
    let px = read_png(&run.join("sample.png")).2;
    assert!(
        px.iter().all(|&p| p == 0 || p == 255 || p == 40),
        "binary samples on the border colour"
    );
    // Without it, the likelihood's means.
    let mean = runs.path().join("mean.png");
    ok(&[
        "sample",
        "--run",
        r,
        "-n",
        "10",
        "--out",
        mean.to_str().unwrap(),
    ]);
    let (w, h, px) = read_png(&mean);
    assert_eq!((w, h), (82, 22));
    assert!(
        px.iter().any(|&p| p != 0 && p != 255 && p != 40),
        "means are grey levels"
    );

    ok(&["reconstruct", "--run", r, "--data", d, "-n", "8"]);
    assert_eq!(read_png(&run.join("reconstruct.png")).0, 82);
    assert_eq!(read_png(&run.join("reconstruct.png")).1, 22);

    ok(&[
        "interpolate",
        "--run",
        r,
        "--data",
        d,
        "--from",
        "0",
        "--to",
        "3",
        "--steps",
        "5",
    ]);
    assert_eq!(read_png(&run.join("interpolate-0-3.png")).0, 72);
    ok(&[
        "interpolate",
        "--run",
        r,
        "--data",
        d,
        "--from",
        "1",
        "--to",
        "2",
        "--steps",
        "4",
        "--slerp",
    ]);
    assert_eq!(read_png(&run.join("interpolate-1-2.png")).0, 62);

    // A 2-D latent: the manifold over the prior's quantiles.
    let stdout = ok(&["manifold", "--run", r, "--grid", "5"]);
    assert!(stdout.contains("quantiles"), "{stdout}");
    assert_eq!(read_png(&run.join("manifold.png")).0, 52);

    let npy = runs.path().join("mu.npy");
    let plot = runs.path().join("latents.png");
    ok(&[
        "latents",
        "--run",
        r,
        "--data",
        d,
        "--npy",
        npy.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ]);
    let csv = std::fs::read_to_string(run.join("latents.csv")).unwrap();
    assert_eq!(
        csv.lines().next().unwrap(),
        "index,label,mu_0,mu_1,logvar_0,logvar_1"
    );
    assert_eq!(csv.lines().count(), 25);
    let bytes = std::fs::read(&npy).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + hlen]).unwrap();
    assert!(
        header.contains("'shape': (24, 2)") && header.contains("'<f4'"),
        "{header}"
    );
    assert_eq!((10 + hlen) % 64, 0);
    assert_eq!(bytes.len(), 10 + hlen + 24 * 2 * 4);
    let first_mu: f32 = csv
        .lines()
        .nth(1)
        .unwrap()
        .split(',')
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    let from_npy = f32::from_le_bytes(bytes[10 + hlen..14 + hlen].try_into().unwrap());
    assert!((first_mu - from_npy).abs() < 1e-5);
    assert_eq!(read_any_png(&plot).2, png::ColorType::Rgb);

    // Errors are sentences.
    let out = vae(&[
        "interpolate",
        "--run",
        r,
        "--data",
        d,
        "--from",
        "0",
        "--to",
        "999",
    ]);
    assert!(
        !out.status.success() && text(&out).1.contains("out of range"),
        "{}",
        text(&out).1
    );
    let out = vae(&[
        "sample",
        "--run",
        runs.path().join("nope").to_str().unwrap(),
    ]);
    assert!(!out.status.success() && text(&out).1.contains("run directory made by `vae train`"));
}

#[test]
fn larger_latents_get_traversals() {
    let data = tempfile::tempdir().unwrap();
    synthetic_mnist(data.path(), 64, 8, 8);
    let runs = tempfile::tempdir().unwrap();
    let run = runs.path().join("r");
    train(
        data.path(),
        &run,
        &["--epochs", "1", "--latent-dim", "6", "--channels", "4"],
    );
    let stdout = ok(&[
        "manifold",
        "--run",
        run.to_str().unwrap(),
        "--data",
        data.path().to_str().unwrap(),
        "--grid",
        "7",
        "--dims",
        "4",
    ]);
    assert!(stdout.contains("dimensions 0..4"), "{stdout}");
    let (w, h, _) = read_png(&run.join("manifold.png"));
    assert_eq!((w, h), (72, 42));
}

#[test]
fn sweep_compares_latent_sizes_with_and_without_tied_weights() {
    let data = tempfile::tempdir().unwrap();
    synthetic_mnist(data.path(), 64, 16, 8);
    let out = tempfile::tempdir().unwrap();
    let stdout = ok(&[
        "sweep",
        "--latent-dims",
        "1,3",
        "--epochs",
        "1",
        "--tie-weights",
        "--data",
        data.path().to_str().unwrap(),
        "--out",
        out.path().to_str().unwrap(),
        "--iw-samples",
        "5",
        "--iw-images",
        "8",
        "--batch-size",
        "16",
        "--validation-size",
        "16",
        "--device",
        "cpu",
        "--threads",
        "1",
    ]);
    let md = std::fs::read_to_string(out.path().join("sweep.md")).unwrap();
    assert_eq!(md.lines().count(), 6, "{md}");
    assert!(stdout.contains("| 3 | yes |"), "{stdout}");
    let csv = std::fs::read_to_string(out.path().join("sweep.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    // Tied models have fewer parameters than untied ones of the same size.
    let params = |d: &str, tied: &str| -> i64 {
        rows.iter().find(|r| r[0] == d && r[1] == tied).unwrap()[2]
            .parse()
            .unwrap()
    };
    assert!(params("3", "true") < params("3", "false"));
    for r in &rows {
        let active: i64 = r[6].parse().unwrap();
        let d: i64 = r[0].parse().unwrap();
        assert!((0..=d).contains(&active));
        assert!(r[4].parse::<f64>().unwrap() > 0.0, "NLL is positive");
    }
}

#[test]
fn exported_weights_load_into_the_pytorch_reference_module() {
    let data = tempfile::tempdir().unwrap();
    synthetic_mnist(data.path(), 48, 8, 28);
    let runs = tempfile::tempdir().unwrap();
    let run = runs.path().join("r");
    // The PyTorch module is the reference model: the fast preset's (standard prior).
    train(data.path(), &run, &["--preset", "fast", "--epochs", "1"]);
    let exported = runs.path().join("model.safetensors");
    ok(&[
        "export",
        "--run",
        run.to_str().unwrap(),
        "--reference-names",
        "--out",
        exported.to_str().unwrap(),
    ]);

    // Our decoder on fixed latents.
    let ckpt = vae_train::Checkpoint::load(run.join("best.safetensors")).unwrap();
    let model = ckpt.into_model(tch::Device::Cpu).unwrap().model;
    let z = tch::Tensor::linspace(-2.0, 2.0, 4 * 32, (tch::Kind::Float, tch::Device::Cpu))
        .view([4, 32]);
    let logits = tch::no_grad(|| model.decode(&z)).unwrap();
    let ours = runs.path().join("ours.safetensors");
    tch::Tensor::write_safetensors(&[("z", z), ("logits", logits)], &ours).unwrap();

    let script = r#"
import json, struct, sys, torch
sys.path.insert(0, sys.argv[1])
from ref_pytorch_vae import VAE
def load(path):
    raw = open(path, 'rb').read()
    n = struct.unpack('<Q', raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    out = {}
    for k, v in header.items():
        if k == '__metadata__': continue
        a, b = v['data_offsets']
        out[k] = torch.frombuffer(bytearray(raw[8 + n + a:8 + n + b]), dtype=torch.float32).reshape(v['shape'])
    return out
model = VAE(32)
model.load_state_dict(load(sys.argv[2]))
ours = load(sys.argv[3])
with torch.no_grad():
    theirs = model.dec(torch.relu(model.fc(ours['z'])).view(-1, 64, 7, 7))
print((theirs - ours['logits']).abs().max().item())
"#;
    let out = Command::new(torch_python())
        .arg("-c")
        .arg(script)
        .arg(root().join("../shared/bench"))
        .arg(&exported)
        .arg(&ours)
        .env("PYTHONWARNINGS", "ignore")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let diff: f64 = stdout.trim().lines().last().unwrap().parse().unwrap();
    assert!(diff < 1e-5, "max abs difference {diff}");
}
