//! `cargo xtask`: the project's task runner.
//!
//! `setup` fetches, verifies and caches the native runtimes (libtorch, ONNX Runtime) and the
//! tools (cargo-lambda, linters); `test` runs every check CI runs; `serve` serves the bundled
//! model. Every command that needs the runtimes runs `setup` first, so a fresh clone needs no
//! manual step.

mod native;
mod paths;
mod tasks;
mod tools;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Project tasks: setup, test, serve, package")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fetch, verify and cache libtorch, ONNX Runtime and the tools (idempotent, offline once cached).
    Setup,
    /// Formatting, clippy, every test of the workspace, and the infrastructure lints.
    Test,
    /// Build and serve the bundled model on http://127.0.0.1:8080.
    Serve {
        /// Extra arguments passed to `infer serve`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Setup => tasks::setup().map(|env| env.print()),
        Command::Test => tasks::test(),
        Command::Serve { args } => tasks::serve(&args),
    }
}
