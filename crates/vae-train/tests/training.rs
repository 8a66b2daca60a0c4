//! Training flows on a tiny synthetic dataset (CPU, seconds).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ndarray::{Array1, Array3};
use tch::{Device, Kind, Tensor};
use vae_data::ImageDataset;
use vae_model::ConvVaeConfig;
use vae_train::*;

/// libtorch's random generator is global to the process: tests that train or sample take
/// this lock so parallel tests do not draw from each other's streams.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    RNG.lock().unwrap_or_else(|e| e.into_inner())
}

/// Images of bars: image k has a vertical bar at column k % 8 and a horizontal one at row k / 8 % 8.
fn bars(n: usize) -> ImageDataset {
    let images = Array3::from_shape_fn((n, 8, 8), |(k, i, j)| {
        if j == k % 8 || i == (k / 8) % 8 {
            255u8
        } else {
            0
        }
    });
    ImageDataset::from_arrays(images, Array1::from_iter((0..n).map(|k| (k % 10) as u8))).unwrap()
}

fn tiny_model() -> ConvVaeConfig {
    ConvVaeConfig {
        input_height: 8,
        input_width: 8,
        latent_dim: 4,
        channels: vec![8, 16],
        ..ConvVaeConfig::default()
    }
}

fn tiny_train(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 16,
        lr: 3e-3,
        // Constant: these runs are shorter than the default's warm-up.
        lr_schedule: LrSchedule::Constant,
        warmup_steps: 0,
        min_lr: 0.0,
        device: vae_train::Device::Cpu,
        threads: Some(1),
        validation_size: Some(16),
        seed: 7,
        // The same arithmetic on every machine (`auto` follows the CPU).
        precision: Precision::Fp32,
        ..TrainConfig::default()
    }
}

fn data() -> (ImageDataset, ImageDataset) {
    bars(144).split_validation(16).unwrap()
}

/// A new run on the 144 bars, the last 16 held out (`tiny_train`'s validation size), as
/// [`data`] splits them.
fn start(
    dir: &std::path::Path,
    model: impl Into<vae_model::ModelConfig>,
    train: TrainConfig,
) -> Result<Trainer> {
    Trainer::start(
        dir,
        &bars(144),
        RunConfig {
            model: model.into(),
            train,
        },
    )
}

fn weights(vs: &tch::nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<_> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn assert_same_weights(a: &tch::nn::VarStore, b: &tch::nn::VarStore) {
    for ((na, ta), (nb, tb)) in weights(a).iter().zip(weights(b).iter()) {
        assert_eq!(na, nb);
        let diff = (ta - tb).abs().max().double_value(&[]);
        assert_eq!(diff, 0.0, "{na} differs by {diff}");
    }
}

/// One epoch of `train` in `dir`, the trainer dropped, then the run resumed there for a
/// second: what an uninterrupted two-epoch run must equal.
fn one_epoch_then_resumed(dir: &std::path::Path, train: TrainConfig) -> Trainer {
    resumed_after_one_epoch(dir, tiny_model(), train, |c| c.epochs = 2)
}

/// One epoch of `model` under `train` in `dir`, the trainer dropped, then the run resumed
/// with its settings changed by `adjust` and trained to the end.
fn resumed_after_one_epoch(
    dir: &std::path::Path,
    model: impl Into<vae_model::ModelConfig>,
    train: TrainConfig,
    adjust: impl FnOnce(&mut TrainConfig),
) -> Trainer {
    let mut b = start(dir, model, TrainConfig { epochs: 1, ..train }).unwrap();
    b.run().unwrap();
    drop(b);
    let mut b = Trainer::resume(dir, &bars(144), adjust).unwrap();
    assert_eq!(b.run().unwrap(), Outcome::Completed);
    b
}

#[test]
fn a_tiny_model_learns_and_writes_its_run_directory() {
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        lr: 1e-2,
        ..tiny_train(40)
    };
    let mut t = start(dir.path(), tiny_model(), cfg).unwrap();
    assert_eq!(t.run().unwrap(), Outcome::Completed);
    let h = &t.state().history;
    assert_eq!(h.len(), 40);
    let (first, last) = (h[0].train_elbo, h[39].train_elbo);
    // 64 pixels: a random model sits near 64·ln2 ≈ 44 nats; 64 distinct bar images need
    // about ln 64 ≈ 4 nats plus the KL. The loss must fall below half its start.
    assert!(
        -last < -first / 2.0,
        "the loss should halve: {} -> {}",
        -first,
        -last
    );
    assert!(
        -h[39].val_elbo < 0.6 * -h[0].val_elbo,
        "validation falls too: {} -> {}",
        -h[0].val_elbo,
        -h[39].val_elbo
    );
    for f in [files::LAST, files::BEST, files::METRICS, files::CONFIG] {
        assert!(dir.path().join(f).is_file(), "{f} missing");
    }
    let csv = std::fs::read_to_string(dir.path().join(files::METRICS)).unwrap();
    assert_eq!(csv.lines().count(), 41);
    assert!(csv.starts_with("epoch,step,train_elbo"));
    let cfg: RunConfig =
        toml::from_str(&std::fs::read_to_string(dir.path().join(files::CONFIG)).unwrap()).unwrap();
    assert_eq!(cfg.model, tiny_model().into());
    // No temporary files after a clean finish.
    let stray: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}

