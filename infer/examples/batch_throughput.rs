//! ONNX Runtime's own throughput on a model, by batch size: the ceiling that micro-batching in
//! `infer serve` is measured against (figures in `infer/BENCHMARKS.md`).
//!
//! ```text
//! cargo run --release -p infer --example batch_throughput -- MODEL.onnx [SECONDS_PER_BATCH]
//! ```

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use infer::model::{Classifier, Overrides, default_threads};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args.next().context("usage: batch_throughput MODEL.onnx [SECONDS]")?;
    let seconds: f64 = args.next().map_or(Ok(3.0), |s| s.parse())?;
    let bytes = std::fs::read(&path).with_context(|| format!("reading {path}"))?;
    let classifier = Classifier::load(&bytes, "bench", &path, &Overrides::default(), default_threads())?;
    let len = classifier.info().image_len();
    println!("| batch | images/s | ms per batch |");
    println!("|---:|---:|---:|");
    for batch in [1usize, 8, 16, 32, 64] {
        let input = vec![0.1f32; len * batch];
        classifier.run(input.clone(), batch)?;
        let start = Instant::now();
        let mut runs = 0u32;
        while start.elapsed() < Duration::from_secs_f64(seconds) {
            classifier.run(input.clone(), batch)?;
            runs += 1;
        }
        let elapsed = start.elapsed().as_secs_f64();
        println!(
            "| {batch} | {:.1} | {:.2} |",
            f64::from(runs) * batch as f64 / elapsed,
            elapsed * 1e3 / f64::from(runs)
        );
    }
    Ok(())
}
