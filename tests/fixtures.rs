//! Checkpoints written by an earlier version of vae-rs still load and compute what they did.
//!
//! `tests/fixtures/checkpoints/<name>/` holds a small run of each model kind, prior and
//! likelihood, stopped mid-epoch (`last.safetensors`, `config.toml`), and `figures.json`: the
//! figures measured on the committed images (`tests/fixtures/images`, 64 training and 32 test
//! images from MNIST) when it was written. The test reloads each one and asks for the same
//! figures: the test ELBO and IW bound at a fixed seed, and the loss of the step that resuming
//! the run takes next.
//!
//! `cargo test --test fixtures -- --ignored write_fixtures` writes them again from the MNIST
//! mirror in `../shared/data/mnist` (only when the format changes on purpose: the committed
//! figures are what holds a refactor to the old behaviour).

mod common;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vae_data::{ImageDataset, Split};
use vae_model::{ConvVaeConfig, LadderVaeConfig, Likelihood, ModelConfig, PixelHead, Prior};
use vae_train::{Checkpoint, Device, RunConfig, Trainer, evaluate_elbo, evaluate_iw, files};

/// What a fixture recorded when it was written.
#[derive(Debug, Serialize, Deserialize)]
struct Figures {
    /// The model kind, as its checkpoint names it.
    kind: String,
    /// Steps in the checkpoint.
    step: u64,
    /// `evaluate_elbo` over the committed test images at seed [`SEED`].
    test_elbo: f64,
    /// `evaluate_iw` with [`IW_SAMPLES`] samples over the same images at seed [`SEED`].
    test_iw: f64,
    /// The mean −ELBO of the batch of the step a resumed run takes next.
    resumed_step_loss: f64,
}

const SEED: u64 = 11;
const IW_SAMPLES: i64 = 16;
/// Steps the fixtures are trained for: two epochs of three steps and one more, so the
/// checkpoint stops inside an epoch.
const STEPS: u64 = 7;

fn fixtures() -> PathBuf {
    common::root().join("tests/fixtures")
}

/// The fixtures' models: each kind, prior and likelihood, small enough to commit.
fn models() -> Vec<(&'static str, ModelConfig)> {
    let conv = ConvVaeConfig {
        channels: vec![4, 8],
        latent_dim: 4,
        ..ConvVaeConfig::default()
    };
    let ladder = LadderVaeConfig {
        channels: vec![4, 8],
        group_channels: vec![1, 2],
        top_dim: 4,
        ..LadderVaeConfig::default()
    };
    vec![
        (
            "conv-bernoulli-pixel-head",
            ConvVaeConfig {
                res_blocks: 1,
                pixel_head: Some(PixelHead {
                    channels: 4,
                    layers: 2,
                }),
                ..conv.clone()
            }
            .into(),
        ),
        (
            "conv-vamp-logistic",
            ConvVaeConfig {
                hidden_dim: Some(16),
                prior: Prior::Vamp { components: 3 },
                likelihood: Likelihood::Logistic { components: 2 },
                ..conv.clone()
            }
            .into(),
        ),
        (
            "conv-tied-continuous-bernoulli",
            ConvVaeConfig {
                tie_weights: true,
                likelihood: Likelihood::ContinuousBernoulli,
                ..conv
            }
            .into(),
        ),
        (
            "ladder-vamp-bernoulli",
            LadderVaeConfig {
                top_prior: Prior::Vamp { components: 3 },
                ..ladder.clone()
            }
            .into(),
        ),
        (
            "ladder-logistic",
            LadderVaeConfig {
                likelihood: Likelihood::Logistic { components: 2 },
                cells: vec![2, 1],
                ..ladder
            }
            .into(),
        ),
    ]
}

fn run_config(model: ModelConfig) -> RunConfig {
    let mut run = RunConfig {
        model,
        ..RunConfig::default()
    };
    run.train.batch_size = 16;
    run.train.validation_size = Some(16);
    run.train.epochs = 3;
    run.train.seed = 5;
    run.train.threads = Some(1);
    run.train.device = Device::Cpu;
    run.train.max_steps = Some(STEPS);
    run
}

/// The test figures of the checkpoint in `dir`.
fn test_figures(dir: &Path, test: &ImageDataset) -> (String, u64, f64, f64) {
    let checkpoint = Checkpoint::load(dir.join(files::LAST)).unwrap();
    let binarize = checkpoint
        .train_config
        .binarizes(checkpoint.model_config.likelihood());
    let step = checkpoint.state.step;
    let loaded = checkpoint.into_model(tch::Device::Cpu).unwrap();
    let x = vae_train::images_tensor(test, tch::Device::Cpu);
    let elbo = evaluate_elbo(loaded.model.as_ref(), &x, binarize, SEED).unwrap();
    let iw = evaluate_iw(
        loaded.model.as_ref(),
        &x,
        IW_SAMPLES,
        binarize,
        SEED,
        &mut |_, _| {},
    )
    .unwrap();
    (
        loaded.model.config().kind().to_string(),
        step,
        elbo.elbo,
        iw.log_likelihood,
    )
}

