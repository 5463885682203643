//! `train`: the command line over the `train` library: summary, fit, eval, download, bench, export.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use tch::Device;

use train::fit::RunSettings;
use train::model::ResNetConfig;
use train::optim::Schedule;
use train::options::FitOptions;

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

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DeviceArg {
    /// CUDA when available, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Toggle {
    /// Decided from the device (see `--help` of the option).
    Auto,
    On,
    Off,
}

#[derive(Debug, Args)]
struct Machine {
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
    /// Intra-op threads for libtorch (default: libtorch's choice, one per core).
    #[arg(long)]
    threads: Option<i32>,
    /// Channels-last memory format; auto = on for CUDA and, on a CPU, for widths that are a
    /// multiple of 8 (faster there in `train bench`; narrower layers crash oneDNN, see README).
    #[arg(long, value_enum, default_value = "auto")]
    channels_last: Toggle,
}

impl Machine {
    fn apply(&self) -> Result<Device> {
        if let Some(n) = self.threads {
            if n < 1 {
                bail!("--threads must be at least 1, got {n}");
            }
            tch::set_num_threads(n);
        }
        let device = match self.device {
            DeviceArg::Auto => Device::cuda_if_available(),
            DeviceArg::Cpu => Device::Cpu,
            DeviceArg::Cuda => {
                if !tch::Cuda::is_available() {
                    bail!("--device cuda: no CUDA device is available to libtorch (this build may be CPU-only)");
                }
                Device::Cuda(0)
            }
        };
        if device.is_cuda() {
            // Every batch has the same shape, so cuDNN's one-off algorithm search pays back.
            tch::Cuda::cudnn_set_benchmark(true);
            // Mixed precision goes through tch's `autocast`, which makes libtorch print a
            // deprecation warning three times a step; errors still print.
            train::torch_log::set_level_from_env_or(2);
        }
        Ok(device)
    }

    fn channels_last(&self, device: Device, width: i64) -> bool {
        match self.channels_last {
            Toggle::On => true,
            Toggle::Off => false,
            Toggle::Auto => train::layout::channels_last_supported(width, device),
        }
    }
}

/// Options of `fit`; those left out come from the defaults, or on `--resume` from the run
/// (which is why they are `Option`s: their help shows the defaults, see [`with_fit_defaults`]).
#[derive(Debug, Args)]
struct FitArgs {
    /// Data set: a directory (CIFAR binary or train/<class>/ image folders) or a .tar.gz of one.
    #[arg(long)]
    data: PathBuf,
    /// Run directory: checkpoint.pt, metrics.jsonl, charts and model.onnx go here.
    #[arg(long)]
    out: PathBuf,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    resume: bool,
    #[arg(long)]
    epochs: Option<u32>,
    #[arg(long)]
    batch_size: Option<i64>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    momentum: Option<f64>,
    /// On conv and linear weights only.
    #[arg(long)]
    weight_decay: Option<f64>,
    #[arg(long)]
    label_smoothing: Option<f64>,
    #[arg(long, value_enum)]
    schedule: Option<Schedule>,
    /// Warm-up of the warmup-cosine schedule.
    #[arg(long)]
    warmup_epochs: Option<f64>,
    /// Channels of the first stage (64 = standard ResNet-18).
    #[arg(long)]
    width: Option<i64>,
    #[arg(long)]
    seed: Option<u64>,
    /// Turn off random crop and flip.
    #[arg(long)]
    no_augment: bool,
    /// Evaluate with flip test-time augmentation.
    #[arg(long)]
    flip_tta: bool,
    /// Train on a random subset of this many images.
    #[arg(long)]
    limit_train: Option<i64>,
    /// Evaluate on a random subset of this many test images.
    #[arg(long)]
    limit_test: Option<i64>,
    /// Do not export RUN_DIR/model.onnx at the end.
    #[arg(long)]
    no_export: bool,
    /// No mixed precision on CUDA.
    #[arg(long)]
    no_amp: bool,
    #[command(flatten)]
    machine: Machine,
}

impl FitArgs {
    fn options(&self) -> Result<FitOptions> {
        let ckpt = self.out.join(train::fit::CHECKPOINT_FILE);
        let mut o = if self.resume && ckpt.exists() {
            train::fit::stored_options(&ckpt)?
        } else {
            FitOptions::default()
        };
        macro_rules! take {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { o.$field = v; } )* };
        }
        take!(
            epochs,
            batch_size,
            lr,
            momentum,
            weight_decay,
            label_smoothing,
            schedule,
            warmup_epochs,
            width,
            seed
        );
        if self.limit_train.is_some() {
            o.limit_train = self.limit_train;
        }
        if self.limit_test.is_some() {
            o.limit_test = self.limit_test;
        }
        if self.no_augment {
            o.augment = false;
        }
        if self.flip_tta {
            o.flip_tta = true;
        }
        Ok(o)
    }
}