#[test]
fn checkpoint_round_trip_gives_identical_outputs() {
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    let mut t = start(dir.path(), tiny_model(), tiny_train(2)).unwrap();
    t.run().unwrap();
    let ckpt = Checkpoint::load(dir.path().join(files::LAST)).unwrap();
    assert_eq!(ckpt.state.step, t.state().step);
    assert_eq!(ckpt.train_config, *t.config());
    let loaded = ckpt.into_model(Device::Cpu).unwrap();
    let model = loaded.model;
    assert_same_weights(&loaded.vars, t.var_store());
    let z = Tensor::randn([5, 4], (Kind::Float, Device::Cpu));
    let a = t.model().decode(&z).unwrap();
    let b = model.decode(&z).unwrap();
    assert_eq!((a - b).abs().max().double_value(&[]), 0.0);
    // best.safetensors loads as a model too, but cannot be resumed (no optimiser state).
    assert!(
        Checkpoint::load(dir.path().join(files::BEST))
            .unwrap()
            .into_model(Device::Cpu)
            .is_ok()
    );
}

#[test]
fn two_epochs_equal_one_plus_resume_and_an_interrupted_run_resumes_exactly() {
    let _g = lock();
    let straight = tempfile::tempdir().unwrap();
    let mut a = start(straight.path(), tiny_model(), tiny_train(2)).unwrap();
    a.run().unwrap();

    let split = tempfile::tempdir().unwrap();
    let b = one_epoch_then_resumed(split.path(), tiny_train(1));
    assert_same_weights(a.var_store(), b.var_store());
    assert_eq!(a.state().history.len(), b.state().history.len());
    assert_eq!(a.state().history[1].val_elbo, b.state().history[1].val_elbo);

    // Interrupt in the middle of an epoch: a checkpoint is written; resuming ends identical.
    let cut = tempfile::tempdir().unwrap();
    let mut c = start(cut.path(), tiny_model(), tiny_train(2)).unwrap();
    let flag = Arc::new(AtomicBool::new(false));
    c.set_interrupt_flag(Arc::clone(&flag));
    flag.store(true, Ordering::SeqCst);
    assert_eq!(c.run().unwrap(), Outcome::Interrupted);
    let stopped_at = Checkpoint::load(cut.path().join(files::LAST))
        .unwrap()
        .state
        .step;
    assert_eq!(stopped_at, 1, "stops after the step in flight");
    drop(c);
    let mut c = Trainer::resume(cut.path(), &bars(144), |_| {}).unwrap();
    assert_eq!(c.run().unwrap(), Outcome::Completed);
    assert_same_weights(a.var_store(), c.var_store());
}

/// A two-resolution hierarchy on the 8×8 bars: groups at 4×4 and 2×2 under the top.
fn tiny_ladder() -> vae_model::LadderVaeConfig {
    vae_model::LadderVaeConfig {
        input_height: 8,
        input_width: 8,
        channels: vec![8, 8],
        group_channels: vec![2, 2],
        top_dim: 4,
        ..vae_model::LadderVaeConfig::default()
    }
}

