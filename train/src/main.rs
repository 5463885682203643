//! `train`: the command line over the `train` library (summary, fit, eval, download, bench, export).

use anyhow::Result;
use clap::{Parser, Subcommand};

use train::model::ResNetConfig;

#[derive(Debug, Parser)]
#[command(
    name = "train",
    version,
    about = "ResNet-18 from scratch on libtorch: CIFAR-10 training, evaluation and ONNX export"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print every layer with its output shape and parameter count.
    Summary {
        /// Channels of the first stage (64 = standard ResNet-18).
        #[arg(long, default_value_t = 64)]
        width: i64,
        #[arg(long, default_value_t = 10)]
        num_classes: i64,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Summary { width, num_classes } => {
            let summary = train::summary::summarise(ResNetConfig { width, num_classes }, 2)?;
            println!("{summary}");
        }
    }
    Ok(())
}
