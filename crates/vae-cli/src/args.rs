//! The command line: every command's arguments, apart from the logic in `commands/`.

// Doc comments here are the command-line help text, where `<run>` and `[...]` are plain text.
#![allow(rustdoc::invalid_html_tags, rustdoc::broken_intra_doc_links)]

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use vae_model::{IwPrecision, Likelihood, Prior};
use vae_train::{Device, LrSchedule, Objective, Optimizer, Precision, Preset};

#[derive(Parser)]
#[command(
    name = "vae",
    version,
    about = "Train, evaluate and sample convolutional VAEs on MNIST-format data (libtorch, CPU or CUDA)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Train a VAE (default: the reference conv VAE with a VampPrior, 36 epochs on data/mnist; see --preset).
    #[command(allow_negative_numbers = true)]
    Train(Box<TrainArgs>),
    /// Evaluate a run on the test set: ELBO and importance-weighted log-likelihood.
    #[command(allow_negative_numbers = true)]
    Eval(EvalArgs),
    /// Draw a grid of images from the prior.
    Sample(SampleArgs),
    /// Show test images above their reconstructions.
    Reconstruct(ReconstructArgs),
    /// Decode the path between two test images' latent means.
    Interpolate(InterpolateArgs),
    /// The decoded latent manifold (2-D latents) or per-dimension traversals (larger ones).
    Manifold(ManifoldArgs),
    /// Latent means and log-variances as CSV (and .npy), with an optional scatter plot.
    Latents(LatentsArgs),
    /// Train one model per latent size and compare them.
    #[command(allow_negative_numbers = true)]
    Sweep(SweepArgs),
    /// Write a model as a PyTorch module (model.py) and its weights (model.safetensors).
    Export(ExportArgs),
    /// What libtorch can do here: CUDA, devices, threads.
    Info(InfoArgs),
    /// Turn a folder of PNGs (grey or RGB, one size; sub-folders become classes) into a data
    /// set of IDX files that `vae train --data` reads.
    Import(ImportArgs),
    /// Explore a model in the browser: a local page with the run's curves (live while it
    /// trains), samples by temperature, sliders along the latent space, interpolations, and a
    /// canvas to draw on.
    Serve(ServeArgs),
}

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
    /// Continue the run in this directory from its last checkpoint (`--epochs`,
    /// `--iwae-epochs`, `--device` and `--threads` may change; the model and training
    /// settings are the run's own).
    #[arg(long, conflicts_with_all = ["out", "config", "RunSettings"])]
    pub resume: Option<PathBuf>,
    /// TOML file with [model] and [train] tables (see a run's config.toml); the keys it names
    /// replace the preset's.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Passes over the training set [default: 36; preset fast 10, best 100, ladder 50,
    /// ladder-long 110, ladder-8bit 30, ladder-8bit-long 67 (the long ones end with IWAE
    /// fine-tune epochs: 2 and 1), ladder-gpu 200].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Fine-tune on the IWAE bound (with --iw-k samples, 5 by default) for this many last
    /// epochs, after the learning-rate schedule, at its final rate; the best checkpoint among
    /// them is chosen on the validation IWAE bound. With --resume, it fine-tunes a finished
    /// run: `--resume RUN --epochs 53 --iwae-epochs 3` [default: 0, none; presets
    /// ladder-long 2, ladder-8bit-long 1].
    #[arg(long)]
    pub iwae_epochs: Option<usize>,
    /// auto, cpu, cuda or cuda:N [default: auto].
    #[arg(long)]
    pub device: Option<Device>,
    /// libtorch CPU threads [default: one per core].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Stop after this many steps (benchmarks).
    #[arg(long, hide = true)]
    pub max_steps: Option<u64>,
    /// Benchmarks: run this many warm-up steps first, then `--max-steps` timed ones, and print
    /// the timed steps' images/s as a JSON line (as the PyTorch peer skips its warm-up steps).
    #[arg(long, hide = true, requires = "max_steps", conflicts_with = "resume")]
    pub untimed_steps: Option<u64>,
    /// Benchmarks: record libtorch's operators during the timed steps of `--untimed-steps`
    /// into this Chrome trace (chrome://tracing, Perfetto), as torch.profiler does; `cargo
    /// xtask bench --breakdown` reads it.
    #[arg(long, hide = true, requires = "untimed_steps")]
    pub profile: Option<PathBuf>,
    /// Train data-parallel on this many processes of this machine (Gloo on the CPU, NCCL on
    /// GPUs), as `torchrun --nproc-per-node N` would launch them; `--batch-size` stays the
    /// global batch. Without it, the torchrun variables (WORLD_SIZE, RANK, ...) are honoured.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub nproc: Option<u16>,
    /// Do not write TensorBoard event files (`events.out.tfevents.*`) into the run directory
    /// [default: write them: `tensorboard --logdir runs` shows every run]
    #[arg(long)]
    pub no_tensorboard: bool,
    #[command(flatten)]
    pub settings: RunSettings,
}

