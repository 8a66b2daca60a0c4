//! `vae train`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use tch::Device;
use vae_data::{MnistDataset, Split};
use vae_train::{
    Checkpoint, Outcome, RunConfig, TrainConfig, Trainer, device_name, evaluate_elbo, files,
    images_tensor,
};

use crate::EXIT_INTERRUPTED;
use crate::grid::save_grid;

/// Options of `vae train`. Precedence: the preset (`default` unless named), then the keys
/// a `--config` file names, then flags.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Folder holding the four MNIST-format IDX files (gzip or not).
    #[arg(long, default_value = "data/mnist")]
    pub data: PathBuf,
    /// Run directory for checkpoints, metrics and pictures [default: runs/<timestamp>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in this directory from its last checkpoint (`--epochs` may extend it).
    #[arg(long, conflicts_with_all = ["out", "config", "latent_dim", "hidden_dim", "channels", "batch_size", "lr", "seed", "beta", "kl_warmup_steps", "grad_clip", "no_binarize", "validation_size", "preset", "objective", "iw_k", "free_bits", "lr_schedule", "warmup_steps", "min_lr", "patience", "res_blocks", "pixel_head", "pixel_head_layers", "prior", "pseudo_inputs", "optimizer", "weight_decay", "ema_decay", "precision"])]
    pub resume: Option<PathBuf>,
    /// TOML file with [model] and [train] tables (see a run's config.toml); the keys it names
    /// replace the preset's.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Passes over the training set [default: 36; preset fast 10, best 100].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Dimension of the latent z [default: 32].
    #[arg(long)]
    pub latent_dim: Option<i64>,
    /// Widths of the encoder's stride-2 convs, comma-separated [default: 32,64].
    #[arg(long, value_delimiter = ',')]
    pub channels: Option<Vec<i64>>,
    /// Add a dense hidden layer of this width to encoder and decoder.
    #[arg(long)]
    pub hidden_dim: Option<i64>,
    /// Examples per step [default: 128].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Adam's (peak) learning rate [default: 0.004].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Random seed [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// auto, cpu, cuda or cuda:N [default: auto].
    #[arg(long)]
    pub device: Option<String>,
    /// libtorch CPU threads [default: one per core].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Weight of the KL term (β-VAE) [default: 1].
    #[arg(long)]
    pub beta: Option<f64>,
    /// Steps of linear KL warm-up from 0 to β [default: 0].
    #[arg(long)]
    pub kl_warmup_steps: Option<u64>,
    /// Clip the global gradient norm to this value.
    #[arg(long)]
    pub grad_clip: Option<f64>,
    /// Train on continuous intensities instead of dynamically binarised pixels.
    #[arg(long)]
    pub no_binarize: bool,
    /// Training images held out for validation [default: 10000].
    #[arg(long)]
    pub validation_size: Option<usize>,
    /// Stop after this many steps (benchmarks).
    #[arg(long, hide = true)]
    pub max_steps: Option<u64>,
    /// Benchmarks: run this many warm-up steps first, then `--max-steps` timed ones, and print
    /// the timed steps' images/s as a JSON line (as the PyTorch peer skips its warm-up steps).
    #[arg(long, hide = true, requires = "max_steps", conflicts_with = "resume")]
    pub untimed_steps: Option<u64>,
    /// Start from a preset: `default` (the best model measured to train in 10 minutes on 2 CPU
    /// cores: the reference conv VAE with a 100-component VampPrior, Adam 4e-3 peak with 300
    /// warm-up steps and cosine decay to 1e-4, 36 epochs); `fast` (the PyTorch reference's
    /// model and protocol: standard prior, constant Adam 1e-3, 10 epochs); `best` (for longer
    /// runs or a GPU: VampPrior of 500, a residual block per level, 100 epochs). --config and
    /// flags override it.
    #[arg(long)]
    pub preset: Option<String>,
    /// Training objective: elbo, or iwae (the importance-weighted bound with --iw-k samples).
    #[arg(long)]
    pub objective: Option<String>,
    /// Importance samples of the iwae objective [default: 5].
    #[arg(long)]
    pub iw_k: Option<i64>,
    /// Free bits: a floor in nats on each latent dimension's batch-mean KL [default: 0, off].
    #[arg(long)]
    pub free_bits: Option<f64>,
    /// Learning-rate schedule after the warm-up: constant or cosine [default: cosine].
    #[arg(long)]
    pub lr_schedule: Option<String>,
    /// Steps of linear learning-rate warm-up [default: 300].
    #[arg(long)]
    pub warmup_steps: Option<u64>,
    /// Final learning rate of the cosine schedule [default: 0.0001].
    #[arg(long)]
    pub min_lr: Option<f64>,
    /// Stop when the validation ELBO has not improved for this many epochs.
    #[arg(long)]
    pub patience: Option<usize>,
    /// Residual blocks (two 3x3 convs and a skip) at each conv level of encoder and decoder
    /// [default: 0].
    #[arg(long)]
    pub res_blocks: Option<usize>,
    /// Add an autoregressive head of this width over the decoder's logits (PixelCNN-style
    /// masked convs: each pixel also conditioned on the pixels before it; sampling becomes
    /// pixel by pixel) [default: off; 0 turns it off].
    #[arg(long)]
    pub pixel_head: Option<i64>,
    /// Masked conv layers of the pixel head [default: 3].
    #[arg(long)]
    pub pixel_head_layers: Option<usize>,
    /// Prior p(z): standard (N(0, I)) or vamp (VampPrior, a mixture of the posteriors of
    /// --pseudo-inputs learned images) [default: vamp; preset fast: standard].
    #[arg(long)]
    pub prior: Option<String>,
    /// Pseudo-inputs K of the VampPrior [default: 100; preset best: 500].
    #[arg(long)]
    pub pseudo_inputs: Option<i64>,
    /// Update rule: adam, adamw (with --weight-decay) or adamax [default: adam].
    #[arg(long)]
    pub optimizer: Option<String>,
    /// AdamW's decoupled weight decay [default: 0].
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Evaluate and keep an exponential moving average of the weights with this decay
    /// (e.g. 0.999) [default: off].
    #[arg(long)]
    pub ema_decay: Option<f64>,
    /// Arithmetic: fp32, or bf16 (opt-in: bf16 convs and dense layers, f32 weights and losses;
    /// the final test ELBO is always measured in fp32) [default: fp32].
    #[arg(long)]
    pub precision: Option<String>,
}

