//! `scratch bench`: the student's benchmark, naive vs fast vs libtorch on one shape.

use std::time::Instant;

use anyhow::{Context, Result};
use scratch::{Conv2dParams, Tensor4, fast, naive};
use serde::Serialize;

use crate::torch;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Threads for the fast conv (a rayon pool) and for libtorch; the naive loops use one.
    #[arg(long, default_value_t = default_threads())]
    threads: usize,
    /// Timed runs of fast and libtorch (the median is reported).
    #[arg(long, default_value_t = 50)]
    runs: usize,
    /// Timed runs of the naive loops.
    #[arg(long, default_value_t = 5)]
    naive_runs: usize,
    /// Print one JSON object instead of the text report.
    #[arg(long)]
    json: bool,
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

#[derive(Debug, Serialize)]
struct Shape {
    input: [usize; 4],
    weight: [usize; 4],
    stride: usize,
    padding: usize,
}

/// The [`Tensor4::random`] seeds of the inputs, so that a reader can rebuild them.
#[derive(Debug, Serialize)]
struct Seeds {
    input: u64,
    weight: u64,
    bias: u64,
}

#[derive(Debug, Serialize)]
struct Report {
    shape: Shape,
    seeds: Seeds,
    naive_s: f64,
    fast_s: f64,
    libtorch_s: f64,
    max_abs_diff: f32,
    threads: usize,
    kernel: &'static str,
}

/// Median wall time in seconds of `runs` calls after `warmup` untimed ones.
fn median_secs<T>(warmup: usize, runs: usize, mut f: impl FnMut() -> Result<T>) -> Result<f64> {
    for _ in 0..warmup {
        std::hint::black_box(f()?);
    }
    let mut times = Vec::with_capacity(runs.max(1));
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        std::hint::black_box(f()?);
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

pub fn run(args: &Args) -> Result<()> {
    anyhow::ensure!(args.threads > 0, "--threads must be at least 1");
    let shape = Shape {
        input: [1, 3, 128, 128],
        weight: [16, 3, 3, 3],
        stride: 1,
        padding: 1,
    };
    let seeds = Seeds {
        input: 1,
        weight: 2,
        bias: 3,
    };
    let params = Conv2dParams::default().stride(shape.stride).padding(shape.padding);
    let input = Tensor4::random(shape.input, seeds.input);
    let weight = Tensor4::random(shape.weight, seeds.weight);
    let bias = Tensor4::random([1, 1, 1, shape.weight[0]], seeds.bias).into_data();

    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build()
        .context("building the thread pool")?;
    tch::set_num_threads(i32::try_from(args.threads)?);
    let _no_grad = tch::no_grad_guard();
    let (tx, tw, tb) = (
        torch::to_tch(&input),
        torch::to_tch(&weight),
        tch::Tensor::from_slice(&bias),
    );

    let reference = torch::from_tch(&torch::conv2d(&tx, &tw, Some(&tb), &params)?)?;
    let naive_out = naive::conv2d(&input, &weight, Some(&bias), &params)?;
    let fast_out = pool.install(|| fast::conv2d(&input, &weight, Some(&bias), &params))?;
    let max_abs_diff = naive_out
        .max_abs_diff(&reference)?
        .max(fast_out.max_abs_diff(&reference)?);

    let naive_s = median_secs(1, args.naive_runs, || {
        Ok(naive::conv2d(&input, &weight, Some(&bias), &params)?)
    })?;
    let fast_s = pool.install(|| {
        median_secs(10, args.runs, || {
            Ok(fast::conv2d(&input, &weight, Some(&bias), &params)?)
        })
    })?;
    let libtorch_s = median_secs(10, args.runs, || torch::conv2d(&tx, &tw, Some(&tb), &params))?;

    let report = Report {
        shape,
        seeds,
        naive_s,
        fast_s,
        libtorch_s,
        max_abs_diff,
        threads: args.threads,
        kernel: fast::Kernel::best().name(),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let [n, c, h, w] = report.shape.input;
    println!(
        "Input {n}x{c}x{h}x{w}, {} filters of {}x{}, stride {}, padding {}; {} thread(s), {} kernel",
        report.shape.weight[0],
        report.shape.weight[2],
        report.shape.weight[3],
        report.shape.stride,
        report.shape.padding,
        report.threads,
        report.kernel
    );
    println!("max abs difference vs libtorch: {max_abs_diff:.3e}");
    println!("naive (scratch loops): {naive_s:.6} s");
    println!("fast (scratch):        {fast_s:.6} s");
    println!("libtorch F.conv2d:     {libtorch_s:.6} s");
    println!("libtorch is {:.0}x faster than the naive loops", naive_s / libtorch_s);
    println!(
        "fast / libtorch = {:.2} (fast is {:.0}x faster than naive)",
        fast_s / libtorch_s,
        naive_s / fast_s
    );
    Ok(())
}