#[test]
fn a_ladder_vae_trains_and_resumes_exactly() {
    let _g = lock();
    let train = || TrainConfig {
        kl_warmup_steps: 10,
        grad_clip: Some(100.0),
        ..tiny_train(2)
    };
    let straight = tempfile::tempdir().unwrap();
    let mut a = start(straight.path(), tiny_ladder(), train()).unwrap();
    a.run().unwrap();
    let h = &a.state().history;
    assert!(
        h[1].val_elbo.is_finite() && h[1].val_elbo > h[0].val_elbo,
        "{h:?}"
    );

    let cut = tempfile::tempdir().unwrap();
    let mut b = start(cut.path(), tiny_ladder(), train()).unwrap();
    let flag = Arc::new(AtomicBool::new(false));
    b.set_interrupt_flag(Arc::clone(&flag));
    flag.store(true, Ordering::SeqCst);
    assert_eq!(b.run().unwrap(), Outcome::Interrupted);
    drop(b);
    let mut b = Trainer::resume(cut.path(), &bars(144), |_| {}).unwrap();
    assert_eq!(b.run().unwrap(), Outcome::Completed);
    assert_same_weights(a.var_store(), b.var_store());
    let config = Checkpoint::load(cut.path().join(files::LAST))
        .unwrap()
        .model_config;
    assert_eq!(config.kind(), "ladder");
}

#[test]
fn step_limit_stops_and_checkpoints() {
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        max_steps: Some(3),
        ..tiny_train(5)
    };
    let mut t = start(dir.path(), tiny_model(), cfg).unwrap();
    assert_eq!(t.run().unwrap(), Outcome::StepLimit);
    assert_eq!(
        Checkpoint::load(dir.path().join(files::LAST))
            .unwrap()
            .state
            .step,
        3
    );
}

