//! Trains a model kind that vae-rs does not define — the MLP VAE of `mlp.rs` — through
//! `vae-train`, with the library's public API only: registers the kind, trains one epoch on
//! the first images of a data set, resumes for a second, evaluates the ELBO and the IW bound
//! on the test split, and reloads the checkpoint.
//!
//! `cargo run --release -- <data folder> <run folder> [images]`, e.g. with the MNIST folder
//! that `cargo xtask download` fills: `cargo run --release -- ../../data/mnist runs/mlp 2000`.

mod mlp;

use std::path::PathBuf;

use vae_data::{ImageDataset, Split};
use vae_model::register_kind;
use vae_train::{
    Checkpoint, Device, Outcome, RunConfig, Trainer, evaluate_elbo, evaluate_iw, files,
    images_tensor,
};

use mlp::MlpVaeConfig;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(data_dir), Some(run_dir)) = (args.next(), args.next()) else {
        return Err("usage: mlp-vae <data folder> <run folder> [images]".into());
    };
    let (data_dir, run_dir) = (PathBuf::from(data_dir), PathBuf::from(run_dir));
    let images: usize = args.next().map_or(Ok(2000), |n| n.parse())?;

    // Checkpoints and config files name the kind "mlp": this program knows how to read it.
    register_kind::<MlpVaeConfig>()?;

    let all = ImageDataset::load(&data_dir, Split::Train)?;
    let data = all.select(&(0..images.min(all.len())).collect::<Vec<_>>());
    let mut run = RunConfig {
        model: MlpVaeConfig::default().into(),
        ..RunConfig::default()
    };
    run.train.epochs = 1;
    run.train.batch_size = 32;
    run.train.validation_size = Some(data.len() / 5);
    run.train.device = Device::Cpu;
    let mut trainer = Trainer::start(&run_dir, &data, run)?;
    assert_eq!(trainer.run()?, Outcome::Completed);
    println!(
        "trained the {} model {} epoch, {} steps",
        trainer.model_config().kind(),
        trainer.state().history.len(),
        trainer.state().step
    );
    drop(trainer);

    let mut trainer = Trainer::resume(&run_dir, &data, |c| c.epochs = 2)?;
    assert_eq!(trainer.run()?, Outcome::Completed);
    let history = &trainer.state().history;
    println!(
        "resumed to {} epochs, {} steps; validation ELBO {:.2} then {:.2}",
        history.len(),
        trainer.state().step,
        history[0].val_elbo,
        history[1].val_elbo
    );

    let test = ImageDataset::load(&data_dir, Split::Test)?;
    let x = images_tensor(&test, tch::Device::Cpu);
    let elbo = evaluate_elbo(trainer.model(), &x, true, 1)?;
    let iw = evaluate_iw(trainer.model(), &x, 64, true, 1, &mut |_, _| {})?;
    println!(
        "test ELBO {:.3}, IW bound (k = 64) {:.3}, over {} images",
        elbo.elbo,
        iw.log_likelihood,
        test.len()
    );

    let loaded = Checkpoint::load(run_dir.join(files::LAST))?.into_model(tch::Device::Cpu)?;
    let z = tch::Tensor::randn(
        [3, loaded.model.latent_dim()],
        (tch::Kind::Float, tch::Device::Cpu),
    );
    let diff = (loaded.model.decode(&z)? - trainer.model().decode(&z)?)
        .abs()
        .max()
        .double_value(&[]);
    let samples = tch::no_grad(|| loaded.model.sample(4, 1.0))?;
    println!(
        "reloaded the {} model, decode difference {diff}, samples {:?}",
        loaded.model.config().kind(),
        samples.size()
    );
    Ok(())
}