/// The VampPrior's pseudo-inputs when `--prior vamp` names no count.
const DEFAULT_PSEUDO_INPUTS: i64 = 100;

fn apply_flags(args: &TrainArgs, run: &mut RunConfig) -> Result<()> {
    let t = &mut run.train;
    let m = &mut run.model;
    if let Some(v) = args.epochs {
        t.epochs = v;
    }
    if let Some(v) = args.batch_size {
        t.batch_size = v;
    }
    if let Some(v) = args.lr {
        t.lr = v;
    }
    if let Some(v) = args.seed {
        t.seed = v;
    }
    if let Some(v) = &args.device {
        t.device = v.clone();
    }
    if let Some(v) = args.threads {
        t.threads = Some(v);
    }
    if let Some(v) = args.beta {
        t.beta = v;
    }
    if let Some(v) = args.kl_warmup_steps {
        t.kl_warmup_steps = v;
    }
    if let Some(v) = args.grad_clip {
        t.grad_clip = Some(v);
    }
    if args.no_binarize {
        t.binarize = false;
    }
    if let Some(v) = args.validation_size {
        t.validation_size = v;
    }
    if let Some(v) = args.max_steps {
        t.max_steps = Some(v);
    }
    if let Some(v) = &args.objective {
        t.objective = match v.as_str() {
            "elbo" => vae_train::Objective::Elbo,
            "iwae" => vae_train::Objective::Iwae,
            other => bail!("unknown objective {other:?}: use elbo or iwae"),
        };
    }
    if let Some(v) = args.iw_k {
        t.iw_k = v;
    }
    if let Some(v) = args.free_bits {
        t.free_bits = v;
    }
    if let Some(v) = &args.lr_schedule {
        t.lr_schedule = match v.as_str() {
            "constant" => vae_train::LrSchedule::Constant,
            "cosine" => vae_train::LrSchedule::Cosine,
            other => bail!("unknown learning-rate schedule {other:?}: use constant or cosine"),
        };
    }
    if let Some(v) = args.warmup_steps {
        t.warmup_steps = v;
    }
    if let Some(v) = args.min_lr {
        t.min_lr = v;
    }
    if let Some(v) = args.patience {
        t.patience = Some(v);
    }
    if let Some(v) = args.latent_dim {
        m.latent_dim = v;
    }
    if let Some(v) = &args.channels {
        m.channels = v.clone();
    }
    if let Some(v) = args.hidden_dim {
        m.hidden_dim = Some(v);
    }
    if let Some(v) = args.res_blocks {
        m.res_blocks = v;
    }
    match (args.pixel_head, args.pixel_head_layers) {
        (Some(0), _) => m.pixel_head = None,
        (Some(channels), layers) => {
            let base = m.pixel_head.unwrap_or_default();
            m.pixel_head = Some(vae_model::PixelHead {
                channels,
                layers: layers.unwrap_or(base.layers),
            });
        }
        (None, Some(layers)) => match &mut m.pixel_head {
            Some(head) => head.layers = layers,
            None => bail!("--pixel-head-layers needs --pixel-head CHANNELS"),
        },
        (None, None) => {}
    }
    if let Some(v) = &args.prior {
        m.prior = match v.as_str() {
            "standard" => vae_model::Prior::Standard,
            "vamp" => vae_model::Prior::Vamp {
                components: args.pseudo_inputs.unwrap_or(DEFAULT_PSEUDO_INPUTS),
            },
            other => bail!("unknown prior {other:?}: use standard or vamp"),
        };
    }
    if let Some(k) = args.pseudo_inputs {
        match &mut m.prior {
            vae_model::Prior::Vamp { components } => *components = k,
            vae_model::Prior::Standard => bail!("--pseudo-inputs needs --prior vamp"),
        }
    }
    if let Some(v) = &args.optimizer {
        t.optimizer = match v.as_str() {
            "adam" => vae_train::Optimizer::Adam,
            "adamw" => vae_train::Optimizer::Adamw,
            "adamax" => vae_train::Optimizer::Adamax,
            other => bail!("unknown optimizer {other:?}: use adam, adamw or adamax"),
        };
    }
    if let Some(v) = args.weight_decay {
        t.weight_decay = v;
    }
    if let Some(v) = args.ema_decay {
        t.ema_decay = Some(v);
    }
    if let Some(v) = &args.precision {
        t.precision = match v.as_str() {
            "fp32" => vae_train::Precision::Fp32,
            "bf16" => vae_train::Precision::Bf16,
            other => bail!("unknown precision {other:?}: use fp32 or bf16"),
        };
    }
    Ok(())
}

