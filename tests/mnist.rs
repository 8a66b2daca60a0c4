//! The real MNIST files fetched by `cargo xtask download` (into data/mnist).

mod common;

use std::io::Read;

use sha2::{Digest, Sha256};
use vae_data::{ImageDataset, Split};

fn mnist_dir() -> std::path::PathBuf {
    let dir = common::root().join("data/mnist");
    assert!(
        dir.join("train-images-idx3-ubyte.gz").is_file(),
        "{} has no MNIST: run `cargo xtask download` first",
        dir.display()
    );
    dir
}

#[test]
fn files_match_the_published_checksums() {
    let want = [
        (
            "train-images-idx3-ubyte.gz",
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        ),
        (
            "train-labels-idx1-ubyte.gz",
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        ),
        (
            "t10k-images-idx3-ubyte.gz",
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        ),
        (
            "t10k-labels-idx1-ubyte.gz",
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        ),
    ];
    let dir = mnist_dir();
    for (name, sha) in want {
        let mut bytes = Vec::new();
        flate2::read::MultiGzDecoder::new(std::fs::File::open(dir.join(name)).unwrap())
            .read_to_end(&mut bytes)
            .unwrap();
        let hex: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, sha, "{name}");
    }
}

#[test]
fn labels_and_counts_are_mnists() {
    let dir = mnist_dir();
    let train = ImageDataset::load(&dir, Split::Train).unwrap();
    let test = ImageDataset::load(&dir, Split::Test).unwrap();
    assert_eq!((train.len(), train.image_size()), (60_000, (28, 28)));
    assert_eq!(test.len(), 10_000);
    assert_eq!(
        train
            .labels()
            .unwrap()
            .iter()
            .take(10)
            .copied()
            .collect::<Vec<_>>(),
        [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    );
    assert_eq!(
        train.class_counts(),
        [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    );
    assert_eq!(
        test.class_counts(),
        [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    );
    let (t, v) = train.split_validation(10_000).unwrap();
    assert_eq!((t.len(), v.len()), (50_000, 10_000));
}

#[test]
fn the_default_model_learns_digits_in_two_hundred_steps() {
    use vae_train::{Device, Outcome, RunConfig, TrainConfig, Trainer};
    let dir = mnist_dir();
    let full = ImageDataset::load(&dir, Split::Train).unwrap();
    let subset = full.select(&(0..26_600).collect::<Vec<_>>());
    let run = tempfile::tempdir().unwrap();
    let cfg = RunConfig {
        model: vae_model::ConvVaeConfig::default().into(),
        train: TrainConfig {
            epochs: 1,
            device: Device::Cpu,
            validation_size: Some(1_000),
            ..TrainConfig::default()
        },
    };
    let mut t = Trainer::start(run.path(), &subset, cfg).unwrap();
    assert_eq!(t.run().unwrap(), Outcome::Completed);
    let val_elbo = t.state().history[0].val_elbo;
    // A fresh model scores about -545 nats; 200 default steps (mostly warm-up) reach
    // well above -200.
    assert!(
        val_elbo > -200.0,
        "validation ELBO after 200 steps: {val_elbo}"
    );
}