/// The model and training settings of a new run (a resumed run keeps its own).
#[derive(clap::Args, Debug, Default)]
pub struct RunSettings {
    /// Start from a preset (each is described below) [default: default]. --config and flags
    /// override it; the model flags below set the conv VAE (a ladder's keys go in --config's
    /// [model] table).
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    /// Dimension of the latent z [default: 32].
    #[arg(long)]
    pub latent_dim: Option<i64>,
    /// Widths of the encoder's stride-2 convs, comma-separated [default: 32,64].
    #[arg(long, value_delimiter = ',')]
    pub channels: Option<Vec<i64>>,
    /// Add a dense hidden layer of this width to encoder and decoder.
    #[arg(long)]
    pub hidden_dim: Option<i64>,
    /// Residual blocks (two 3x3 convs and a skip) at each conv level of encoder and decoder
    /// [default: 0].
    #[arg(long)]
    pub res_blocks: Option<usize>,
    /// Add an autoregressive head of this width over the decoder's outputs, conv or ladder,
    /// any likelihood, one-channel images (PixelCNN-style masked convs: each pixel also
    /// conditioned on the pixels before it; sampling becomes pixel by pixel) [default: off; 0
    /// turns it off].
    #[arg(long)]
    pub pixel_head: Option<i64>,
    /// Masked conv layers of the pixel head [default: 3].
    #[arg(long)]
    pub pixel_head_layers: Option<usize>,
    /// Observation model p(x | z): bernoulli (binary pixels; training images are binarised),
    /// logistic or logistic:K (a mixture of K discretised logistics over the 256 levels of
    /// 8-bit data; K = --logistic-components or 5) or
    /// continuous-bernoulli (a normalised density on [0, 1]) [default: bernoulli for binary
    /// images and for MNIST itself (a data folder named mnist: the binarised-MNIST protocol);
    /// logistic for other grey-level and colour data, and with presets ladder-8bit and ladder-8bit-long].
    #[arg(long)]
    pub likelihood: Option<Likelihood>,
    /// Components of the logistic mixture [default: 5].
    #[arg(long)]
    pub logistic_components: Option<i64>,
    /// Prior p(z): standard (N(0, I)), or vamp or vamp:K (VampPrior, a mixture of the
    /// posteriors of K learned images; K = --pseudo-inputs or 100) [default: vamp; preset
    /// fast: standard].
    #[arg(long)]
    pub prior: Option<Prior>,
    /// Pseudo-inputs K of the VampPrior [default: 100; preset best: 500].
    #[arg(long)]
    pub pseudo_inputs: Option<i64>,
    /// The training settings.
    #[command(flatten)]
    pub train: TrainFlags,
}

