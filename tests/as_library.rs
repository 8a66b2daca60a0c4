//! Users import single crates: a tiny separate workspace, made here, depends on `vae-data`,
//! `vae-model` and `vae-train` by path, and does what a library user does: trains a run with
//! the CLI's defaults (one epoch, on a small synthetic set), resumes it, evaluates it (ELBO and
//! the IW bound), samples a tensor and reloads the checkpoint.

mod common;

#[test]
fn a_separate_workspace_trains_resumes_evaluates_and_reloads_a_run() {
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
vae-train = {{ path = "{}" }}
tch = "=0.24.0"
ndarray = "0.17"

[profile.dev.package."*"]
opt-level = 3

[workspace]
"#,
            path_of("vae-data"),
            path_of("vae-model"),
            path_of("vae-train")
        ),
    )
    .unwrap();
    std::fs::create_dir(p.join("src")).unwrap();
    std::fs::write(
        p.join("src/main.rs"),
        r#"
use ndarray::{Array1, Array3};
use vae_data::{IdxArray, ImageDataset, Split, write_idx};
use vae_model::Vae;
use vae_train::{Checkpoint, Device, Outcome, RunConfig, Trainer, evaluate_elbo, evaluate_iw, files, images_tensor};

fn write_set(dir: &std::path::Path, prefix: &str, n: usize) {
    // 12x12 images of a bar each: vertical at column k % 12 or horizontal at row k % 12.
    let images = Array3::from_shape_fn((n, 12, 12), |(k, i, j)| {
        if (k % 2 == 0 && j == k / 2 % 12) || (k % 2 == 1 && i == k / 2 % 12) { 255u8 } else { 0 }
    });
    let labels = Array1::from_iter((0..n).map(|k| (k % 10) as u8));
    write_idx(dir.join(format!("{prefix}-images-idx3-ubyte.gz")), &IdxArray::U8(images.into_dyn()), true).unwrap();
    write_idx(dir.join(format!("{prefix}-labels-idx1-ubyte.gz")), &IdxArray::U8(labels.into_dyn()), true).unwrap();
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).unwrap());
    write_set(&dir, "train", 200);
    write_set(&dir, "t10k", 24);

    // The CLI's default run, overridden to one small epoch on the CPU.
    let data = ImageDataset::load(&dir, Split::Train)?;
    let mut run = RunConfig::default();
    run.train.epochs = 1;
    run.train.batch_size = 32;
    run.train.validation_size = Some(40);
    run.train.device = Device::Cpu;
    let run_dir = dir.join("run");
    let mut trainer = Trainer::start(&run_dir, &data, run)?;
    assert_eq!(trainer.run()?, Outcome::Completed);
    println!("trained {} epoch, {} steps", trainer.state().history.len(), trainer.state().step);
    drop(trainer);

    // Resumed for a second epoch.
    let mut trainer = Trainer::resume(&run_dir, &data, |c| c.epochs = 2)?;
    assert_eq!(trainer.run()?, Outcome::Completed);
    println!("resumed to {} epochs, {} steps", trainer.state().history.len(), trainer.state().step);

    // Evaluated: the ELBO and the importance-weighted bound.
    let test = ImageDataset::load(&dir, Split::Test)?;
    let x = images_tensor(&test, tch::Device::Cpu);
    let elbo = evaluate_elbo(trainer.model(), &x, true, 1)?;
    let iw = evaluate_iw(trainer.model(), &x, 64, true, 1, &mut |_, _| {})?;
    println!("elbo {:.3} iw {:.3}", elbo.elbo, iw.log_likelihood);

    // Samples as a tensor, no picture.
    let samples = tch::no_grad(|| trainer.model().sample(4, 1.0))?;
    println!("samples {:?}", samples.size());

    // The checkpoint reloads into the same function.
    let loaded = Checkpoint::load(run_dir.join(files::LAST))?.into_model(tch::Device::Cpu)?;
    let z = tch::Tensor::randn([3, loaded.model.latent_dim()], (tch::Kind::Float, tch::Device::Cpu));
    let diff = (loaded.model.decode(&z)? - trainer.model().decode(&z)?).abs().max().double_value(&[]);
    println!("reloaded {} model, decode difference {diff}", loaded.model.config().kind());
    Ok(())
}
"#,
    )
    .unwrap();
    let out = common::cargo_run_apart(p, &[p.as_os_str()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("trained 1 epoch, 5 steps"), "{stdout}");
    assert!(stdout.contains("resumed to 2 epochs, 10 steps"), "{stdout}");
    let figures: Vec<f64> = stdout
        .lines()
        .find(|l| l.starts_with("elbo "))
        .unwrap()
        .split(' ')
        .filter_map(|w| w.parse().ok())
        .collect();
    let (elbo, iw) = (figures[0], figures[1]);
    // 144 pixels: the bound is finite and negative, and 64 importance samples tighten it.
    assert!(elbo < 0.0 && iw.is_finite() && iw > elbo - 1.0, "{stdout}");
    assert!(stdout.contains("samples [4, 1, 12, 12]"), "{stdout}");
    assert!(
        stdout.contains("reloaded conv model, decode difference 0\n"),
        "{stdout}"
    );
}
