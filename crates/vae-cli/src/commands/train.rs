//! `vae train`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use tch::Device;
use vae_data::{ImageDataset, Split};
use vae_model::Vae;
use vae_model::{ConvVaeConfig, LadderVaeConfig, Likelihood, PixelHead, Prior};
use vae_train::{
    Checkpoint, EpochMetrics, ImageMaker, Images, Outcome, ProcessGroup, Profiler, Rendezvous,
    RunConfig, TensorBoard, TrainConfig, Trainer, device_name, evaluate_elbo, files, images_tensor,
};

use crate::EXIT_INTERRUPTED;
use crate::args::{RunSettings, TrainArgs};
use crate::commands::reconstruct::{reconstruction_grid, reconstruction_rows};
use crate::curves::write_curves;
use crate::grid::{grid_png, save_grid};
use crate::progress::EpochBar;

/// The flags of a new run laid over `run`: the training flags as a `[train]` table (the path
/// a `--config` file takes), then the model's.
fn apply_settings(s: &RunSettings, run: &mut RunConfig) -> Result<()> {
    let mut train = toml::Table::try_from(&s.train)?;
    if s.train.no_binarize {
        train.insert("binarize".into(), false.into());
    }
    *run = run.overlay(toml::Table::from_iter([("train".into(), train.into())]))?;
    let logistic = |l: Likelihood| matches!(l, Likelihood::Logistic { .. });
    let likelihood = match (s.likelihood, s.logistic_components) {
        (Some(l), Some(components)) if logistic(l) => Some(Likelihood::Logistic { components }),
        (None, Some(components)) if logistic(run.model.likelihood()) => {
            Some(Likelihood::Logistic { components })
        }
        (_, Some(_)) => bail!("--logistic-components needs --likelihood logistic"),
        (l, None) => l,
    };
    if let Some(l) = likelihood {
        run.model.set_likelihood(l);
    }
    let conv_flags = [
        (s.latent_dim.is_some(), "--latent-dim"),
        (s.channels.is_some(), "--channels"),
        (s.hidden_dim.is_some(), "--hidden-dim"),
        (s.res_blocks.is_some(), "--res-blocks"),
        (s.prior.is_some(), "--prior"),
        (s.pseudo_inputs.is_some(), "--pseudo-inputs"),
    ];
    if let Some(m) = run.model.get_mut::<LadderVaeConfig>() {
        m.pixel_head = pixel_head(s, m.pixel_head)?;
    }
    let kind = run.model.kind();
    let Some(m) = run.model.get_mut::<ConvVaeConfig>() else {
        if let Some((_, flag)) = conv_flags.iter().find(|(given, _)| *given) {
            bail!(
                "{flag} sets the conv VAE, but this run's model is of kind {kind}: set that kind's keys in a --config file's [model] table instead"
            );
        }
        return Ok(());
    };
    if let Some(v) = s.latent_dim {
        m.latent_dim = v;
    }
    if let Some(v) = &s.channels {
        m.channels = v.clone();
    }
    if let Some(v) = s.hidden_dim {
        m.hidden_dim = Some(v);
    }
    if let Some(v) = s.res_blocks {
        m.res_blocks = v;
    }
    m.pixel_head = pixel_head(s, m.pixel_head)?;
    if let Some(prior) = s.prior {
        m.prior = prior;
    }
    if let Some(k) = s.pseudo_inputs {
        match &mut m.prior {
            Prior::Vamp { components } => *components = k,
            Prior::Standard => bail!("--pseudo-inputs needs --prior vamp"),
        }
    }
    Ok(())
}

/// The pixel head `--pixel-head` and `--pixel-head-layers` make of a model's `current` one
/// (conv or ladder): `--pixel-head 0` removes it.
fn pixel_head(s: &RunSettings, current: Option<PixelHead>) -> Result<Option<PixelHead>> {
    Ok(match (s.pixel_head, s.pixel_head_layers) {
        (Some(0), _) => None,
        (Some(channels), layers) => Some(PixelHead {
            channels,
            layers: layers.unwrap_or(current.unwrap_or_default().layers),
        }),
        (None, Some(layers)) => match current {
            Some(head) => Some(PixelHead { layers, ..head }),
            None => bail!("--pixel-head-layers needs --pixel-head CHANNELS"),
        },
        (None, None) => current,
    })
}