/// Appends `[default: X]` to the help of every `fit` option that is a field of [`FitOptions`],
/// X read from `FitOptions::default()` (the arguments' ids are the fields' names).
fn with_fit_defaults(cli: clap::Command) -> clap::Command {
    let Ok(serde_json::Value::Object(defaults)) = serde_json::to_value(FitOptions::default()) else {
        return cli;
    };
    cli.mut_subcommand("fit", |fit| {
        fit.mut_args(|arg| {
            let value = match defaults.get(arg.get_id().as_str()) {
                Some(serde_json::Value::String(s)) => s.clone(),
                // As Rust prints the number: `2`, not serde_json's `2.0`.
                Some(serde_json::Value::Number(n)) => n.as_f64().map_or_else(|| n.to_string(), |f| f.to_string()),
                // Flags (`--flip-tta`) and options without a default (`--limit-train`).
                _ => return arg,
            };
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            arg.help(format!("{help} [default: {value}]").trim_start().to_owned())
        })
    })
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
    /// Train (or resume) a run; writes checkpoints, metrics.jsonl, charts and model.onnx.
    Fit(Box<FitArgs>),
    /// Accuracy, per-class accuracy and confusion matrix of a checkpoint on a data set's test split.
    Eval {
        #[arg(long)]
        checkpoint: PathBuf,
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value_t = 256)]
        batch_size: i64,
        /// Average the logits of each image and its mirror image.
        #[arg(long)]
        flip_tta: bool,
        /// Also draw the confusion matrix into this PNG.
        #[arg(long)]
        confusion_png: Option<PathBuf>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        machine: Machine,
    },
    /// Fetch the official CIFAR-10 binary release, verify its MD5 and unpack it.
    Download {
        /// Where to put the archive and the unpacked data.
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = train::download::CIFAR10_BINARY_URL)]
        url: String,
        #[arg(long, default_value = train::download::CIFAR10_BINARY_MD5)]
        md5: String,
        /// Verify and unpack an archive already downloaded instead of fetching.
        #[arg(long)]
        archive: Option<PathBuf>,
    },
    /// Time training steps on random data: images per second on this machine.
    Bench {
        #[arg(long, default_value_t = 64)]
        width: i64,
        #[arg(long, default_value_t = 128)]
        batch_size: i64,
        /// Timed steps.
        #[arg(long, default_value_t = 20)]
        steps: u32,
        /// Untimed steps first.
        #[arg(long, default_value_t = 3)]
        warmup: u32,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        #[arg(long)]
        no_amp: bool,
        #[command(flatten)]
        machine: Machine,
    },
    /// Write a checkpoint (or a freshly initialised network) as ONNX with the model's contract in its metadata.
    Export {
        #[arg(long, required_unless_present = "init", conflicts_with = "init")]
        checkpoint: Option<PathBuf>,
        /// Export a freshly initialised network instead of a checkpoint: random weights, CIFAR-10's
        /// classes and statistics, the cost of a trained one (for serving benchmarks).
        #[arg(long)]
        init: bool,
        /// Channels of the first stage of the --init network [default: 64, the standard ResNet-18].
        #[arg(long, conflicts_with = "checkpoint")]
        width: Option<i64>,
        /// libtorch's seed for the --init network's weights [default: 0].
        #[arg(long, conflicts_with = "checkpoint")]
        seed: Option<i64>,
        #[arg(long, default_value = "model.onnx")]
        out: PathBuf,
        #[arg(long, default_value_t = train::export::DEFAULT_OPSET)]
        opset: i64,
        /// Store weights as float16 (about half the file); input and output stay float32.
        #[arg(long)]
        fp16: bool,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // Colour only on a terminal: logs piped to a file or CI stay plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let progress = std::io::stderr().is_terminal();
    let cli = Cli::from_arg_matches(&with_fit_defaults(Cli::command()).get_matches()).unwrap_or_else(|e| e.exit());
    match cli.command {
        Command::Summary { width, num_classes } => {
            let summary = train::summary::summarise(ResNetConfig { width, num_classes }, 2)?;
            println!("{summary}");
        }
        Command::Fit(args) => {
            let device = args.machine.apply()?;
            let opts = args.options()?;
            let settings = RunSettings {
                data: args.data.clone(),
                out: args.out.clone(),
                device,
                resume: args.resume,
                channels_last: args.machine.channels_last(device, opts.width),
                amp: !args.no_amp,
                progress,
                export: !args.no_export,
                stop_after: None,
            };
            let report = train::fit::fit(&settings, &opts)?;
            println!("{}", report.final_eval.report(&report.class_names));
            println!("run directory: {}", report.run_dir.display());
            println!("checkpoint:    {}", report.checkpoint.display());
            if let Some(onnx) = &report.onnx {
                println!("ONNX model:    {}", onnx.display());
            }
        }
        Command::Eval {
            checkpoint,
            data,
            batch_size,
            flip_tta,
            confusion_png,
            json,
            machine,
        } => {
            let device = machine.apply()?;
            let (_vs, model, info) = train::checkpoint::load_for_inference(&checkpoint, device)?;
            let ds = train::data::load(&data)?;
            if ds.class_names != info.class_names {
                bail!(
                    "{} has classes {:?} but {} was trained on {:?}",
                    data.display(),
                    ds.class_names,
                    checkpoint.display(),
                    info.class_names
                );
            }
            let norm = train::data::Normalizer::new(info.mean, info.std, device);
            let eval = train::eval::evaluate(&model, &ds.test, &norm, batch_size, device, flip_tta)?;
            if let Some(png) = &confusion_png {
                train::plots::confusion_matrix(png, &eval.confusion, &info.class_names)?;
            }
            if json {
                let value = serde_json::json!({
                    "checkpoint": checkpoint,
                    "data": data,
                    "class_names": info.class_names,
                    "accuracy": eval.accuracy,
                    "loss": eval.loss,
                    "images": eval.images,
                    "per_class_accuracy": eval.per_class(),
                    "confusion": eval.confusion,
                });
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                println!("{}", eval.report(&info.class_names));
            }
        }
        Command::Download { dir, url, md5, archive } => {
            let root = match archive {
                Some(archive) => train::download::verify_and_unpack(&archive, &md5, &dir)?,
                None => train::download::download(&url, &md5, &dir, progress)?,
            };
            println!("data ready: train fit --data {}", root.display());
        }
        Command::Bench {
            width,
            batch_size,
            steps,
            warmup,
            json,
            no_amp,
            machine,
        } => {
            let device = machine.apply()?;
            if batch_size < 2 || steps < 1 {
                bail!("--batch-size must be at least 2 and --steps at least 1");
            }
            let opts = train::bench::BenchOptions {
                width,
                batch_size,
                steps,
                warmup,
                device: format!("{device:?}").to_lowercase(),
                channels_last: machine.channels_last(device, width),
                amp: !no_amp && device.is_cuda(),
                threads: tch::get_num_threads(),
            };
            let report = train::bench::bench(&opts, device).context("benchmark failed")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{report}");
            }
        }
        Command::Export {
            checkpoint,
            init,
            width,
            seed,
            out,
            opset,
            fp16,
        } => {
            let report = if init {
                let width = width.unwrap_or(64);
                let seed = seed.unwrap_or(0);
                train::export::export_initialised(&train::export::InitOptions {
                    width,
                    seed,
                    out,
                    opset,
                    fp16,
                })
                .with_context(|| format!("exporting a freshly initialised network of --width {width}"))?
            } else {
                // clap requires one of the two.
                let checkpoint = checkpoint.context("give --checkpoint or --init")?;
                train::export::export_checkpoint(&train::export::ExportOptions {
                    checkpoint,
                    out,
                    opset,
                    fp16,
                })?
            };
            println!("{report}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_help_shows_the_defaults_that_fit_uses() -> Result<()> {
        let mut cli = with_fit_defaults(Cli::command());
        let help = cli
            .find_subcommand_mut("fit")
            .context("no fit subcommand")?
            .render_help()
            .to_string();
        let d = FitOptions::default();
        for shown in [
            format!("[default: {}]", d.epochs),
            format!("[default: {}]", d.batch_size),
            format!("Peak learning rate [default: {}]", d.lr),
            format!("[default: {}]", d.weight_decay),
            format!("[default: {}]", d.warmup_epochs),
            "[default: one-cycle]".to_owned(),
        ] {
            assert!(help.contains(&shown), "{shown} in\n{help}");
        }
        // Given nothing, a new run trains with exactly those defaults.
        let cli = Cli::try_parse_from(["train", "fit", "--data", "d", "--out", "/nonexistent/run"])?;
        let Command::Fit(args) = cli.command else {
            bail!("parsed as another command");
        };
        assert_eq!(args.options()?, d);
        Ok(())
    }
}