/// Resumes the run in `dir` (changed in place) for one step; the mean −ELBO of that step's
/// batch, from the epoch sums the checkpoint keeps.
fn resumed_step_loss(dir: &Path, train: &ImageDataset) -> f64 {
    let before = Checkpoint::load(dir.join(files::LAST)).unwrap().state;
    let mut trainer = Trainer::resume(dir, train, |c| c.max_steps = Some(before.step + 1)).unwrap();
    trainer.run().unwrap();
    drop(trainer);
    let after = Checkpoint::load(dir.join(files::LAST)).unwrap().state;
    assert_eq!(after.step, before.step + 1);
    let (a, b) = (&after.partial, &before.partial);
    (a.reconstruction + a.kl - b.reconstruction - b.kl) / (a.examples - b.examples) as f64
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for name in [files::LAST, "config.toml"] {
        std::fs::copy(from.join(name), to.join(name)).unwrap();
    }
}

#[test]
fn every_fixture_checkpoint_gives_its_recorded_figures() {
    let images = fixtures().join("images");
    let train = ImageDataset::load(&images, Split::Train).unwrap();
    let test = ImageDataset::load(&images, Split::Test).unwrap();
    let mut checked = Vec::new();
    for (name, _) in models() {
        let dir = fixtures().join("checkpoints").join(name);
        let recorded: Figures =
            serde_json::from_slice(&std::fs::read(dir.join("figures.json")).unwrap()).unwrap();
        let (kind, step, elbo, iw) = test_figures(&dir, &test);
        assert_eq!(
            (kind.as_str(), step),
            (recorded.kind.as_str(), recorded.step)
        );
        let tmp = tempfile::tempdir().unwrap();
        copy_dir(&dir, tmp.path());
        let loss = resumed_step_loss(tmp.path(), &train);
        for (what, now, then) in [
            ("test ELBO", elbo, recorded.test_elbo),
            ("test IW bound", iw, recorded.test_iw),
            ("resumed step's loss", loss, recorded.resumed_step_loss),
        ] {
            assert!(
                (now - then).abs() <= 1e-5 * then.abs().max(1.0),
                "{name}: the {what} is {now}, but {then} was recorded"
            );
        }
        checked.push(name);
    }
    assert_eq!(checked.len(), 5);
}

/// Writes the fixtures again (`--ignored`); see the module's comment.
#[test]
#[ignore = "writes the committed fixtures"]
fn write_fixtures() {
    let mnist = common::root().join("../shared/data/mnist");
    let images = fixtures().join("images");
    std::fs::create_dir_all(&images).unwrap();
    for (split, n, prefix) in [(Split::Train, 64, "train"), (Split::Test, 32, "t10k")] {
        let all = ImageDataset::load(&mnist, split).unwrap();
        let some = all.select(&(0..n).collect::<Vec<_>>());
        let pixels = some.images().index_axis(ndarray::Axis(3), 0).to_owned();
        let labels = some.labels().unwrap().clone();
        vae_data::write_idx(
            images.join(format!("{prefix}-images-idx3-ubyte.gz")),
            &vae_data::IdxArray::U8(pixels.into_dyn()),
            true,
        )
        .unwrap();
        vae_data::write_idx(
            images.join(format!("{prefix}-labels-idx1-ubyte.gz")),
            &vae_data::IdxArray::U8(labels.into_dyn()),
            true,
        )
        .unwrap();
    }
    let train = ImageDataset::load(&images, Split::Train).unwrap();
    let test = ImageDataset::load(&images, Split::Test).unwrap();
    for (name, model) in models() {
        let dir = fixtures().join("checkpoints").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("run");
        let mut trainer = Trainer::start(&run, &train, run_config(model)).unwrap();
        trainer.run().unwrap();
        drop(trainer);
        copy_dir(&run, &dir);
        let (kind, step, test_elbo, test_iw) = test_figures(&dir, &test);
        let resumed_step_loss = resumed_step_loss(&run, &train);
        let figures = Figures {
            kind,
            step,
            test_elbo,
            test_iw,
            resumed_step_loss,
        };
        std::fs::write(
            dir.join("figures.json"),
            serde_json::to_string_pretty(&figures).unwrap() + "\n",
        )
        .unwrap();
    }
}