/// The flags of a new run that set [`vae_train::TrainConfig`]: each is named as its key and
/// reaches the run as that key of a `[train]` table laid over it (as a `--config` file is).
#[derive(clap::Args, Debug, Default, serde::Serialize)]
pub struct TrainFlags {
    /// Examples per step [default: 128].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Adam's (peak) learning rate [default: 0.004].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Random seed [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
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
    #[serde(skip)]
    pub no_binarize: bool,
    /// Training images held out for validation, the last ones [default: 10000, or a sixth of
    /// the training set when that is smaller].
    #[arg(long)]
    pub validation_size: Option<usize>,
    /// Training objective: elbo, or iwae (the importance-weighted bound with --iw-k samples).
    #[arg(long, value_enum)]
    pub objective: Option<Objective>,
    /// Importance samples of the iwae objective [default: 5].
    #[arg(long)]
    pub iw_k: Option<i64>,
    /// Free bits: a floor in nats on each latent dimension's batch-mean KL (each group's, for a
    /// ladder model) [default: 0, off].
    #[arg(long)]
    pub free_bits: Option<f64>,
    /// Balance the KL across a ladder model's latent groups during the KL warm-up (NVAE's KL
    /// balancing; needs --kl-warmup-steps).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub kl_balance: bool,
    /// Learning-rate schedule after the warm-up [default: cosine].
    #[arg(long, value_enum)]
    pub lr_schedule: Option<LrSchedule>,
    /// Steps of linear learning-rate warm-up [default: 300].
    #[arg(long)]
    pub warmup_steps: Option<u64>,
    /// Final learning rate of the cosine schedule [default: 0.0001].
    #[arg(long)]
    pub min_lr: Option<f64>,
    /// Stop when the validation ELBO has not improved for this many epochs.
    #[arg(long)]
    pub patience: Option<usize>,
    /// Update rule (adamw with --weight-decay) [default: adam].
    #[arg(long, value_enum)]
    pub optimizer: Option<Optimizer>,
    /// AdamW's decoupled weight decay [default: 0].
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Evaluate and keep an exponential moving average of the weights with this decay
    /// (e.g. 0.999) [default: off].
    #[arg(long)]
    pub ema_decay: Option<f64>,
    /// Arithmetic: auto, fp32 or bf16 (bf16 convs and dense layers; weights, losses and every
    /// evaluation stay f32). auto picks bf16 on CPUs with AMX-BF16 or AVX-512-BF16, fp32
    /// elsewhere and on CUDA; `vae info` says what it picks here [default: auto].
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
}

/// Where a model comes from: a run directory (and which of its checkpoints) or a file.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Run directory made by `vae train`, or a checkpoint file.
    #[arg(long)]
    pub run: PathBuf,
    /// Which checkpoint of a run directory.
    #[arg(long, value_enum, default_value_t = Which::Best)]
    pub checkpoint: Which,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value_t = Device::Auto)]
    pub device: Device,
}

/// A run directory's checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Which {
    /// `best.safetensors`: the best validation ELBO (or IWAE bound, after an IWAE fine-tune).
    Best,
    /// `last.safetensors`: where training stopped.
    Last,
}

/// Options of `vae eval`.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Folder holding the MNIST-format test files.
    #[arg(long, default_value = "data/mnist")]
    pub data: PathBuf,
    /// Importance samples per image for the log-likelihood estimate (0 skips it).
    #[arg(long, default_value_t = 1000)]
    pub iw_samples: i64,
    /// Test images for the importance-weighted estimate (the first N) [default: all].
    #[arg(long)]
    pub images: Option<usize>,
    /// Seed of the binarisation and sampling noise.
    #[arg(long, default_value_t = 123)]
    pub seed: u64,
    /// The arithmetic of the importance-weighted evaluation (where auto takes bf16 products,
    /// it is ~1.3× faster than fp32 and moves the estimate by under 0.001 nats).
    #[arg(long, value_enum, default_value_t = IwPrecision::Auto)]
    pub iw_precision: IwPrecision,
    /// Compute the importance-weighted estimate with the model's reference pass (f32) instead
    /// of its prepared evaluator (the same estimate at the same draws, slower; to check one
    /// against the other).
    #[arg(long, conflicts_with = "iw_precision")]
    pub iw_reference: bool,
    /// Start the importance-weighted evaluation over, ignoring its record. The evaluation
    /// keeps each image's bound beside the checkpoint as it goes
    /// (`<checkpoint>.iw-k<K>-seed<S>-n<N>.csv`, `…-bf16.csv` with bf16 conv products), so
    /// one that is stopped resumes where it stopped when run again, with the same result.
    #[arg(long, conflicts_with = "iw_reference")]
    pub fresh: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Options of `vae sample`.
