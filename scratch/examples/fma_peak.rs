//! The CPU's single-precision fused multiply-add peak in GFLOP/s (a multiply-add counts as two),
//! on one thread and on every CPU at once: the ceiling for any direct convolution, ours,
//! libtorch's or ONNX Runtime's. Ten independent AVX2 accumulators hide the FMA latency.
//!
//! `cargo run --release -p scratch --example fma_peak [-- SECONDS_PER_MEASUREMENT]`

use std::time::{Duration, Instant};

fn main() {
    let seconds: f64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(1.0);
    let Some(kernel) = kernel() else {
        eprintln!("this CPU has no AVX2 + FMA; nothing to measure");
        std::process::exit(1);
    };
    let budget = Duration::from_secs_f64(seconds);
    println!("1 thread: {:.1} GFLOP/s", measure(kernel, budget));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_thread: Vec<f64> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..cpus)
            .map(|_| scope.spawn(move || measure(kernel, budget)))
            .collect();
        threads.into_iter().filter_map(|t| t.join().ok()).collect()
    });
    let all: f64 = per_thread.iter().sum();
    println!("{cpus} threads: {all:.1} GFLOP/s ({per_thread:.1?} each)");
}

/// Runs `kernel` in rounds until `budget` has passed; GFLOP/s.
fn measure(kernel: fn(u64) -> f32, budget: Duration) -> f64 {
    const ROUND: u64 = 20_000_000;
    let start = Instant::now();
    let mut flops = 0u64;
    let mut sink = 0.0f32;
    while start.elapsed() < budget {
        sink += kernel(ROUND);
        flops += ROUND * FLOPS_PER_ITERATION;
    }
    std::hint::black_box(sink);
    flops as f64 / start.elapsed().as_secs_f64() / 1e9
}

/// 10 accumulators x 8 lanes x 2 (multiply and add).
const FLOPS_PER_ITERATION: u64 = 10 * 8 * 2;

#[cfg(target_arch = "x86_64")]
fn kernel() -> Option<fn(u64) -> f32> {
    (is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")).then_some(fma_loop_entry as fn(u64) -> f32)
}

#[cfg(not(target_arch = "x86_64"))]
fn kernel() -> Option<fn(u64) -> f32> {
    None
}

#[cfg(target_arch = "x86_64")]
fn fma_loop_entry(iterations: u64) -> f32 {
    // SAFETY: `kernel` hands this out only after detecting AVX2 and FMA.
    unsafe { fma_loop(iterations) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fma_loop(iterations: u64) -> f32 {
    use std::arch::x86_64::*;
    let b = _mm256_set1_ps(0.999_9);
    let c = _mm256_set1_ps(1e-4);
    let mut acc: [__m256; 10] = std::array::from_fn(|i| _mm256_set1_ps(i as f32));
    for _ in 0..iterations {
        for a in &mut acc {
            *a = _mm256_fmadd_ps(*a, b, c);
        }
    }
    let mut lanes = [0.0f32; 8];
    let sum = acc.iter().fold(_mm256_setzero_ps(), |s, a| _mm256_add_ps(s, *a));
    // SAFETY: `lanes` holds exactly one 256-bit vector.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
    lanes.iter().sum()
}
