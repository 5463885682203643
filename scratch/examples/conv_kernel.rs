//! One 3x3, stride-1, padding-1 convolution with bias through a named micro-kernel on one thread,
//! `RUNS` times: the median wall time per call, and a fixed workload for instruction counts
//! (`valgrind --tool=callgrind`), which criterion's time-driven iteration counts are not.
//!
//! ```sh
//! cargo run --release -p scratch --example conv_kernel -- KERNEL BATCH CHANNELS SIZE FILTERS [RUNS]
//! # KERNEL: portable | best; e.g. the student's shape: portable 1 3 128 16
//! ```

use std::time::Instant;

use anyhow::{Context, Result, bail};
use scratch::fast::{self, Kernel};
use scratch::{Conv2dParams, Tensor4};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: conv_kernel portable|best BATCH CHANNELS SIZE FILTERS [RUNS]";
    if !(5..=6).contains(&args.len()) {
        bail!("{usage}");
    }
    let kernel = match args[0].as_str() {
        "portable" => Kernel::portable(),
        "best" => Kernel::best(),
        other => bail!("unknown kernel {other:?}; {usage}"),
    };
    let number = |i: usize, name: &str| -> Result<usize> {
        let value: usize = args
            .get(i)
            .map_or(Ok(1), |s| s.parse())
            .with_context(|| format!("{name} must be a whole number; {usage}"))?;
        anyhow::ensure!(value > 0, "{name} must be at least 1");
        Ok(value)
    };
    let [batch, channels, size, filters, runs] = [
        number(1, "BATCH")?,
        number(2, "CHANNELS")?,
        number(3, "SIZE")?,
        number(4, "FILTERS")?,
        number(5, "RUNS")?,
    ];
    let input = Tensor4::random([batch, channels, size, size], 1);
    let weight = Tensor4::random([filters, channels, 3, 3], 2);
    let bias = Tensor4::random([1, 1, 1, filters], 3).into_data();
    let params = Conv2dParams::default().padding(1);
    // One worker: no idle threads spinning into the instruction count or stealing the other core.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .context("building the thread pool")?;
    let mut times = pool.install(|| {
        (0..runs)
            .map(|_| {
                let start = Instant::now();
                let out = fast::conv2d_with_kernel(&input, &weight, Some(&bias), &params, kernel)?;
                std::hint::black_box(out);
                Ok(start.elapsed().as_secs_f64())
            })
            .collect::<Result<Vec<f64>>>()
    })?;
    times.sort_by(f64::total_cmp);
    println!(
        "{} kernel, {batch}x{channels}x{size}x{size} * {filters}x{channels}x3x3: {:.3} ms median of {runs}",
        kernel.name(),
        times[times.len() / 2] * 1e3
    );
    Ok(())
}
