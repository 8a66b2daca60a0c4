//! `vae`: train, evaluate and sample VAEs on MNIST-format data.
//!
//! `args` holds every command's arguments; `commands/` one module per command with its logic;
//! the rest draws pictures (`grid`, `plot`, `curves`) and progress bars (`progress`).

use std::process::ExitCode;

use clap::Parser;

mod alloc;
mod args;
mod commands;
mod curves;
mod grid;
mod plot;
mod progress;

use args::{Cli, Command};

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
        Command::Train(args) => commands::train::run(*args),
        Command::Eval(args) => commands::eval::run(args),
        Command::Sample(args) => commands::sample::run(args),
        Command::Reconstruct(args) => commands::reconstruct::run(args),
        Command::Interpolate(args) => commands::interpolate::run(args),
        Command::Manifold(args) => commands::manifold::run(args),
        Command::Latents(args) => commands::latents::run(args),
        Command::Sweep(args) => commands::sweep::run(args),
        Command::Export(args) => commands::export::run(args),
        Command::Info(args) => commands::info::run(args),
        Command::Import(args) => commands::import::run(args),
        Command::Serve(args) => commands::serve::run(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