#[test]
fn divergence_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint() {
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    let mut t = start(dir.path(), tiny_model(), tiny_train(1)).unwrap();
    t.run().unwrap();
    let good = std::fs::read(dir.path().join(files::LAST)).unwrap();
    drop(t);
    // Poison the weights through a resumed run with an absurd learning rate.
    let ckpt = Checkpoint::load(dir.path().join(files::LAST)).unwrap();
    let mut cfg = ckpt.train_config.clone();
    cfg.lr = 1e30;
    cfg.epochs = 3;
    let fresh = tempfile::tempdir().unwrap();
    let mut t = start(fresh.path(), tiny_model(), cfg).unwrap();
    let err = t.run().unwrap_err();
    assert!(
        matches!(err, TrainError::NonFinite { epoch: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("epoch 1, step"), "{err}");
    assert!(
        !fresh.path().join(files::LAST).exists(),
        "nothing written from a diverged epoch"
    );
    assert_eq!(std::fs::read(dir.path().join(files::LAST)).unwrap(), good);
}

#[test]
fn damaged_checkpoints_and_mismatched_data_are_clear_errors() {
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    let mut t = start(dir.path(), tiny_model(), tiny_train(1)).unwrap();
    t.run().unwrap();
    let path = dir.path().join(files::LAST);
    let bytes = std::fs::read(&path).unwrap();

    let cut = dir.path().join("truncated.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = Checkpoint::load(&cut).unwrap_err().to_string();
    assert!(
        err.contains("truncated.safetensors") && err.contains("damaged or truncated"),
        "{err}"
    );

    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(
        &garbage,
        b"\xff\xff\xff\xff\xff\xff\xff\x7fnot a checkpoint",
    )
    .unwrap();
    assert!(Checkpoint::load(&garbage).is_err());

    // While its trainer lives, the directory is held; after, it is a run not to overwrite.
    let err = start(dir.path(), tiny_model(), tiny_train(1))
        .unwrap_err()
        .to_string();
    assert!(err.contains("in use by another vae process"), "{err}");
    drop(t);
    let err = start(dir.path(), tiny_model(), tiny_train(1))
        .unwrap_err()
        .to_string();
    assert!(err.contains("already holds a run"), "{err}");

    // A checkpoint of another latent size does not load into this model.
    let mut vs = tch::nn::VarStore::new(Device::Cpu);
    let other = ConvVaeConfig {
        latent_dim: 3,
        ..tiny_model()
    };
    let _m = vae_model::ConvVae::new(&vs.root(), &other).unwrap();
    let err = Checkpoint::load(&path)
        .unwrap()
        .restore_variables(&mut vs)
        .unwrap_err()
        .to_string();
    assert!(err.contains("another latent size"), "{err}");

    // A new run takes the data's image size; a run resumed on data of another size, or given
    // a test set of another size, is an error naming both.
    let big =
        ImageDataset::from_arrays(ndarray::Array3::zeros((40, 28, 28)), Array1::zeros(40)).unwrap();
    let err = Trainer::resume(dir.path(), &big, |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("28x28") && err.contains("8x8"), "{err}");
    let fresh = tempfile::tempdir().unwrap();
    let mut t = start(fresh.path(), ConvVaeConfig::default(), tiny_train(1)).unwrap();
    assert_eq!(
        t.model().image_shape(),
        [1, 8, 8],
        "the data's size, not the config's 28x28"
    );
    let err = t.set_test_set(&big).unwrap_err().to_string();
    assert!(err.contains("28x28") && err.contains("8x8"), "{err}");
}

#[test]
fn evaluation_is_reproducible_and_iw_beats_elbo() {
    let _g = lock();
    let (_, val) = data();
    let dir = tempfile::tempdir().unwrap();
    let mut t = start(dir.path(), tiny_model(), tiny_train(5)).unwrap();
    t.run().unwrap();
    let x = images_tensor(&val, Device::Cpu);
    let a = evaluate_elbo(t.model(), &x, true, 1).unwrap();
    let b = evaluate_elbo(t.model(), &x, true, 1).unwrap();
    assert_eq!(a, b);
    assert!((a.elbo + a.kl + a.reconstruction).abs() < 1e-9);
    let iw = evaluate_iw(t.model(), &x, 200, true, 1, &mut |_, _| {}).unwrap();
    assert_eq!((iw.k, iw.images), (200, 16));
    assert!(
        iw.log_likelihood > a.elbo,
        "IW {} should beat the ELBO {}",
        iw.log_likelihood,
        a.elbo
    );
    assert!(iw.std_error.is_finite() && iw.std_error > 0.0);
}

#[test]
fn bad_settings_are_rejected_before_training() {
    let _g = lock();
    for (cfg, needle) in [
        (
            TrainConfig {
                batch_size: 0,
                ..tiny_train(1)
            },
            "batch size",
        ),
        (
            TrainConfig {
                epochs: 0,
                ..tiny_train(1)
            },
            "epochs",
        ),
        (
            TrainConfig {
                lr: f64::NAN,
                ..tiny_train(1)
            },
            "learning rate",
        ),
        (
            TrainConfig {
                batch_size: 1000,
                ..tiny_train(1)
            },
            "larger than the training set",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let err = start(dir.path(), tiny_model(), cfg)
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{err} should mention {needle}");
    }
    // A device is a typed setting: an unknown one fails where it is parsed.
    let err = "tpu".parse::<vae_train::Device>().unwrap_err().to_string();
    assert!(err.contains("unknown device"), "{err}");
}

#[test]
fn cuda_requests_fail_clearly_without_a_gpu() {
    let _g = lock();
    if tch::Cuda::is_available() {
        return; // this machine has a GPU: the error cannot be provoked
    }
    let err = vae_train::Device::Cuda(0)
        .resolve()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no CUDA device is visible") || err.contains("without CUDA"),
        "{err}"
    );
    assert_eq!(vae_train::Device::Auto.resolve().unwrap(), Device::Cpu);
    assert_eq!(vae_train::Device::Cpu.resolve().unwrap(), Device::Cpu);
}

/// Where libtorch sees a GPU (CI has none: there this returns at once; run the compiled test
/// binary on a GPU machine to check it): the VampPrior + residual model trains on CUDA, in fp32
/// and bf16, with the multi-tensor Adam; its checkpoint loads on the CPU and decodes the same
/// logits; and the importance-weighted estimate agrees between the devices within its noise.
#[test]
fn on_a_gpu_training_works_and_agrees_with_the_cpu() {
    let _g = lock();
    if !tch::Cuda::is_available() {
        eprintln!("no CUDA device visible: nothing to check here");
        return;
    }
    let (_, val) = data();
    let model = ConvVaeConfig {
        prior: vae_model::Prior::Vamp { components: 6 },
        res_blocks: 1,
        ..tiny_model()
    };
    // The same run on the CPU: the reference for the final training loss.
    let train_loss = |device: &str, precision: Precision| {
        let dir = tempfile::tempdir().unwrap();
        let cfg = TrainConfig {
            device: device.parse().unwrap(),
            precision,
            ..tiny_train(30)
        };
        let mut t = start(dir.path(), model.clone(), cfg).unwrap();
        assert_eq!(t.run().unwrap(), Outcome::Completed);
        let h = &t.state().history;
        (-h[0].train_elbo, -h[29].train_elbo, t, dir)
    };
    let (_, cpu_last, _, _) = train_loss("cpu", Precision::Fp32);
    for precision in [Precision::Fp32, Precision::Bf16] {
        let (first, last, t, dir) = train_loss("cuda", precision);
        assert_eq!(t.device(), Device::Cuda(0));
        assert!(
            last < first - 2.0 && (last - cpu_last).abs() < 0.1 * cpu_last,
            "{precision:?} on CUDA: {first} -> {last} nats; the CPU reached {cpu_last}"
        );
        if precision == Precision::Bf16 {
            continue;
        }
        let cpu_model = Checkpoint::load(dir.path().join(files::LAST))
            .unwrap()
            .into_model(Device::Cpu)
            .unwrap()
            .model;
        let z = Tensor::randn([8, 4], (Kind::Float, Device::Cpu));
        let on_cpu = cpu_model.decode(&z).unwrap();
        let on_gpu = t
            .model()
            .decode(&z.to_device(Device::Cuda(0)))
            .unwrap()
            .to_device(Device::Cpu);
        // cuDNN may use TF32 for convolutions: agreement to ~1e-3 relative, not bitwise.
        let scale = on_cpu.abs().max().double_value(&[]);
        let diff = (&on_cpu - &on_gpu).abs().max().double_value(&[]);
        assert!(
            diff <= 1e-2 * scale,
            "decoded logits differ by {diff} (scale {scale})"
        );
        let iw_gpu = evaluate_iw(
            t.model(),
            &images_tensor(&val, Device::Cuda(0)),
            500,
            false,
            1,
            &mut |_, _| {},
        )
        .unwrap();
        let iw_cpu = evaluate_iw(
            cpu_model.as_ref(),
            &images_tensor(&val, Device::Cpu),
            500,
            false,
            1,
            &mut |_, _| {},
        )
        .unwrap();
        let noise = iw_gpu.std_error.hypot(iw_cpu.std_error);
        assert!(
            (iw_gpu.log_likelihood - iw_cpu.log_likelihood).abs() <= 4.0 * noise + 0.05,
            "IW estimates differ: GPU {} vs CPU {} (s.e. {noise})",
            iw_gpu.log_likelihood,
            iw_cpu.log_likelihood
        );
    }
}

/// Inputs kept from fuzzing checkpoint parsing (`fuzz/regressions/checkpoint`).
#[test]
fn checkpoint_fuzz_regressions_are_errors_not_panics() {
    let _g = lock(); // loading may build a model, which draws
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions/checkpoint");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let data = std::fs::read(entry.path()).unwrap();
        if let Ok(ckpt) = Checkpoint::from_bytes(&data, entry.path()) {
            let mut vs = tch::nn::VarStore::new(Device::Cpu);
            let _m = vae_model::ConvVae::new(&vs.root(), &ConvVaeConfig::default()).unwrap();
            let _ = ckpt.restore_variables(&mut vs);
        }
        n += 1;
    }
    assert!(n > 0, "no regression inputs in {}", dir.display());
}

#[test]
fn iwae_objective_free_bits_and_cosine_schedule_train() {
    let _g = lock();
    for cfg in [
        TrainConfig {
            objective: Objective::Iwae,
            iw_k: 3,
            ..tiny_train(3)
        },
        TrainConfig {
            free_bits: 0.25,
            lr_schedule: LrSchedule::Cosine,
            warmup_steps: 4,
            min_lr: 1e-4,
            ..tiny_train(3)
        },
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut t = start(dir.path(), tiny_model(), cfg.clone()).unwrap();
        assert_eq!(t.run().unwrap(), Outcome::Completed);
        let h = &t.state().history;
        assert!(h[2].val_elbo > h[0].val_elbo - 1.0, "{cfg:?}: {h:?}");
        assert!(h.iter().all(|m| m.train_elbo.is_finite()));
        if cfg.lr_schedule == LrSchedule::Cosine {
            // 8 steps an epoch, 24 in all: the last step's rate is near min_lr.
            assert!(h[2].lr < 2e-4 && h[0].lr > 1e-3, "{} {}", h[0].lr, h[2].lr);
        }
    }
}

#[test]
fn vamp_prior_residual_blocks_adamw_and_adamax_train() {
    let _g = lock();
    let vamp = ConvVaeConfig {
        prior: vae_model::Prior::Vamp { components: 6 },
        res_blocks: 1,
        ..tiny_model()
    };
    for (model, cfg) in [
        (vamp.clone(), tiny_train(3)),
        (
            tiny_model(),
            TrainConfig {
                optimizer: Optimizer::Adamw,
                weight_decay: 0.01,
                ..tiny_train(3)
            },
        ),
        (
            tiny_model(),
            TrainConfig {
                optimizer: Optimizer::Adamax,
                ..tiny_train(3)
            },
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut t = start(dir.path(), model.clone(), cfg.clone()).unwrap();
        assert_eq!(t.run().unwrap(), Outcome::Completed);
        let h = &t.state().history;
        assert!(h[2].val_elbo > h[0].val_elbo, "{model:?} {cfg:?}: {h:?}");
        // The checkpoint rebuilds the same architecture.
        let m = Checkpoint::load(dir.path().join(files::BEST))
            .unwrap()
            .into_model(Device::Cpu)
            .unwrap()
            .model;
        assert_eq!(m.config(), model.clone().into());
    }
    // Free bits need the standard prior's per-dimension KL.
    let dir = tempfile::tempdir().unwrap();
    let err = start(
        dir.path(),
        vamp,
        TrainConfig {
            free_bits: 0.5,
            ..tiny_train(1)
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("VampPrior"), "{err}");
    // Weight decay belongs to AdamW.
    let bad = TrainConfig {
        weight_decay: 0.1,
        ..tiny_train(1)
    };
    assert!(bad.validate().unwrap_err().to_string().contains("adamw"));
}

#[test]
fn ema_is_evaluated_saved_as_best_and_resumed_exactly() {
    let _g = lock();
    let (_, val) = data();
    let cfg = |epochs| TrainConfig {
        ema_decay: Some(0.9),
        ..tiny_train(epochs)
    };
    let straight = tempfile::tempdir().unwrap();
    let mut a = start(straight.path(), tiny_model(), cfg(2)).unwrap();
    a.run().unwrap();
    // best.safetensors holds the average, last.safetensors the live weights plus the average.
    let last = Checkpoint::load(straight.path().join(files::LAST)).unwrap();
    let names: Vec<String> = weights(a.var_store()).into_iter().map(|(n, _)| n).collect();
    let ema = last
        .ema(&names, Device::Cpu)
        .expect("the average is stored");
    let LoadedModel {
        vars: best_vs,
        checkpoint: best,
        ..
    } = Checkpoint::load(straight.path().join(files::BEST))
        .unwrap()
        .into_model(Device::Cpu)
        .unwrap();
    let mut differs = 0.0;
    for ((name, live), e) in weights(a.var_store()).iter().zip(&ema) {
        differs += (live - e).abs().max().double_value(&[]);
        if best.state.history.len() == 2 {
            let stored = &best_vs.variables()[name];
            assert_eq!((stored - e).abs().max().double_value(&[]), 0.0, "{name}");
        }
    }
    assert!(differs > 0.0, "the average lags the live weights");
    // The reported validation ELBO is the average's: re-evaluating it gives the same figure.
    let avg_model = Checkpoint::load(straight.path().join(files::BEST))
        .unwrap()
        .into_model(Device::Cpu)
        .unwrap()
        .model;
    let val_x = images_tensor(&val, Device::Cpu);
    let epoch_of_best = best.state.history.len();
    let want = a.state().history[epoch_of_best - 1].val_elbo;
    // The trainer's fixed validation seed (trainer.rs), so the noise is the same draw.
    let again = evaluate_elbo(avg_model.as_ref(), &val_x, true, 0x5EED_0F7A_1100).unwrap();
    assert!((again.elbo - want).abs() < 1e-6, "{} vs {want}", again.elbo);

    // One epoch, resume, one more: identical live weights and average.
    let split = tempfile::tempdir().unwrap();
    let b = one_epoch_then_resumed(split.path(), cfg(1));
    assert_same_weights(a.var_store(), b.var_store());
    let ema_b = Checkpoint::load(split.path().join(files::LAST))
        .unwrap()
        .ema(&names, Device::Cpu)
        .unwrap();
    for (x, y) in ema.iter().zip(&ema_b) {
        assert_eq!((x - y).abs().max().double_value(&[]), 0.0);
    }
}

/// bf16 training: evaluation is f32 (the reported validation ELBO is a fresh f32 model's), the
/// steps after an evaluation are bf16 again (an interrupted run resumes exactly), and `auto`
/// is stored as the precision it resolved to.
#[test]
fn bf16_trains_evaluates_in_f32_and_resumes_exactly() {
    let _g = lock();
    let (_, val) = data();
    let cfg = |epochs| TrainConfig {
        precision: Precision::Bf16,
        ..tiny_train(epochs)
    };
    let straight = tempfile::tempdir().unwrap();
    let mut a = start(straight.path(), tiny_model(), cfg(2)).unwrap();
    a.run().unwrap();
    let best = Checkpoint::load(straight.path().join(files::BEST)).unwrap();
    assert_eq!(best.train_config.precision, Precision::Bf16);
    let epoch_of_best = best.state.history.len();
    let model = best.into_model(Device::Cpu).unwrap().model;
    let val_x = images_tensor(&val, Device::Cpu);
    let want = a.state().history[epoch_of_best - 1].val_elbo;
    let again = evaluate_elbo(model.as_ref(), &val_x, true, 0x5EED_0F7A_1100).unwrap();
    assert!((again.elbo - want).abs() < 1e-6, "{} vs {want}", again.elbo);

    let split = tempfile::tempdir().unwrap();
    let b = one_epoch_then_resumed(split.path(), cfg(1));
    assert_same_weights(a.var_store(), b.var_store());
    // bf16 steps differ from f32 ones.
    let f32_dir = tempfile::tempdir().unwrap();
    let mut c = start(f32_dir.path(), tiny_model(), tiny_train(2)).unwrap();
    c.run().unwrap();
    let diff: f64 = weights(a.var_store())
        .iter()
        .zip(weights(c.var_store()).iter())
        .map(|((_, x), (_, y))| (x - y).abs().max().double_value(&[]))
        .sum();
    assert!(diff > 0.0, "bf16 and f32 runs gave identical weights");

    let auto = tempfile::tempdir().unwrap();
    let t = start(
        auto.path(),
        tiny_model(),
        TrainConfig {
            precision: Precision::Auto,
            ..tiny_train(1)
        },
    )
    .unwrap();
    let picked = Precision::Auto.resolve(tch::Device::Cpu).precision;
    assert_eq!(t.config().precision, picked);
    let text = std::fs::read_to_string(auto.path().join(files::CONFIG)).unwrap();
    assert!(
        text.contains(&format!("precision = \"{picked}\"")),
        "{text}"
    );
}

#[test]
fn an_iwae_fine_tune_switches_objective_for_its_last_epochs_and_selects_on_the_iw_bound() {
    let _g = lock();
    let train = TrainConfig {
        iw_k: 3,
        ..tiny_train(3)
    };
    let dir = tempfile::tempdir().unwrap();
    let mut a = start(
        dir.path(),
        tiny_model(),
        TrainConfig {
            iwae_epochs: 2,
            ..train.clone()
        },
    )
    .unwrap();
    assert_eq!(a.run().unwrap(), Outcome::Completed);
    let h = &a.state().history;
    assert_eq!(h[0].val_iw, None, "the ELBO phase has no IW bound");
    let iw: Vec<f64> = h[1..].iter().map(|m| m.val_iw.unwrap()).collect();
    assert!(iw.iter().all(|v| v.is_finite()), "{h:?}");
    // The best checkpoint is the fine-tune epoch with the best validation IW bound.
    let best = Checkpoint::load(dir.path().join(files::BEST)).unwrap();
    let chosen = best.state.history.last().unwrap();
    assert_eq!(
        chosen.val_iw,
        Some(iw.iter().copied().fold(f64::MIN, f64::max))
    );
    let csv = std::fs::read_to_string(dir.path().join(files::METRICS)).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    assert_eq!(header.last(), Some(&"val_iw"), "{csv}");
    assert!(
        csv.lines().nth(1).unwrap().ends_with(','),
        "epoch 1: empty: {csv}"
    );

    // The same as one ELBO epoch, then the run resumed on the iwae objective: the switch
    // happens at the epoch's boundary and nowhere else.
    let cut = tempfile::tempdir().unwrap();
    let b = resumed_after_one_epoch(cut.path(), tiny_model(), train.clone(), |c| {
        c.epochs = 3;
        c.objective = Objective::Iwae;
    });
    assert_same_weights(a.var_store(), b.var_store());

    // Under a cosine schedule the fine-tune runs after it, at its final rate: `epochs = 3,
    // iwae_epochs = 2` is the one-epoch run, then `--resume --epochs 3 --iwae-epochs 2`.
    let cosine = TrainConfig {
        lr_schedule: LrSchedule::Cosine,
        warmup_steps: 2,
        min_lr: 1e-4,
        ..train.clone()
    };
    let whole = tempfile::tempdir().unwrap();
    let mut c = start(
        whole.path(),
        tiny_model(),
        TrainConfig {
            iwae_epochs: 2,
            ..cosine.clone()
        },
    )
    .unwrap();
    assert_eq!(c.run().unwrap(), Outcome::Completed);
    let lrs: Vec<f64> = c.state().history.iter().map(|m| m.lr).collect();
    assert!(lrs[0] > 1e-4 && lrs[1..] == [1e-4, 1e-4], "{lrs:?}");
    let cut = tempfile::tempdir().unwrap();
    let d = resumed_after_one_epoch(cut.path(), tiny_model(), cosine, |c| {
        c.epochs = 3;
        c.iwae_epochs = 2;
    });
    assert_same_weights(c.var_store(), d.var_store());

    for (cfg, needle) in [
        (
            TrainConfig {
                iwae_epochs: 4,
                ..train.clone()
            },
            "must not exceed epochs",
        ),
        (
            TrainConfig {
                iwae_epochs: 1,
                objective: Objective::Iwae,
                ..train.clone()
            },
            "already trains on the IWAE bound",
        ),
        (
            TrainConfig {
                iwae_epochs: 1,
                patience: Some(2),
                ..train.clone()
            },
            "leave out patience or iwae_epochs",
        ),
    ] {
        let d = tempfile::tempdir().unwrap();
        let err = start(d.path(), tiny_model(), cfg).unwrap_err().to_string();
        assert!(err.contains(needle), "{err} should mention {needle}");
    }
}

#[test]
fn kl_balancing_reweights_a_ladder_during_the_warm_up_only() {
    let _g = lock();
    let train = |balance: bool, warmup: u64| TrainConfig {
        kl_warmup_steps: warmup,
        kl_balance: balance,
        grad_clip: Some(100.0),
        ..tiny_train(2)
    };
    let run = |cfg: TrainConfig| {
        let dir = tempfile::tempdir().unwrap();
        let mut t = start(dir.path(), tiny_ladder(), cfg).unwrap();
        assert_eq!(t.run().unwrap(), Outcome::Completed);
        t
    };
    let balanced = run(train(true, 10));
    let h = &balanced.state().history;
    assert!(h.iter().all(|m| m.val_elbo.is_finite()), "{h:?}");
    let plain = run(train(false, 10));
    let differs = weights(balanced.var_store())
        .iter()
        .zip(weights(plain.var_store()).iter())
        .any(|((_, a), (_, b))| (a - b).abs().max().double_value(&[]) > 0.0);
    assert!(differs, "balancing changed nothing in the warm-up");
    // Balancing ends with the warm-up: with a one-epoch warm-up, a balanced run equals one
    // balanced epoch and then the run resumed without balancing.
    let straight = run(train(true, 8));
    let cut = tempfile::tempdir().unwrap();
    let b = resumed_after_one_epoch(cut.path(), tiny_ladder(), train(true, 8), |c| {
        c.epochs = 2;
        c.kl_balance = false;
    });
    assert_same_weights(straight.var_store(), b.var_store());

    for (model, cfg, needle) in [
        (
            vae_model::ModelConfig::from(tiny_model()),
            train(true, 10),
            "this model has one",
        ),
        (tiny_ladder().into(), train(true, 0), "set kl_warmup_steps"),
        (
            tiny_ladder().into(),
            TrainConfig {
                free_bits: 0.1,
                ..train(true, 10)
            },
            "use one",
        ),
    ] {
        let d = tempfile::tempdir().unwrap();
        let err = start(d.path(), model, cfg).unwrap_err().to_string();
        assert!(err.contains(needle), "{err} should mention {needle}");
    }
}
