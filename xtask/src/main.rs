//! `cargo xtask`: the project's task runner.
//!
//! `setup` fetches, verifies and caches the native runtimes (libtorch, ONNX Runtime) and the
//! tools (cargo-lambda, linters); `test` runs every check CI runs; `serve` serves the bundled
//! model. Every command that needs the runtimes runs `setup` first, so a fresh clone needs no
//! manual step.

mod arm64_run;
mod debian;
mod elf;
mod env;
mod lint;
mod native;
mod package;
mod paths;
mod rehearsal;
mod tasks;
mod tools;

use std::path::PathBuf;

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
    /// Every check CI runs, in order; name steps to run only those (set-up covers only what they
    /// need).
    #[command(after_help = steps_help())]
    Test {
        /// Steps to run [default: all of them]
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(tasks::STEPS.iter().map(|s| s.name)))]
        steps: Vec<String>,
    },
    /// Build and serve the bundled model on http://127.0.0.1:8080.
    Serve {
        /// Extra arguments passed to `infer serve`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the Lambda zip: `infer` as `bootstrap`, `libonnxruntime.so`, and optionally the model.
    Package {
        #[arg(long, value_enum, default_value_t = package::Arch::Arm64)]
        arch: package::Arch,
        /// The ONNX model to put in the zip as `model.onnx`; without it the function loads its
        /// model from S3 (the template's `ModelKey`).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Where to write the zip [default: target/lambda/infer-<arch>.zip].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run the infrastructure linters (cfn-lint, checkov, actionlint, zizmor, hadolint).
    Lint,
    /// Rehearse a release offline: the deploy workflow's `sam` commands against a local
    /// emulator, the function role enforced by a local IAM, the smoke test (needs the zip from
    /// `package` and the debug `infer` from `cargo build`).
    Rehearse,
    /// Run target/lambda/infer-arm64.zip under qemu-aarch64 behind cargo-lambda's runtime API
    /// and check that it answers like x86-64 (the last step of `test`).
    RehearseArm64,
}

fn steps_help() -> String {
    let mut help = String::from("Steps:\n");
    for step in tasks::STEPS {
        help.push_str(&format!("  {:<15} {}\n", step.name, step.about));
    }
    help
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Setup => tasks::setup().map(|env| env.print()),
        Command::Test { steps } => tasks::test(&steps),
        Command::Serve { args } => tasks::serve(&args),
        Command::Package { arch, model, out } => tasks::package(arch, model.as_deref(), out),
        Command::Lint => tasks::lint(),
        Command::Rehearse => tasks::rehearse(),
        Command::RehearseArm64 => tasks::rehearse_arm64(),
    }
}