#[derive(clap::Args, Debug)]
pub struct SampleArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Number of samples (a square-ish grid, 8 per row).
    #[arg(short = 'n', long, default_value_t = 64)]
    pub n: i64,
    /// Seed of the latents and pixels.
    #[arg(long, default_value_t = 0)]
    pub seed: i64,
    /// Scale of the prior's standard deviation (below 1: more typical samples).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Draw images from the likelihood instead of showing its means (for the Bernoulli: binary
    /// pixels instead of their probabilities).
    #[arg(long)]
    pub draw: bool,
    /// Show the likelihood's means (what happens without --draw).
    #[arg(long, hide = true, conflicts_with = "draw")]
    pub mean: bool,
    /// Output PNG [default: <run>/sample.png].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Options of `vae reconstruct`.
#[derive(clap::Args, Debug)]
pub struct ReconstructArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Number of test images.
    #[arg(short = 'n', long, default_value_t = 32)]
    pub n: i64,
    /// Folder holding the MNIST-format test files.
    #[arg(long, default_value = "data/mnist")]
    pub data: PathBuf,
    /// Output PNG [default: <run>/reconstruct.png].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Options of `vae interpolate`.
#[derive(clap::Args, Debug)]
pub struct InterpolateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Index of the first test image.
    #[arg(long)]
    pub from: usize,
    /// Index of the second test image.
    #[arg(long)]
    pub to: usize,
    /// Decoded points along the path (endpoints included).
    #[arg(long, default_value_t = 10)]
    pub steps: i64,
    /// Spherical instead of linear interpolation.
    #[arg(long)]
    pub slerp: bool,
    /// Folder holding the MNIST-format test files.
    #[arg(long, default_value = "data/mnist")]
    pub data: PathBuf,
    /// Output PNG [default: <run>/interpolate-<from>-<to>.png].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Options of `vae manifold`.
#[derive(clap::Args, Debug)]
pub struct ManifoldArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Points per axis (2-D latents) or per traversal row.
    #[arg(long, default_value_t = 20)]
    pub grid: i64,
    /// For larger latents: the test image whose latent mean is traversed.
    #[arg(long, default_value_t = 0)]
    pub image: usize,
    /// For larger latents: how many of the first dimensions to traverse.
    #[arg(long, default_value_t = 10)]
    pub dims: i64,
    /// For larger latents: traverse each dimension over [-span, span].
    #[arg(long, default_value_t = 3.0)]
    pub span: f64,
    /// Folder holding the MNIST-format test files (for traversals).
    #[arg(long, default_value = "data/mnist")]
    pub data: PathBuf,
    /// Output PNG [default: <run>/manifold.png].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Options of `vae latents`.
#[derive(clap::Args, Debug)]
pub struct LatentsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Which split to encode.
    #[arg(long, value_enum, default_value_t = SplitArg::Test)]
    pub split: SplitArg,
    /// Folder holding the MNIST-format files.
    #[arg(long, default_value = "data/mnist")]
    pub data: PathBuf,
    /// CSV of index, label, latent means and log-variances [default: <run>/latents.csv].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also write the latent means as a float32 `.npy` array (N x latent).
    #[arg(long)]
    pub npy: Option<PathBuf>,
    /// Also draw a 2-D scatter coloured by label (the first two dims of a 2-D latent, else
    /// the first two principal components of the means).
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// A data split on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SplitArg {
    /// The test files (`t10k-*`).
    Test,
    /// The training files (`train-*`).
    Train,
}

/// Options of `vae sweep`.
#[derive(clap::Args, Debug)]
pub struct SweepArgs {
    /// Latent sizes to train, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "2,8,16,32,64")]
    pub latent_dims: Vec<i64>,
    /// Epochs per model.
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// Also train each size with tied encoder/decoder conv weights.
    #[arg(long)]
    pub tie_weights: bool,
    /// Folder holding the four MNIST-format IDX files.
    #[arg(long, default_value = "data/mnist")]
    pub data: PathBuf,
    /// Directory for the runs and the table [default: runs/sweep-<timestamp>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Importance samples for the test NLL.
    #[arg(long, default_value_t = 100)]
    pub iw_samples: i64,
    /// Test images for the NLL and active units (the first N).
    #[arg(long, default_value_t = 1000)]
    pub iw_images: usize,
    /// Examples per step.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Training images held out for validation, the last ones [default: 10000, or a sixth of
    /// the training set when that is smaller].
    #[arg(long)]
    pub validation_size: Option<usize>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value_t = Device::Auto)]
    pub device: Device,
    /// libtorch CPU threads.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Seed shared by every model.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Options of `vae export`.