/// The likelihood a run on `data` (loaded from `folder`) gets when nothing names one: the
/// Bernoulli for binary images and for MNIST itself (the binarised-MNIST protocol), the
/// logistic mixture for other grey-level and colour data. With why, for the user.
fn default_likelihood(folder: &Path, data: &ImageDataset) -> (Likelihood, &'static str) {
    let mnist = folder.file_name().is_some_and(|n| n == "mnist");
    if data.is_binary() {
        (Likelihood::Bernoulli, "the default for binary images")
    } else if mnist && data.channels() == 1 {
        (
            Likelihood::Bernoulli,
            "the binarised-MNIST protocol, the default for MNIST",
        )
    } else if data.channels() == 3 {
        (Likelihood::logistic(), "the default for colour data")
    } else {
        (Likelihood::logistic(), "the default for grey-level data")
    }
}

/// The run a new `vae train` asks for: preset, then `--config`, then flags; a likelihood
/// chosen for the data when none is named (the choice is printed).
fn run_config(args: &TrainArgs, data: &ImageDataset) -> Result<RunConfig> {
    let preset = args.settings.preset.unwrap_or_default();
    let mut run = RunConfig::preset(preset);
    let mut named_likelihood = args.settings.likelihood.is_some() || preset.sets_likelihood();
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        run = run
            .overlay_toml(&text)
            .with_context(|| format!("invalid config {}", path.display()))?;
        let table: toml::Table = toml::from_str(&text)?;
        named_likelihood |= table
            .get("model")
            .and_then(|m| m.get("likelihood"))
            .is_some();
    }
    if !named_likelihood {
        let (likelihood, why) = default_likelihood(&args.data, data);
        if likelihood != run.model.likelihood() {
            run.model.set_likelihood(likelihood);
            eprintln!("likelihood: {likelihood}, {why} (--likelihood chooses another)");
        }
    }
    apply_settings(&args.settings, &mut run)?;
    if let Some(v) = args.epochs {
        run.train.epochs = v;
    }
    if let Some(v) = args.iwae_epochs {
        run.train.iwae_epochs = v;
    }
    if let Some(v) = args.device {
        run.train.device = v;
    }
    if let Some(v) = args.threads {
        run.train.threads = Some(v);
    }
    if let Some(v) = args.max_steps {
        run.train.max_steps = Some(v);
    }
    Ok(run)
}

/// Raises `flag` on the first Ctrl-C; a second one exits at once, except in a worker of
/// several (`worker`): its launcher passes SIGINT on and kills it after a grace period, and a
/// terminal may deliver the same Ctrl-C to it twice.
fn install_interrupt_handler(worker: bool, leader: bool) -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = Arc::clone(&flag);
    let _ = ctrlc::set_handler(move || {
        if f.swap(true, Ordering::SeqCst) {
            if !worker {
                std::process::exit(i32::from(EXIT_INTERRUPTED));
            }
            return;
        }
        if leader {
            eprintln!(
                "\ninterrupt: finishing the current step and writing a checkpoint{}",
                if worker {
                    ""
                } else {
                    " (Ctrl-C again to quit at once)"
                }
            );
        }
    });
    flag
}

pub fn run(args: TrainArgs) -> Result<u8> {
    if let Some(n) = args.nproc {
        if std::env::var_os("WORLD_SIZE").is_some() {
            bail!(
                "--nproc starts its own workers, but this process already is one (WORLD_SIZE is set, as torchrun sets it): use one launcher, torchrun or --nproc"
            );
        }
        return crate::commands::launch::run(usize::from(n), args.threads.is_some());
    }
    let mut trainer = make_trainer(&args)?;
    let dir = trainer.run_dir().to_path_buf();
    let worker = trainer.world() > 1;
    trainer.set_interrupt_flag(install_interrupt_handler(worker, trainer.is_leader()));
    let test = ImageDataset::load(&args.data, Split::Test).context("cannot load the test set")?;
    if !trainer.is_leader() {
        // The other ranks compute and write nothing: rank 0 reports and checkpoints. Every
        // rank evaluates its share of the test set each epoch.
        trainer.set_test_set(&test)?;
        let outcome = train(&mut trainer, &args)?;
        return Ok(match outcome {
            Outcome::Interrupted => EXIT_INTERRUPTED,
            _ => 0,
        });
    }
    let processes = if worker {
        format!(
            ", {} processes x {} images per step",
            trainer.world(),
            trainer.batch_per_process()
        )
    } else {
        String::new()
    };
    eprintln!(
        "training on {} ({} threads{processes}, {}), run directory {}",
        device_name(trainer.device()),
        tch::get_num_threads(),
        trainer.config().precision,
        dir.display()
    );
    trainer.observe(EpochBar::default());
    // Loaded once: the per-epoch test ELBO and the final pictures use it (set_test_set also
    // checks its image size against the model's).
    trainer.set_test_set(&test)?;
    if !args.no_tensorboard {
        // The event file is a view of the run: training goes on without it.
        match TensorBoard::new(&dir, trainer.state().step) {
            Ok(board) => {
                let mut board = board.with_images(epoch_pictures(&test, trainer.config().seed));
                if let Some(bytes) = event_write_fault() {
                    board.fail_writes_past(bytes);
                }
                trainer.observe(board);
            }
            Err(e) => eprintln!(
                "warning: training without a TensorBoard event file, since it cannot be set up: {e}"
            ),
        }
    }
    let outcome = train(&mut trainer, &args)?;
    for m in trainer.state().history.iter().rev().take(1) {
        eprintln!(
            "epoch {}: train ELBO {:.2}, validation ELBO {:.2} nats ({:.0} images/s)",
            m.epoch, m.train_elbo, m.val_elbo, m.images_per_s
        );
    }
    match outcome {
        Outcome::Interrupted => {
            eprintln!(
                "interrupted at step {}: checkpoint written to {}; continue with `vae train --resume {}`",
                trainer.state().step,
                dir.join(files::LAST).display(),
                dir.display()
            );
            return Ok(EXIT_INTERRUPTED);
        }
        Outcome::StepLimit => {
            eprintln!(
                "stopped at step {} (step limit); checkpoint in {}",
                trainer.state().step,
                dir.display()
            );
            return Ok(0);
        }
        Outcome::Completed => {}
        Outcome::EarlyStopped => eprintln!("stopped early: the validation ELBO stopped improving"),
    }
    let device = trainer.device();
    // The whole run's history for the curves (the best checkpoint's stops at its epoch).
    let history = trainer.state().history.clone();
    drop(trainer);
    finish(&dir, &test, device, &history)?;
    Ok(0)
}

