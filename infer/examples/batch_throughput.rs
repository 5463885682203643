//! ONNX Runtime's own throughput on a model, by batch size: the ceiling that `infer serve` is
//! measured against (figures in `infer/BENCHMARKS.md`). Two ways to use the CPUs: one session
//! whose intra-op threads share each run, and one single-threaded session per CPU, all running
//! at once (what `infer serve --sessions N --threads 1` does).
//!
//! ```text
//! cargo run --release -p infer --example batch_throughput -- MODEL.onnx [SECONDS_PER_BATCH]
//! ```

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use infer::model::{Classifier, LoadOptions, Overrides, default_threads};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args.next().context("usage: batch_throughput MODEL.onnx [SECONDS]")?;
    let seconds: f64 = args.next().map_or(Ok(3.0), |s| s.parse())?;
    let bytes = std::fs::read(&path).with_context(|| format!("reading {path}"))?;
    let cpus = default_threads();
    let load = |options: LoadOptions| {
        Classifier::load_with_options(bytes.clone(), None, "bench", &path, &Overrides::default(), &options)
    };
    let shared = load(LoadOptions::uncached(cpus))?;
    let per_cpu = load(LoadOptions {
        sessions: cpus,
        ..LoadOptions::uncached(1)
    })?;
    println!(
        "| batch | 1 session x {cpus} threads: images/s | ms per batch | {cpus} sessions x 1 thread: images/s | ms per batch |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for batch in [1usize, 8, 16, 32, 64] {
        let (one, one_ms) = throughput(&shared, batch, 1, seconds)?;
        let (many, many_ms) = throughput(&per_cpu, batch, cpus, seconds)?;
        println!("| {batch} | {one:.1} | {one_ms:.2} | {many:.1} | {many_ms:.2} |");
    }
    Ok(())
}

/// Images per second and milliseconds per batch with `callers` threads running `batch`-image
/// batches on `classifier` at once, for `seconds` after one warm-up run each.
fn throughput(classifier: &Classifier, batch: usize, callers: usize, seconds: f64) -> Result<(f64, f64)> {
    let input = vec![0.1f32; classifier.info().image_len() * batch];
    let runs = std::thread::scope(|s| {
        let handles: Vec<_> = (0..callers)
            .map(|_| {
                s.spawn(|| -> Result<u32> {
                    classifier.run(input.clone(), batch)?;
                    let start = Instant::now();
                    let mut runs = 0u32;
                    while start.elapsed() < Duration::from_secs_f64(seconds) {
                        classifier.run(input.clone(), batch)?;
                        runs += 1;
                    }
                    Ok(runs)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow::anyhow!("a benchmark thread panicked"))?)
            .collect::<Result<Vec<_>>>()
    })?;
    let total: u32 = runs.iter().sum();
    let images = f64::from(total) * batch as f64 / seconds;
    Ok((images, seconds * 1e3 * callers as f64 / f64::from(total.max(1))))
}
