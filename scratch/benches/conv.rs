//! naive vs fast vs libtorch on the student's shape and the ResNet-18 3x3 layers, at 1 and 2
//! threads. `cargo run -p scratch --example bench_report` turns the results into BENCHMARKS.md's table.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use scratch::{Conv2dParams, Tensor4, fast, naive};

struct Case {
    name: &'static str,
    input: [usize; 4],
    out_channels: usize,
}

const CASES: &[Case] = &[
    Case {
        name: "student 1x3x128x128 16f",
        input: [1, 3, 128, 128],
        out_channels: 16,
    },
    Case {
        name: "resnet 64@32x32 b1",
        input: [1, 64, 32, 32],
        out_channels: 64,
    },
    Case {
        name: "resnet 128@16x16 b1",
        input: [1, 128, 16, 16],
        out_channels: 128,
    },
    Case {
        name: "resnet 256@8x8 b1",
        input: [1, 256, 8, 8],
        out_channels: 256,
    },
    Case {
        name: "resnet 512@4x4 b1",
        input: [1, 512, 4, 4],
        out_channels: 512,
    },
    Case {
        name: "resnet 64@32x32 b32",
        input: [32, 64, 32, 32],
        out_channels: 64,
    },
    Case {
        name: "resnet 128@16x16 b32",
        input: [32, 128, 16, 16],
        out_channels: 128,
    },
    Case {
        name: "resnet 256@8x8 b32",
        input: [32, 256, 8, 8],
        out_channels: 256,
    },
    Case {
        name: "resnet 512@4x4 b32",
        input: [32, 512, 4, 4],
        out_channels: 512,
    },
];

fn to_tch(t: &Tensor4) -> tch::Tensor {
    tch::Tensor::from_slice(t.data()).reshape(t.shape().map(|d| d as i64))
}

fn bench_conv(c: &mut Criterion) {
    let _no_grad = tch::no_grad_guard();
    let params = Conv2dParams::default().padding(1);
    for case in CASES {
        let input = Tensor4::random(case.input, 1);
        let weight = Tensor4::random([case.out_channels, case.input[1], 3, 3], 2);
        let bias = Tensor4::random([1, 1, 1, case.out_channels], 3).into_data();
        let (tx, tw, tb) = (to_tch(&input), to_tch(&weight), tch::Tensor::from_slice(&bias));
        let mut group = c.benchmark_group(case.name);
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        // The naive loops are single-threaded and linear in the batch: timed at batch 1 only.
        if case.input[0] == 1 {
            group.bench_function(BenchmarkId::new("naive", 1), |b| {
                b.iter(|| naive::conv2d(&input, &weight, Some(&bias), &params));
            });
        }
        for threads in [1, 2] {
            let Ok(pool) = rayon::ThreadPoolBuilder::new().num_threads(threads).build() else {
                panic!("cannot build a {threads}-thread pool");
            };
            // The timing loop runs inside the pool, so each call starts on one of its workers.
            group.bench_function(BenchmarkId::new("fast", threads), |b| {
                b.iter_custom(|iters| {
                    pool.install(|| {
                        let start = Instant::now();
                        for _ in 0..iters {
                            black_box(fast::conv2d(&input, &weight, Some(&bias), &params)).ok();
                        }
                        start.elapsed()
                    })
                });
            });
            tch::set_num_threads(threads as i32);
            group.bench_function(BenchmarkId::new("libtorch", threads), |b| {
                b.iter(|| tx.conv2d(&tw, Some(&tb), [1, 1], [1, 1], [1, 1], 1));
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench_conv);
criterion_main!(benches);