/// Trains as the flags say (timed, for `--untimed-steps`), on every rank alike.
fn train(trainer: &mut Trainer, args: &TrainArgs) -> Result<Outcome> {
    let outcome = match (args.untimed_steps, args.max_steps) {
        (Some(warmup), Some(timed)) => run_timed(trainer, warmup, timed, args.profile.as_deref())?,
        _ => trainer.run()?,
    };
    dump_weights(trainer)?;
    Ok(outcome)
}

/// For tests of data-parallel training: `VAE_TEST_WEIGHTS_OUT=<dir>` makes every rank write
/// its weights there as `rank<r>.safetensors` when training stops, so ranks can be compared.
fn dump_weights(trainer: &Trainer) -> Result<()> {
    let Some(dir) = std::env::var_os("VAE_TEST_WEIGHTS_OUT") else {
        return Ok(());
    };
    let path = Path::new(&dir).join(format!("rank{}.safetensors", trainer.rank()));
    trainer
        .var_store()
        .save(&path)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// A fault for tests of torn event files: `VAE_TEST_EVENT_WRITES_FAIL_PAST=<bytes>` makes
/// writes that would take the event file past that size fail part-way, as a full disk does.
fn event_write_fault() -> Option<u64> {
    std::env::var("VAE_TEST_EVENT_WRITES_FAIL_PAST")
        .ok()?
        .parse()
        .ok()
}

/// The TensorBoard image summaries of an epoch: 64 samples at temperature 1 (the same noise
/// every epoch, so the grids show the model change) and the first 16 test images above their
/// reconstructions.
fn epoch_pictures(test: &ImageDataset, seed: u64) -> ImageMaker {
    let n = test.len().min(16);
    let first = images_tensor(test, Device::Cpu).narrow(0, 0, n as i64);
    Box::new(move |model: &dyn Vae| {
        let draw = || -> Result<Images> {
            tch::manual_seed(seed as i64);
            let samples = tch::no_grad(|| model.sample(64, 1.0))?;
            let mut grids = vec![("samples", grid_png(&samples, 8)?)];
            if n > 0 {
                let recon = reconstruction_rows(model, &first, n as i64)?;
                grids.push(("reconstructions", grid_png(&recon, 8)?));
            }
            let mut out = Vec::new();
            for (tag, png) in grids {
                out.push((
                    tag.to_string(),
                    png.bytes,
                    (png.width, png.height, png.channels),
                ));
            }
            Ok(out)
        };
        draw().map_err(Into::into)
    })
}

/// `warmup` untimed steps, then `timed` steps whose images/s rank 0 prints on stdout as JSON
/// (`--untimed-steps`, for `cargo xtask bench`), recording the timed steps' operators into
/// the trace `profile` when given. The timed steps must lie in one epoch: the trainer's
/// per-epoch accumulators are what it reads.
fn run_timed(
    trainer: &mut Trainer,
    warmup: u64,
    timed: u64,
    profile: Option<&Path>,
) -> Result<Outcome> {
    trainer.set_max_steps(Some(warmup));
    let first = trainer.run()?;
    if first != Outcome::StepLimit {
        return Ok(first);
    }
    let before = (
        trainer.state().partial.clone(),
        trainer.state().history.len(),
    );
    trainer.set_max_steps(Some(warmup + timed));
    let profiler = match profile {
        Some(_) if trainer.is_leader() => Some(Profiler::start()?),
        _ => None,
    };
    let outcome = trainer.run()?;
    if let (Some(profiler), Some(path)) = (profiler, profile) {
        profiler.finish(path)?;
    }
    let after = &trainer.state().partial;
    if outcome != Outcome::StepLimit || trainer.state().history.len() != before.1 {
        bail!("--untimed-steps: the timed steps must end before the first epoch does");
    }
    let (examples, seconds) = (
        after.examples - before.0.examples,
        after.seconds - before.0.seconds,
    );
    if trainer.is_leader() {
        println!(
            "{}",
            serde_json::json!({"timed_steps": timed, "seconds": seconds, "train_images_per_s": examples as f64 / seconds})
        );
    }
    Ok(outcome)
}

/// This process's group when a launcher (torchrun, `--nproc`, Slurm through the same
/// variables) started it as one of several: it meets the others before anything is loaded.
/// A CUDA device means each rank's own GPU, `cuda:LOCAL_RANK`.
fn join_group(device: vae_train::Device) -> Result<Option<ProcessGroup>> {
    let Some(rendezvous) = Rendezvous::from_env()? else {
        return Ok(None);
    };
    let device = match device.resolve()? {
        Device::Cuda(_) => Device::Cuda(rendezvous.local_rank),
        d => d,
    };
    Ok(Some(ProcessGroup::join(&rendezvous, device)?))
}

/// Loads the data and starts (or resumes) the run. The host copy of the data is dropped on
/// return: the trainer holds its own on the training device.
fn make_trainer(args: &TrainArgs) -> Result<Trainer> {
    let data =
        ImageDataset::load(&args.data, Split::Train).context("cannot load the training set")?;
    let adjust = |c: &mut TrainConfig| {
        if let Some(e) = args.epochs {
            c.epochs = e;
        }
        if let Some(n) = args.iwae_epochs {
            c.iwae_epochs = n;
        }
        if let Some(d) = args.device {
            c.device = d;
        }
        if let Some(t) = args.threads {
            c.threads = Some(t);
        }
        if let Some(s) = args.max_steps {
            c.max_steps = Some(s);
        }
    };
    if let Some(dir) = &args.resume {
        let group = join_group(args.device.unwrap_or_default())?;
        return Ok(match group {
            Some(g) => Trainer::resume_parallel(dir, &data, adjust, g)?,
            None => Trainer::resume(dir, &data, adjust)?,
        });
    }
    let run = run_config(args, &data)?;
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(chrono::Local::now().format("%Y%m%d-%H%M%S").to_string())
    });
    Ok(match join_group(run.train.device)? {
        Some(g) => Trainer::start_parallel(&out, &data, run, g)?,
        None => Trainer::start(&out, &data, run)?,
    })
}