/// A `--config` file laid over the preset: the keys it names replace the preset's.
fn load_config(path: &Path, base: &RunConfig) -> Result<RunConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    RunConfig::overlay_toml(base, &text)
        .with_context(|| format!("invalid config {}", path.display()))
}

/// Raises `flag` on the first Ctrl-C; a second one exits at once.
fn install_interrupt_handler() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = Arc::clone(&flag);
    let _ = ctrlc::set_handler(move || {
        if f.swap(true, Ordering::SeqCst) {
            std::process::exit(i32::from(EXIT_INTERRUPTED));
        }
        eprintln!(
            "\ninterrupt: finishing the current step and writing a checkpoint (Ctrl-C again to quit at once)"
        );
    });
    flag
}

pub fn run(args: TrainArgs) -> Result<u8> {
    let mut trainer = make_trainer(&args)?;
    let dir = trainer.run_dir().to_path_buf();
    eprintln!(
        "training on {} ({} threads), run directory {}",
        device_name(trainer.device()),
        tch::get_num_threads(),
        dir.display()
    );
    trainer.set_progress(true);
    // Loaded once: the per-epoch test ELBO and the final pictures use it (set_test_set also
    // checks its image size against the model's).
    let test = MnistDataset::load(&args.data, Split::Test).context("cannot load the test set")?;
    trainer.set_test_set(&test)?;
    trainer.set_interrupt_flag(install_interrupt_handler());
    let outcome = match (args.untimed_steps, args.max_steps) {
        (Some(warmup), Some(timed)) => run_timed(&mut trainer, warmup, timed)?,
        _ => trainer.run()?,
    };
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

/// `warmup` untimed steps, then `timed` steps whose images/s it prints on stdout as JSON
/// (`--untimed-steps`, for `cargo xtask bench`). The timed steps must lie in one epoch: the
/// trainer's per-epoch accumulators are what it reads.
fn run_timed(trainer: &mut Trainer, warmup: u64, timed: u64) -> Result<Outcome> {
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
    let outcome = trainer.run()?;
    let after = &trainer.state().partial;
    if outcome != Outcome::StepLimit || trainer.state().history.len() != before.1 {
        bail!("--untimed-steps: the timed steps must end before the first epoch does");
    }
    let (examples, seconds) = (
        after.examples - before.0.examples,
        after.seconds - before.0.seconds,
    );
    println!(
        "{}",
        serde_json::json!({"timed_steps": timed, "seconds": seconds, "train_images_per_s": examples as f64 / seconds})
    );
    Ok(outcome)
}

/// Loads the data and builds (or resumes) the trainer. The host copies of the data are
/// dropped on return: the trainer holds its own on the training device.
fn make_trainer(args: &TrainArgs) -> Result<Trainer> {
    let full =
        MnistDataset::load(&args.data, Split::Train).context("cannot load the training set")?;
    let trainer = if let Some(dir) = &args.resume {
        let validation_size = Checkpoint::load(dir.join(files::LAST))?
            .train_config
            .validation_size;
        let (train, val) = full.split_validation(validation_size)?;
        Trainer::resume(dir, &train, &val, |c: &mut TrainConfig| {
            if let Some(e) = args.epochs {
                c.epochs = e;
            }
            if let Some(d) = &args.device {
                c.device = d.clone();
            }
            if let Some(t) = args.threads {
                c.threads = Some(t);
            }
            if let Some(s) = args.max_steps {
                c.max_steps = Some(s);
            }
        })?
    } else {
        let preset: vae_train::Preset = args.preset.as_deref().unwrap_or("default").parse()?;
        let mut run = RunConfig::preset(preset);
        if let Some(p) = &args.config {
            run = load_config(p, &run)?;
        }
        apply_flags(args, &mut run)?;
        let (h, w) = full.image_size();
        run.model.input_height = h as i64;
        run.model.input_width = w as i64;
        run.train.validate()?;
        run.model.validate()?;
        vae_train::parse_device(&run.train.device)?;
        let (train, val) = full.split_validation(run.train.validation_size)?;
        let out = args.out.clone().unwrap_or_else(|| {
            PathBuf::from("runs").join(chrono::Local::now().format("%Y%m%d-%H%M%S").to_string())
        });
        Trainer::new(&out, run.model, run.train, &train, &val)?
    };
    Ok(trainer)
}

/// After training: pictures and the test ELBO of the best checkpoint, and the curves of the
/// run's `history`.
fn finish(
    dir: &Path,
    test: &MnistDataset,
    device: Device,
    history: &[vae_train::EpochMetrics],
) -> Result<()> {
    let best = dir.join(files::BEST);
    let (model, _vs, ckpt) = Checkpoint::load(&best)?.into_model(device)?;
    let test_x = images_tensor(test, device);
    tch::manual_seed(ckpt.train_config.seed as i64);
    let samples = tch::no_grad(|| model.sample(64, 1.0))?;
    save_grid(&dir.join("samples.png"), &samples, 8)?;
    crate::explore::reconstruction_grid(&model, &test_x, 16, &dir.join("reconstructions.png"))?;
    crate::explore::write_curves(&dir.join("curves.png"), history)?;
    // The VampPrior's learned pseudo-inputs: the images whose posteriors make up the prior.
    if let Some(u) = tch::no_grad(|| model.pseudo_inputs()) {
        let n = u.size()[0].min(100);
        save_grid(&dir.join("pseudo_inputs.png"), &u.narrow(0, 0, n), 10)?;
    }
    let test_elbo = evaluate_elbo(&model, &test_x, ckpt.train_config.binarize, 123)?;
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
