//! The `envfence` binary: logging to stderr (`ENVFENCE_LOG`), then the
//! command line of [`envfence::cli`].

use std::io::IsTerminal as _;

use clap::Parser as _;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_env("ENVFENCE_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let cli = envfence::cli::Cli::parse();
    match envfence::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("envfence: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
