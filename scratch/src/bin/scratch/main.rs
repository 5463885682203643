//! `scratch`: the student's convolution benchmark and the edge-detection demo, run on the
//! from-scratch convolution and on libtorch side by side.

mod bench;
mod edges;
mod flops;
mod torch;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Time naive, fast and libtorch on the student's shape (1x3x128x128 input, 16 filters of
    /// 3x3, stride 1, padding 1) and print medians and speed-ups.
    Bench(bench::Args),
    /// Edge-detect a photo with the scratch conv and with libtorch; write a 3-panel PNG
    /// (photo | scratch | libtorch) and print the max abs difference.
    Edges(edges::Args),
    /// Print the floating-point operations per image of ONNX classifiers (a multiply-add counts
    /// as two), from their Conv and Gemm/MatMul nodes at batch 1.
    Flops(flops::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Bench(args) => bench::run(&args),
        Command::Edges(args) => edges::run(&args),
        Command::Flops(args) => flops::run(&args),
    }
}
