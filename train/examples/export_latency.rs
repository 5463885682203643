//! Which export serves faster in ONNX Runtime: BatchNorm folded into the Conv weights, or
//! BatchNormalization nodes, each with float32 or float16 weights.
//!
//! For each variant it reports the file size, the session creation time (ONNX Runtime parses
//! and optimises the graph: a Lambda cold start pays it) and the per-call latency at batch 1 and
//! 8, with ONNX Runtime's default graph optimisations (which fuse Conv+BatchNormalization
//! themselves) and with optimisations disabled; plus how far float16 weights move the logits.
//!
//! ```text
//! cargo run --release -p train --example export_latency -- --width 64 --iters 100
//! ```
//! Figures go to `train/EXPORT.md`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::Tensor as OrtTensor;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};
use train::checkpoint::CheckpointInfo;
use train::export::{self, BatchNormMode, GraphOptions};
use train::model::{ResNet18, ResNetConfig};

#[derive(Debug, Parser)]
struct Args {
    /// Channels of the first stage (64 = standard ResNet-18).
    #[arg(long, default_value_t = 64)]
    width: i64,
    /// Timed calls per measurement (after 10 warm-up calls).
    #[arg(long, default_value_t = 100)]
    iters: usize,
    /// Session creations per measurement.
    #[arg(long, default_value_t = 5)]
    loads: usize,
    /// ONNX Runtime intra-op threads (0 = its default, one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Measure a trained checkpoint instead of random weights.
    #[arg(long)]
    checkpoint: Option<std::path::PathBuf>,
    /// Also write each variant to `DIR/<variant>.onnx` (with its sidecar), e.g. for
    /// `scripts/check_onnx.py`.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<std::path::PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dylib = std::env::var("ORT_DYLIB_PATH").context("ORT_DYLIB_PATH (set by .cargo/config.toml)")?;
    let env = ort::init_from(&dylib)?.with_name("export-latency").build()?;

    let (_vs, model, info) = match &args.checkpoint {
        Some(path) => train::checkpoint::load_for_inference(path, Device::Cpu)?,
        None => {
            let (vs, model) = random_model(args.width)?;
            let info = CheckpointInfo::untrained(model.config);
            (vs, model, info)
        }
    };
    let meta = export::metadata_for(&info);
    let width = model.config.width;
    let classes = model.config.num_classes as usize;
    tch::manual_seed(11);
    let probe = Tensor::randn([256, 3, 32, 32], (Kind::Float, Device::Cpu));
    let probe_pixels = Vec::<f32>::try_from(probe.flatten(0, -1))?;

    println!(
        "width {width}, {} intra-op threads, {} timed calls per cell (median / p90 in ms)\n",
        if args.threads == 0 {
            "default".to_owned()
        } else {
            args.threads.to_string()
        },
        args.iters
    );
    println!(
        "| variant | file MB | session load ms | batch 1 ms (opt) | batch 8 ms (opt) | batch 1 ms (no opt) | max abs logit diff vs tch | argmax agree (256) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let reference = Vec::<f32>::try_from(model.forward_checked(&probe, false)?.flatten(0, -1))?;
    for (batch_norm, fp16) in [
        (BatchNormMode::Fold, false),
        (BatchNormMode::Nodes, false),
        (BatchNormMode::Fold, true),
        (BatchNormMode::Nodes, true),
    ] {
        let opts = GraphOptions {
            batch_norm,
            fp16,
            ..GraphOptions::default()
        };
        let bytes = export::export_model(&model, &meta, &opts)?;
        if let Some(dir) = &args.out_dir {
            let name = format!("{batch_norm:?}-{}.onnx", if fp16 { "fp16" } else { "fp32" }).to_lowercase();
            export::export_to_file(&model, &meta, &dir.join(name), &opts)?;
        }
        let builder = |level: GraphOptimizationLevel| -> Result<Session> {
            // The builder's errors carry the builder, which is not `Send`: keep their message.
            let msg = |e: ort::Error<ort::session::builder::SessionBuilder>| anyhow::anyhow!("{e}");
            let mut b = Session::builder(&env)?.with_optimization_level(level).map_err(msg)?;
            if args.threads > 0 {
                b = b.with_intra_threads(args.threads).map_err(msg)?;
            }
            Ok(b.commit_from_memory(&bytes)?)
        };
        let mut loads = Vec::new();
        for _ in 0..args.loads {
            let t = Instant::now();
            drop(builder(GraphOptimizationLevel::All)?);
            loads.push(t.elapsed());
        }
        let mut session = builder(GraphOptimizationLevel::All)?;
        let b1 = latency(&mut session, &probe_pixels, 1, args.iters)?;
        let b8 = latency(&mut session, &probe_pixels, 8, args.iters)?;
        let got = run(&mut session, &probe_pixels, 256)?;
        let mut plain = builder(GraphOptimizationLevel::Disable)?;
        let b1_plain = latency(&mut plain, &probe_pixels, 1, args.iters)?;
        let diff = reference
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        let agree = argmax(&reference, classes)
            .iter()
            .zip(argmax(&got, classes))
            .filter(|(a, b)| **a == *b)
            .count();
        println!(
            "| {batch_norm:?} {} | {:.2} | {} | {} | {} | {} | {diff:.1e} | {agree}/256 |",
            if fp16 { "fp16" } else { "fp32" },
            bytes.len() as f64 / 1e6,
            stats(&mut loads),
            b1,
            b8,
            b1_plain,
        );
    }
    Ok(())
}

fn random_model(width: i64) -> Result<(VarStore, ResNet18)> {
    tch::manual_seed(7);
    let vs = VarStore::new(Device::Cpu);
    let model = ResNet18::new(&vs.root(), ResNetConfig { width, num_classes: 10 })?;
    // Non-trivial BatchNorm statistics, as after training.
    tch::no_grad(|| {
        for (name, mut t) in vs.variables() {
            let n = t.size()[0];
            let f = (Kind::Float, Device::Cpu);
            if name.ends_with("running_var") || name.ends_with("bn.weight") {
                t.copy_(&(Tensor::rand([n], f) + 0.5));
            } else if name.ends_with("running_mean") || name.ends_with("bn.bias") {
                t.copy_(&(Tensor::randn([n], f) * 0.2));
            }
        }
    });
    Ok((vs, model))
}

fn run(session: &mut Session, pixels: &[f32], batch: usize) -> Result<Vec<f32>> {
    let input = OrtTensor::from_array(([batch, 3, 32, 32], pixels[..batch * 3 * 32 * 32].to_vec()))?;
    let outputs = session.run(ort::inputs![export::INPUT => input])?;
    Ok(outputs[export::OUTPUT].try_extract_tensor::<f32>()?.1.to_vec())
}

fn latency(session: &mut Session, pixels: &[f32], batch: usize, iters: usize) -> Result<String> {
    for _ in 0..10 {
        run(session, pixels, batch)?;
    }
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        run(session, pixels, batch)?;
        times.push(t.elapsed());
    }
    Ok(stats(&mut times))
}

/// `median / p90` in milliseconds.
fn stats(times: &mut [Duration]) -> String {
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    format!("{:.2} / {:.2}", at(0.5), at(0.9))
}

fn argmax(logits: &[f32], classes: usize) -> Vec<usize> {
    logits
        .chunks(classes)
        .map(|r| {
            r.iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
                .0
        })
        .collect()
}
