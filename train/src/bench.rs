//! `train bench`: images per second of full training steps (forward, backward, SGD update) on
//! random data, the figure that says how long an epoch takes on this machine.

use std::fmt;
use std::time::Instant;

use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::model::{ModelError, ResNetConfig};
use crate::options::FitOptions;
use crate::trainer::Trainer;

#[derive(Debug, Clone, Serialize)]
pub struct BenchOptions {
    pub width: i64,
    pub batch_size: i64,
    /// Timed steps, after `warmup` untimed ones.
    pub steps: u32,
    pub warmup: u32,
    pub device: String,
    pub channels_last: bool,
    pub amp: bool,
    pub threads: i32,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    #[serde(flatten)]
    pub options: BenchOptions,
    /// Images per second over all timed steps.
    pub images_per_second: f64,
    /// Milliseconds per step: median, fastest and slowest.
    pub step_ms_median: f64,
    pub step_ms_min: f64,
    pub step_ms_max: f64,
    /// Seconds for one pass over 50,000 images (a CIFAR-10 training epoch) at this rate.
    pub cifar10_epoch_seconds: f64,
    pub libtorch: String,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        writeln!(
            f,
            "ResNet-18 width {} batch {} on {} ({} threads{}{}): {} timed steps after {} warm-up",
            o.width,
            o.batch_size,
            o.device,
            o.threads,
            if o.channels_last { ", channels-last" } else { "" },
            if o.amp { ", mixed precision" } else { "" },
            o.steps,
            o.warmup
        )?;
        writeln!(
            f,
            "{:.1} images/s; step {:.1} ms median ({:.1} .. {:.1})",
            self.images_per_second, self.step_ms_median, self.step_ms_min, self.step_ms_max
        )?;
        write!(
            f,
            "a CIFAR-10 training epoch (50,000 images) would take {:.0} s ({:.1} min)",
            self.cifar10_epoch_seconds,
            self.cifar10_epoch_seconds / 60.0
        )
    }
}

/// Times `warmup + steps` training steps of a fresh model on one random batch.
pub fn bench(opts: &BenchOptions, device: Device) -> Result<BenchReport, ModelError> {
    tch::manual_seed(0);
    let fit = FitOptions {
        width: opts.width,
        batch_size: opts.batch_size,
        ..FitOptions::default()
    };
    let config = ResNetConfig {
        width: opts.width,
        num_classes: 10,
    };
    let mut trainer = Trainer::new(config, device, opts.channels_last, opts.amp, &fit)?;
    let x = trainer.prepare(Tensor::randn([opts.batch_size, 3, 32, 32], (Kind::Float, Device::Cpu)));
    let y = Tensor::randint(10, [opts.batch_size], (Kind::Int64, device));
    let sync = || {
        if let Device::Cuda(index) = device {
            tch::Cuda::synchronize(index as i64);
        }
    };
    // As in `fit`, steps are queued without waiting for the device; on a GPU a step's time is
    // when the host could queue the next one, and the total waits for the last to finish.
    let mut times = Vec::with_capacity(opts.steps as usize);
    let mut started = Instant::now();
    for i in 0..opts.warmup + opts.steps {
        if i == opts.warmup {
            sync();
            started = Instant::now();
        }
        let t = Instant::now();
        // A small rate keeps the random-data loss finite for any number of steps.
        trainer.step(&x, &y, 0.01)?;
        if i >= opts.warmup {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    sync();
    let total = started.elapsed().as_secs_f64();
    let images_per_second = (opts.batch_size as f64 * times.len() as f64) / total.max(1e-9);
    times.sort_by(f64::total_cmp);
    let ms = |s: f64| s * 1e3;
    let mut options = opts.clone();
    // What actually ran (channels-last may have been refused for this width).
    options.channels_last = trainer.channels_last;
    Ok(BenchReport {
        options,
        images_per_second,
        step_ms_median: ms(times.get(times.len() / 2).copied().unwrap_or(0.0)),
        step_ms_min: ms(times.first().copied().unwrap_or(0.0)),
        step_ms_max: ms(times.last().copied().unwrap_or(0.0)),
        cifar10_epoch_seconds: 50_000.0 / images_per_second.max(1e-9),
        libtorch: libtorch_version(),
    })
}

/// The libtorch version this binary runs on, from the `LIBTORCH` directory's `build-version`.
pub fn libtorch_version() -> String {
    std::env::var_os("LIBTORCH")
        .map(|d| std::path::Path::new(&d).join("build-version"))
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_times_the_requested_steps_in_both_layouts() -> Result<(), ModelError> {
        // Two OpenMP threads on two busy cores spin in barriers for seconds; tests use one.
        tch::set_num_threads(1);
        // Width 8: the smallest at which channels-last is used on a CPU.
        for channels_last in [false, true] {
            let opts = BenchOptions {
                width: 8,
                batch_size: 4,
                steps: 3,
                warmup: 1,
                device: "cpu".into(),
                channels_last,
                amp: false,
                threads: tch::get_num_threads(),
            };
            let report = bench(&opts, Device::Cpu)?;
            assert!(report.images_per_second > 0.0 && report.images_per_second.is_finite());
            // The layout that ran is reported, not the one asked for: width 8 keeps it.
            assert_eq!(report.options.channels_last, channels_last);
            // The rate is over the timed steps alone: the mean step it implies lies between the
            // fastest and the slowest of them (plus the few instructions between two steps).
            let mean_ms = 1e3 * opts.batch_size as f64 / report.images_per_second;
            assert!(
                report.step_ms_min <= mean_ms && mean_ms <= report.step_ms_max + 0.1,
                "mean step {mean_ms} ms outside [{}, {}]",
                report.step_ms_min,
                report.step_ms_max
            );
        }
        Ok(())
    }
}