#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Output folder for `model.safetensors` and `model.py` (a PyTorch module of the model)
    /// [default: <run>/export]; with --reference-names, the safetensors file to write.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Instead, write the weights under the names of the PyTorch reference module
    /// (`ref_pytorch_vae.VAE`), for models of its architecture (`--preset fast`).
    #[arg(long)]
    pub reference_names: bool,
}

/// Options of `vae info`.
#[derive(clap::Args, Debug)]
pub struct InfoArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Options of `vae import`.
#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// Folder of PNG images, or of class sub-folders of them.
    pub folder: PathBuf,
    /// Folder to write the IDX files to (e.g. data/<name>).
    #[arg(long)]
    pub out: PathBuf,
    /// Share of the images put in the test split (a seeded shuffle picks them).
    #[arg(long, default_value_t = 0.1)]
    pub test_fraction: f64,
    /// Seed of the split.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Colour that transparent pixels are composited onto: white, black, or #rrggbb.
    #[arg(long, default_value = "white", value_parser = parse_colour)]
    pub background: [u8; 3],
    /// Most pixels one image may have (checked from its header before it is decoded).
    #[arg(long, default_value_t = vae_data::DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
    /// Most memory the decoded set may take, in bytes or with a unit (500M, 8G) [default: a
    /// third of the memory available].
    #[arg(long, value_parser = parse_size)]
    pub max_set_size: Option<u64>,
    /// Import into an --out folder that already holds files: its data-set files are removed
    /// first (other files are left).
    #[arg(long)]
    pub force: bool,
}

/// `white`, `black` or `#rrggbb`.
fn parse_colour(s: &str) -> Result<[u8; 3], String> {
    match s.to_ascii_lowercase().as_str() {
        "white" => return Ok([255; 3]),
        "black" => return Ok([0; 3]),
        _ => {}
    }
    let hex = s.strip_prefix('#').unwrap_or(s);
    let channel = |i: usize| {
        hex.get(i..i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
    };
    match (hex.len(), channel(0), channel(2), channel(4)) {
        (6, Some(r), Some(g), Some(b)) => Ok([r, g, b]),
        _ => Err(format!(
            "{s:?} is not a colour: give white, black or #rrggbb (e.g. #808080)"
        )),
    }
}

/// A byte count: digits with an optional unit K, M, G or T (powers of 1024; `B`, `iB` allowed).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let upper = t.to_ascii_uppercase();
    let digits = upper.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &upper[digits.len()..];
    let shift = match unit {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => {
            return Err(format!(
                "{s:?} has an unknown unit: use K, M, G or T (e.g. 8G)"
            ));
        }
    };
    digits
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1u64 << shift))
        .ok_or_else(|| {
            format!("{s:?} is not a size: give bytes, or a number with K, M, G or T (e.g. 8G)")
        })
}

/// Options of `vae serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Run directory made by `vae train` (it may still be training), or a checkpoint file.
    #[arg(long)]
    pub run: PathBuf,
    /// Which checkpoint of a run directory.
    #[arg(long, value_enum, default_value_t = Which::Best)]
    pub checkpoint: Which,
    /// Where the model runs: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value_t = Device::Cpu)]
    pub device: Device,
    /// Folder with the test set the page shows and encodes (the run's data).
    #[arg(long, default_value = "data/mnist")]
    pub data: PathBuf,
    /// Address to listen on. The default answers this machine only; another address needs
    /// --allow-remote.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    /// Allow a --host off loopback (e.g. 0.0.0.0), reachable from other machines: every request
    /// then needs the random token printed in the URL.
    #[arg(long)]
    pub allow_remote: bool,
    /// Port to listen on (0: any free port; the URL is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Sliders: the latent's principal directions over the test set, or its dimensions when
    /// it has at most this many.
    #[arg(long, default_value_t = 8)]
    pub directions: i64,
    /// Routes for tests: the model thread's job counts and a job that panics.
    #[arg(long, hide = true)]
    pub test_hooks: bool,
}

impl ServeArgs {
    /// The model to load, as the other commands name it.
    pub fn model(&self) -> ModelArgs {
        ModelArgs {
            run: self.run.clone(),
            checkpoint: self.checkpoint,
            device: self.device,
        }
    }
}
