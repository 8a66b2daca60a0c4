//! `vae`: train, evaluate and sample convolutional VAEs on MNIST-format data.

// Doc comments here are the command-line help text, where `<run>` and `[...]` are plain text.
#![allow(rustdoc::invalid_html_tags, rustdoc::broken_intra_doc_links)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod alloc;
mod eval;
mod explore;
mod grid;
mod info;
mod plot;
mod sweep;
mod train;

#[derive(Parser)]
#[command(
    name = "vae",
    version,
    about = "Train, evaluate and sample convolutional VAEs on MNIST-format data (libtorch, CPU or CUDA)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a VAE (default: the reference conv VAE with a VampPrior, 36 epochs on data/mnist; see --preset).
    #[command(allow_negative_numbers = true)]
    Train(Box<train::TrainArgs>),
    /// Evaluate a run on the test set: ELBO and importance-weighted log-likelihood.
    #[command(allow_negative_numbers = true)]
    Eval(eval::EvalArgs),
    /// Draw a grid of images from the prior.
    Sample(explore::SampleArgs),
    /// Show test images above their reconstructions.
    Reconstruct(explore::ReconstructArgs),
    /// Decode the path between two test images' latent means.
    Interpolate(explore::InterpolateArgs),
    /// The decoded latent manifold (2-D latents) or per-dimension traversals (larger ones).
    Manifold(explore::ManifoldArgs),
    /// Latent means and log-variances as CSV (and .npy), with an optional scatter plot.
    Latents(explore::LatentsArgs),
    /// Train one model per latent size and compare them.
    #[command(allow_negative_numbers = true)]
    Sweep(sweep::SweepArgs),
    /// Write the weights with the PyTorch reference module's parameter names.
    Export(explore::ExportArgs),
    /// What libtorch can do here: CUDA, devices, threads.
    Info(info::InfoArgs),
}

/// Exit status for a run stopped by Ctrl-C (128 + SIGINT), as shells expect.
pub const EXIT_INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    alloc::keep_freed_memory();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Train(args) => train::run(*args),
        Command::Eval(args) => eval::run(args),
        Command::Sample(args) => explore::sample(args),
        Command::Reconstruct(args) => explore::reconstruct(args),
        Command::Interpolate(args) => explore::interpolate(args),
        Command::Manifold(args) => explore::manifold(args),
        Command::Latents(args) => explore::latents(args),
        Command::Sweep(args) => sweep::run(args),
        Command::Export(args) => explore::export(args),
        Command::Info(args) => info::run(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
