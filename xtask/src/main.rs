//! Project automation for vae-rs, run as `cargo xtask <task>` (an alias in `.cargo/config.toml`).
//!
//! Plain Rust instead of shell scripts; it never links libtorch, so it builds on a bare machine.

// Doc comments here are the command-line help text, where `<run>` and `[...]` are plain text.
#![allow(rustdoc::invalid_html_tags, rustdoc::broken_intra_doc_links)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

mod ablation;
mod bench;
mod datasets;
mod gpu;
mod libtorch;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Tasks for the vae-rs workspace",
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Only {
    /// Only make libtorch available.
    Libtorch,
    /// Only fetch datasets.
    Data,
}

// Parsed once per run: the bench's many flags make its variant large, which costs nothing here.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Task {
    /// Make libtorch 2.11 available to the build and fetch datasets into data/<name>/.
    Download {
        /// Dataset to fetch (repeatable): mnist, fashion-mnist.
        #[arg(long = "dataset", default_value = "mnist")]
        datasets: Vec<String>,
        /// A URL or local directory to fetch dataset files from instead of the canonical mirrors
        /// (repeatable; tried in order).
        #[arg(long = "mirror")]
        mirrors: Vec<String>,
        /// Fetch (or reinstall) even what is present and verified.
        #[arg(long)]
        force: bool,
        /// Do only one half.
        #[arg(long, value_enum)]
        only: Option<Only>,
    },
    /// Time `vae train` against the PyTorch peer, side by side (and with --quality, compare
    /// test ELBO and IW NLL after full training).
    Bench {
        /// Training steps per timed run.
        #[arg(long, default_value_t = 300)]
        steps: u64,
        /// Rounds of ours and each peer configuration, in alternating order; 0 skips timing.
        /// The machines here are noisy (single pairs range ~1.0-1.8): 5 keeps the median
        /// steadier.
        #[arg(long, default_value_t = 5)]
        pairs: usize,
        /// CPU threads for both.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Batch size for both.
        #[arg(long, default_value_t = 128)]
        batch: usize,
        /// cpu or cuda.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Also train both fully and compare test ELBO, IW NLL and time to the peer's ELBO.
        #[arg(long)]
        quality: bool,
        /// Epochs of the peer's --quality run (the reference protocol is 10).
        #[arg(long, default_value_t = 10)]
        epochs: usize,
        /// Epochs of our --quality run [default: `vae train`'s default].
        #[arg(long)]
        our_epochs: Option<usize>,
        /// Importance samples of the --quality evaluation.
        #[arg(long, default_value_t = 1000)]
        iw: u64,
        /// Test images of the --quality IW evaluation.
        #[arg(long, default_value_t = 500)]
        iw_images: usize,
        /// The peer script [default: ../shared/bench/ref_pytorch_vae.py].
        #[arg(long)]
        peer: Option<PathBuf>,
        /// Use this prebuilt `vae` binary instead of building one (for a machine with
        /// libtorch but no Rust, such as a lent GPU machine).
        #[arg(long)]
        vae: Option<PathBuf>,
        /// The Python (with torch 2.11) that runs the peer [default: the one `cargo xtask
        /// download` found or installed].
        #[arg(long)]
        python: Option<PathBuf>,
        /// The mimalloc shared library the peer runs with for its "with our allocator" runs
        /// [default: built from the libmimalloc-sys source `vae` links, with `cc`]. For a
        /// machine without Rust, build it here and pass it.
        #[arg(long)]
        peer_allocator: Option<PathBuf>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Our side's arithmetic (`vae train --precision`): auto, fp32 or bf16 [default: vae
        /// train's, auto].
        #[arg(long)]
        precision: Option<String>,
        /// The peer configurations timed in each pair, comma-separated: eager (the reference
        /// script as users run it, the ratio's denominator), eager-mimalloc, bf16-channels-last,
        /// compile, compile-bf16-channels-last [default: all; the bf16 ones only on a CPU with
        /// bf16 hardware]. With --model ladder (training), bf16-channels-last adds the module in
        /// bf16 autocast + channels-last to its fixed columns.
        #[arg(long, value_delimiter = ',')]
        peers: Option<Vec<bench::PeerConfig>>,
        /// The model: conv (the reference conv VAE against ref_pytorch_vae.py) or ladder (the
        /// ladder preset against the PyTorch module `vae export` writes for it).
        #[arg(long, value_enum, default_value = "conv")]
        model: bench::BenchModel,
        /// With --model ladder: time the importance-weighted evaluation (k = --iw samples of
        /// each of the first --iw-images test images) instead of training.
        #[arg(long)]
        eval: bool,
        /// With --model ladder: the ladder run to export and time [default: one trained here
        /// for --ladder-epochs].
        #[arg(long)]
        run: Option<PathBuf>,
        /// With --model ladder and no --run: epochs of the run trained first.
        #[arg(long, default_value_t = 1)]
        ladder_epochs: usize,
        /// Instead of the pairs: one profiled training run of ours and one of the peer (eager),
        /// each --steps timed steps under libtorch's profiler, and the step's time by
        /// operation, ours beside the peer's (with --model: conv or ladder).
        #[arg(long, conflicts_with_all = ["eval", "quality"])]
        breakdown: bool,
    },
    /// Train with the release binary on the GPU if there is one (after making sure libtorch
    /// and data are present); arguments after `--` go to `vae train`.
    Train {
        /// Require CUDA: fail, naming the missing part, if it cannot be used.
        #[arg(long)]
        cuda: bool,
        /// A URL or local directory to fetch MNIST from if it is missing (repeatable).
        #[arg(long = "mirror")]
        mirrors: Vec<String>,
        /// Arguments for `vae train`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Train the default and each option switched on alone, for the same epochs, and print
    /// a table of best validation ELBO and training time.
    Ablation {
        /// Epochs of every run.
        #[arg(long, default_value_t = 5)]
        epochs: usize,
        /// CPU threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Run only these variants (repeatable; the default always runs).
        #[arg(long)]
        only: Vec<String>,
        /// Keep the runs in runs/ablation/<variant>.
        #[arg(long)]
        keep: bool,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Put the release `vae` binary and a launcher (`run.sh`, which finds libtorch in an
    /// existing Python's torch) into target/dist/, to run where there is PyTorch but no Rust.
    Dist,
}

/// The cargo that runs us (`$CARGO`), for building the workspace's binaries.
fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// The workspace root: where this xtask was built from, or, for a prebuilt xtask binary
/// copied to another machine (a lent GPU machine without Rust), the current directory.
fn root() -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf();
    if built.join("Cargo.toml").is_file() {
        built
    } else {
        std::env::current_dir().unwrap_or(built)
    }
}

fn download(
    datasets: &[String],
    mirrors: &[String],
    force: bool,
    only: Option<Only>,
) -> Result<()> {
    let root = root();
    if only != Some(Only::Data) {
        let lt = libtorch::ensure(&root, force)?;
        // Tests and benchmarks run the PyTorch peer with this Python.
        let record = root.join(".libtorch-python");
        match &lt.python {
            Some(p) => std::fs::write(&record, format!("{}\n", p.display()))?,
            None => {
                let _ = std::fs::remove_file(&record);
            }
        }
        println!(
            "libtorch: torch {} at {}{} -> .libtorch",
            lt.version,
            lt.dir.display(),
            if lt.has_cuda() {
                " (with CUDA)"
            } else {
                " (CPU only)"
            }
        );
        // NCCL's process group compiles against CUDA headers that the torch wheel leaves out.
        if lt.has_cuda() {
            match libtorch::ensure_cuda_headers(&root) {
                Ok(dir) => println!("CUDA headers for NCCL: {}", dir.display()),
                Err(e) => eprintln!(
                    "warning: {e:#}; vae builds without NCCL (training on several GPUs) until they are installed"
                ),
            }
        }
        // The TensorBoard round-trip test reads event files back with the real package.
        match libtorch::ensure_tensorboard(&root) {
            Ok(python) => println!("tensorboard: in {}", python.display()),
            Err(e) => eprintln!(
                "warning: {e:#}; the TensorBoard read-back test (tests/watch.rs) will fail until it is installed"
            ),
        }
    }
    if only != Some(Only::Libtorch) {
        // Relative local mirrors are relative to where the user ran the command.
        let cwd = std::env::current_dir()?;
        let mirrors: Vec<String> = mirrors
            .iter()
            .map(|m| {
                if m.contains("://") {
                    m.clone()
                } else {
                    cwd.join(m).display().to_string()
                }
            })
            .collect();
        for name in datasets {
            let spec = datasets::known(name)?;
            let dir = root.join("data").join(&spec.name);
            let outcomes = datasets::fetch_dataset(&spec, &dir, &mirrors, force)
                .with_context(|| format!("downloading {name}"))?;
            for (file, outcome) in outcomes {
                match outcome {
                    datasets::Outcome::Present => println!("{name}: {file} present, verified"),
                    datasets::Outcome::Fetched(src) => {
                        println!("{name}: {file} fetched from {src}, verified")
                    }
                }
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Download {
            datasets,
            mirrors,
            force,
            only,
        } => download(&datasets, &mirrors, force, only),
        Task::Bench {
            steps,
            pairs,
            threads,
            batch,
            device,
            quality,
            epochs,
            our_epochs,
            iw,
            iw_images,
            peer,
            vae,
            python,
            peer_allocator,
            json,
            precision,
            peers,
            model,
            eval,
            run,
            ladder_epochs,
            breakdown,
        } => {
            let default_peers = peers.is_none();
            let mut peers = peers.unwrap_or_else(|| bench::PeerConfig::ALL.to_vec());
            if !peers.contains(&bench::PeerConfig::Eager) {
                // Every ratio is against the reference script as users run it.
                peers.insert(0, bench::PeerConfig::Eager);
            }
            let args = bench::BenchArgs {
                steps,
                pairs,
                threads,
                batch,
                device,
                json,
                quality,
                epochs,
                our_epochs,
                iw,
                iw_images,
                peer,
                vae,
                python,
                peer_allocator,
                precision,
                peers,
                default_peers,
                model,
                eval,
                run,
                ladder_epochs,
                breakdown,
            };
            if eval && model != bench::BenchModel::Ladder {
                Err(anyhow::anyhow!(
                    "--eval times the ladder's evaluation: add --model ladder"
                ))
            } else {
                bench::run(&root(), &cargo(), &args)
            }
        }
        Task::Train {
            cuda,
            mirrors,
            args,
        } => download(&["mnist".to_string()], &mirrors, false, None)
            .and_then(|()| gpu::train(&root(), &cargo(), cuda, &args)),
        Task::Dist => gpu::dist(&root(), &cargo()),
        Task::Ablation {
            epochs,
            threads,
            only,
            keep,
            json,
        } => ablation::run(
            &root(),
            &cargo(),
            &ablation::AblationArgs {
                epochs,
                threads,
                only,
                keep,
                json,
            },
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