/// After training: pictures and the test ELBO of the best checkpoint, and the curves of the
/// run's `history`.
fn finish(dir: &Path, test: &ImageDataset, device: Device, history: &[EpochMetrics]) -> Result<()> {
    let best = dir.join(files::BEST);
    let loaded = Checkpoint::load(&best)?.into_model(device)?;
    let (model, ckpt) = (loaded.model.as_ref(), &loaded.checkpoint);
    let test_x = images_tensor(test, device);
    tch::manual_seed(ckpt.train_config.seed as i64);
    let samples = tch::no_grad(|| model.sample(64, 1.0))?;
    save_grid(&dir.join("samples.png"), &samples, 8)?;
    reconstruction_grid(model, &test_x, 16, &dir.join("reconstructions.png"))?;
    write_curves(&dir.join("curves.png"), history)?;
    // The VampPrior's learned pseudo-inputs: the images whose posteriors make up the prior.
    if let Some(u) = tch::no_grad(|| model.prior_images()) {
        let n = u.size()[0].min(100);
        save_grid(&dir.join("pseudo_inputs.png"), &u.narrow(0, 0, n), 10)?;
    }
    let binarize = ckpt.train_config.binarizes(model.likelihood());
    let test_elbo = evaluate_elbo(model, &test_x, binarize, 123)?;
    println!(
        "test ELBO {:.2} nats (KL {:.2}, reconstruction {:.2}; {} images, best checkpoint of epoch {})",
        test_elbo.elbo,
        test_elbo.kl,
        test_elbo.reconstruction,
        test_elbo.images,
        ckpt.state.history.len()
    );
    println!(
        "wrote {}, {} and {}",
        dir.join("samples.png").display(),
        dir.join("reconstructions.png").display(),
        dir.join("curves.png").display()
    );
    Ok(())
}
