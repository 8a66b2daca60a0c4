//! Users import single crates: a tiny separate workspace, made here, depends on `vae-data`
//! and `vae-model` by path, builds and runs.

mod common;

use std::process::Command;

#[test]
fn a_separate_workspace_uses_vae_data_and_vae_model() {
    let root = common::root();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let path_of = |c: &str| root.join("crates").join(c).display().to_string();
    std::fs::write(
        p.join("Cargo.toml"),
        format!(
            r#"[package]
name = "uses-vae"
version = "0.1.0"
edition = "2024"

[dependencies]
vae-data = {{ path = "{}" }}
vae-model = {{ path = "{}" }}
tch = "=0.24.0"
ndarray = "0.17"

[profile.dev.package."*"]
opt-level = 3

[workspace]
"#,
            path_of("vae-data"),
            path_of("vae-model")
        ),
    )
    .unwrap();
    std::fs::create_dir(p.join("src")).unwrap();
    std::fs::write(
        p.join("src/main.rs"),
        r#"
use ndarray::{Array1, Array3};
use vae_data::{IdxArray, MnistDataset, Split, write_idx};
use vae_model::{ConvVae, ConvVaeConfig};

fn main() {
    let dir = std::env::args().nth(1).unwrap();
    let dir = std::path::Path::new(&dir);
    let images = Array3::<u8>::from_elem((3, 28, 28), 7);
    write_idx(dir.join("t10k-images-idx3-ubyte.gz"), &IdxArray::U8(images.into_dyn()), true).unwrap();
    write_idx(dir.join("t10k-labels-idx1-ubyte.gz"), &IdxArray::U8(Array1::from(vec![1u8, 2, 3]).into_dyn()), true).unwrap();
    let test = MnistDataset::load(dir, Split::Test).unwrap();
    println!("loaded {} images of {:?}", test.len(), test.image_size());

    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let vae = ConvVae::new(&vs.root(), &ConvVaeConfig::default()).unwrap();
    let z = tch::Tensor::zeros([1, 32], (tch::Kind::Float, tch::Device::Cpu));
    println!("decoded {:?}", vae.decode(&z).unwrap().size());
}
"#,
    )
    .unwrap();
    // Same versions as the workspace, no network needed.
    std::fs::copy(root.join("Cargo.lock"), p.join("Cargo.lock")).unwrap();
    let libtorch = root
        .join(".libtorch")
        .canonicalize()
        .expect("run `cargo xtask download` first");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["run", "--quiet", "--offline", "--"])
        .arg(p)
        .current_dir(p)
        .env("CARGO_TARGET_DIR", root.join("target/as-library"))
        .env("LIBTORCH", &libtorch)
        .env("LD_LIBRARY_PATH", libtorch.join("lib"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("loaded 3 images of (28, 28)"), "{stdout}");
    assert!(stdout.contains("decoded [1, 1, 28, 28]"), "{stdout}");
}
