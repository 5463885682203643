//! `train fit`: the training loop, with per-epoch evaluation, metrics, charts and atomic
//! checkpoints that a run can be resumed from exactly.
//!
//! Determinism: the weights are initialised after `manual_seed(seed)`, and every epoch reseeds
//! libtorch's generator with [`epoch_seed`]`(seed, epoch)` before shuffling and augmenting, so on
//! the CPU a run resumed from the checkpoint of epoch `k` replays epochs `k+1..` exactly as an
//! uninterrupted run would.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tch::{Device, Tensor};
use tracing::{info, warn};

use crate::checkpoint::{self, CheckpointError, CheckpointInfo, epoch_seed};
use crate::data::{self, Dataset, Normalizer, batch_indices, random_crop_flip};
use crate::eval::{Evaluation, evaluate};
use crate::metrics::{self, EpochMetrics, MetricsError};
use crate::model::{ModelError, ResNetConfig};
use crate::optim::LrSchedule;
use crate::options::FitOptions;
use crate::plots;
use crate::trainer::{RestoreError, StepStats, Trainer};

/// File names inside a run directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.pt";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const CURVES_FILE: &str = "training_curves.png";
pub const CONFUSION_FILE: &str = "confusion_matrix.png";
pub const ONNX_FILE: &str = "model.onnx";

/// Where and how to run, which may change between a run and its resume.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub data: PathBuf,
    pub out: PathBuf,
    pub device: Device,
    /// Continue from `out/checkpoint.pt`.
    pub resume: bool,
    /// Channels-last memory format for activations and conv weights.
    pub channels_last: bool,
    /// Mixed precision (CUDA only).
    pub amp: bool,
    pub progress: bool,
    /// Export `out/model.onnx` at the end.
    pub export: bool,
    /// Stop (as if killed) after this many epochs in total; the run stays resumable.
    pub stop_after: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum FitError {
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Plot(#[from] plots::PlotError),
    #[error(transparent)]
    Export(#[from] crate::export::ExportError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} already holds a run's checkpoint: pass --resume to continue it, or choose another --out")]
    RunExists { path: PathBuf },
    #[error("nothing to resume: {path} does not exist")]
    NothingToResume { path: PathBuf },
    #[error("cannot resume {path}: {reason}")]
    Resume { path: PathBuf, reason: String },
    #[error(
        "loss became {loss} at epoch {epoch}, step {step} (learning rate {lr:.4}); stopped. \
         The last good checkpoint is {checkpoint} (try a lower --lr)"
    )]
    NonFinite {
        loss: f64,
        epoch: u32,
        step: usize,
        lr: f64,
        checkpoint: String,
    },
    #[error("invalid option: {0}")]
    Option(String),
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> FitError + '_ {
    move |source| FitError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What a finished run reports.
#[derive(Debug)]
pub struct FitReport {
    pub run_dir: PathBuf,
    pub checkpoint: PathBuf,
    pub onnx: Option<PathBuf>,
    pub epochs: u32,
    pub final_eval: Evaluation,
    pub class_names: Vec<String>,
    pub history: Vec<EpochMetrics>,
}

/// Training steps in one epoch of `n` images (a final batch of one is skipped).
pub fn steps_per_epoch(n: i64, batch_size: i64) -> u64 {
    let full = n / batch_size;
    let rest = n % batch_size;
    (full + i64::from(rest >= 2)) as u64
}

/// Loads the data set of a run, with the run's subsets applied.
pub fn load_data(path: &Path, opts: &FitOptions) -> Result<Dataset, FitError> {
    let t = Instant::now();
    let mut ds = data::load(path)?;
    // Subsets are drawn with a seed of their own so they are the same on every resume.
    if let Some(n) = opts.limit_train {
        ds.train = ds.train.subset(n, epoch_seed(opts.seed, u32::MAX));
    }
    if let Some(n) = opts.limit_test {
        ds.test = ds.test.subset(n, epoch_seed(opts.seed, u32::MAX - 1));
    }
    info!(
        dataset = %ds.name,
        layout = ?ds.layout,
        classes = ds.num_classes(),
        train = ds.train.len(),
        test = ds.test.len(),
        seconds = format!("{:.1}", t.elapsed().as_secs_f64()),
        "loaded {}",
        path.display()
    );
    Ok(ds)
}

fn options_of(loaded: &checkpoint::Loaded) -> Result<FitOptions, FitError> {
    let resume_err = |reason: String| FitError::Resume {
        path: loaded.path.clone(),
        reason,
    };
    let state = loaded
        .training
        .as_ref()
        .ok_or_else(|| resume_err("it holds weights only, no training state".into()))?;
    serde_json::from_value(state.options.clone()).map_err(|e| resume_err(format!("its options do not parse: {e}")))
}

/// The options a run's checkpoint was trained with, for `--resume` without repeating them.
pub fn stored_options(checkpoint: &Path) -> Result<FitOptions, FitError> {
    options_of(&checkpoint::read(checkpoint)?)
}

/// Runs (or resumes) a training run; see the module docs.
pub fn fit(settings: &RunSettings, opts: &FitOptions) -> Result<FitReport, FitError> {
    opts.validate().map_err(FitError::Option)?;
    let out = &settings.out;
    fs::create_dir_all(out).map_err(io_err(out))?;
    let ckpt_path = out.join(CHECKPOINT_FILE);
    let metrics_path = out.join(METRICS_FILE);
    remove_leftovers(&[ckpt_path.as_path(), metrics_path.as_path()])?;
    let resumed = open_run(settings.resume, &ckpt_path, opts)?;

    let ds = load_data(&settings.data, opts)?;
    let config = ResNetConfig {
        width: opts.width,
        num_classes: ds.num_classes(),
    };
    let (mean, std) = match &resumed {
        Some(l) => (l.info.mean, l.info.std),
        None => data::channel_stats(&ds.train)?,
    };
    if let Some(l) = &resumed {
        l.expect_config(config)?;
        if l.info.class_names != ds.class_names {
            return Err(FitError::Resume {
                path: ckpt_path.clone(),
                reason: format!(
                    "the run's classes {:?} are not the data's {:?}",
                    l.info.class_names, ds.class_names
                ),
            });
        }
    }
    let mut info = CheckpointInfo {
        config,
        class_names: ds.class_names.clone(),
        mean,
        std,
        dataset: ds.name.clone(),
        epochs: 0,
        test_accuracy: None,
    };

    tch::manual_seed(opts.seed as i64);
    let mut trainer = Trainer::new(config, settings.device, settings.channels_last, settings.amp, opts)?;
    let mut history = match &resumed {
        Some(l) => restore(l, &mut trainer, &mut info, &metrics_path)?,
        None => {
            metrics::write_metrics(&metrics_path, &[])?;
            Vec::new()
        }
    };
    let start_epoch = info.epochs;

    let normalizer = Normalizer::new(mean, std, settings.device);
    let steps = steps_per_epoch(ds.train.len(), opts.batch_size);
    let mut elapsed = history.last().map_or(0.0, |m| m.elapsed_seconds);
    info!(
        width = opts.width,
        params = trainer.vs.trainable_variables().iter().map(|t| t.numel()).sum::<usize>(),
        device = ?settings.device,
        threads = tch::get_num_threads(),
        channels_last = settings.channels_last,
        steps_per_epoch = steps,
        "training {} epochs from epoch {}",
        opts.epochs,
        start_epoch + 1
    );
    let epochs = Epochs {
        opts,
        settings,
        // On a GPU the training split moves there once (150 MB for CIFAR-10): batches are then
        // gathered, augmented and normalised on the device, with no host copy per step.
        images: ds.train.images.to_device(settings.device),
        labels: ds.train.labels.to_device(settings.device),
        normalizer: &normalizer,
        schedule: LrSchedule::new(
            opts.schedule,
            opts.lr,
            steps * u64::from(opts.epochs),
            opts.warmup_epochs,
            steps,
        ),
        steps,
        checkpoint: &ckpt_path,
    };

    let mut last_eval = None;
    let last_epoch = settings.stop_after.map_or(opts.epochs, |s| s.min(opts.epochs));
    for epoch in start_epoch..last_epoch {
        let t0 = Instant::now();
        let totals = epochs.train(&mut trainer, epoch)?;
        let train_seconds = t0.elapsed().as_secs_f64();
        let eval = evaluate_run(&trainer, &ds, &normalizer, opts, settings.device)?;
        let epoch_seconds = t0.elapsed().as_secs_f64();
        elapsed += epoch_seconds;
        let seen = totals.seen.max(1) as f64;
        let m = EpochMetrics {
            epoch: epoch + 1,
            train_loss: totals.loss_sum / seen,
            train_accuracy: totals.correct as f64 / seen,
            test_loss: eval.loss,
            test_accuracy: eval.accuracy,
            lr: totals.lr,
            images_per_second: totals.seen as f64 / train_seconds,
            epoch_seconds,
            elapsed_seconds: elapsed,
        };
        info!(
            "epoch {}/{}: train loss {:.4} acc {:.2}% | test loss {:.4} acc {:.2}% | {:.0} img/s, {:.1}s",
            m.epoch,
            opts.epochs,
            m.train_loss,
            m.train_accuracy * 100.0,
            m.test_loss,
            m.test_accuracy * 100.0,
            m.images_per_second,
            m.epoch_seconds
        );
        warn_non_finite(&m, "");
        // Metrics first: a kill between the two leaves a line that the resume drops and redoes.
        metrics::append_metrics(&metrics_path, &m)?;
        history.push(m);
        info.epochs = epoch + 1;
        info.test_accuracy = Some(eval.accuracy);
        let options = serde_json::to_value(opts).map_err(|e| FitError::Option(e.to_string()))?;
        let state = trainer.training_state(opts.seed, options)?;
        checkpoint::save_training(&ckpt_path, &trainer.vs, &info, &state)?;
        if let Err(e) = plots::training_curves(&out.join(CURVES_FILE), &history) {
            warn!("{e}");
        }
        last_eval = Some(eval);
    }

    let final_eval = match last_eval {
        Some(e) => e,
        // Resumed a finished run: evaluate what it left.
        None => evaluate_run(&trainer, &ds, &normalizer, opts, settings.device)?,
    };
    plots::training_curves(&out.join(CURVES_FILE), &history)?;
    plots::confusion_matrix(&out.join(CONFUSION_FILE), &final_eval.confusion, &ds.class_names)?;
    // A run stopped early (--stop-after) is not finished: no model to serve yet.
    let onnx = if settings.export && info.epochs == opts.epochs {
        let report = crate::export::export_checkpoint(&crate::export::ExportOptions {
            checkpoint: ckpt_path.clone(),
            out: out.join(ONNX_FILE),
            opset: crate::export::DEFAULT_OPSET,
            fp16: false,
        })?;
        info!("{report}");
        Some(report.path)
    } else {
        None
    };
    Ok(FitReport {
        run_dir: out.clone(),
        checkpoint: ckpt_path,
        onnx,
        epochs: info.epochs,
        final_eval,
        class_names: ds.class_names,
        history,
    })
}

/// The checkpoint to continue from (`None` for a new run), refusing to resume nothing, to
/// overwrite a run, or to continue one with other options.
fn open_run(resume: bool, ckpt_path: &Path, opts: &FitOptions) -> Result<Option<checkpoint::Loaded>, FitError> {
    if !resume {
        if ckpt_path.exists() {
            return Err(FitError::RunExists {
                path: ckpt_path.to_owned(),
            });
        }
        return Ok(None);
    }
    if !ckpt_path.exists() {
        return Err(FitError::NothingToResume {
            path: ckpt_path.to_owned(),
        });
    }
    let loaded = checkpoint::read(ckpt_path)?;
    let stored = options_of(&loaded)?;
    if &stored != opts {
        return Err(FitError::Resume {
            path: ckpt_path.to_owned(),
            reason: format!("the run's options differ from these: {}", stored.diff(opts)),
        });
    }
    Ok(Some(loaded))
}

/// Puts a checkpoint's weights, momentum, loss scale and progress into a fresh trainer, and
/// returns the run's metrics up to that checkpoint.
fn restore(
    loaded: &checkpoint::Loaded,
    trainer: &mut Trainer,
    info: &mut CheckpointInfo,
    metrics_path: &Path,
) -> Result<Vec<EpochMetrics>, FitError> {
    trainer.restore(loaded).map_err(|e| match e {
        RestoreError::Checkpoint(e) => FitError::Checkpoint(e),
        RestoreError::Momentum(reason) => FitError::Resume {
            path: loaded.path.clone(),
            reason,
        },
    })?;
    info.epochs = loaded.info.epochs;
    info.test_accuracy = loaded.info.test_accuracy;
    // Lines past the checkpoint (an epoch cut short by a kill) are dropped.
    let history = metrics::read_metrics(metrics_path, loaded.info.epochs)?;
    for m in &history {
        warn_non_finite(m, " (from the run so far)");
    }
    metrics::write_metrics(metrics_path, &history)?;
    info!(epoch = loaded.info.epochs, "resuming {}", loaded.path.display());
    Ok(history)
}

/// Says which of an epoch's figures are NaN or infinite: they go into `metrics.jsonl` as the
/// strings "NaN", "inf", "-inf" ([`crate::metrics`]), and a chart leaves them out.
fn warn_non_finite(m: &EpochMetrics, context: &str) {
    for (field, value) in m.non_finite() {
        warn!(
            // Rust writes NaN, inf and -inf as the file does.
            "epoch {}: {field} is {value}{context}; {METRICS_FILE} records it as \"{value}\"",
            m.epoch
        );
    }
}

/// Removes the temporary files that a run killed while writing its checkpoint or metrics left
/// behind (a checkpoint's is a whole copy of the weights), saying so.
fn remove_leftovers(files: &[&Path]) -> Result<(), FitError> {
    for file in files {
        for leftover in crate::atomic_file::remove_leftovers(file).map_err(io_err(file))? {
            warn!(
                "removed {}: left by a run stopped while writing {}",
                leftover.display(),
                file.display()
            );
        }
    }
    Ok(())
}

fn evaluate_run(
    trainer: &Trainer,
    ds: &Dataset,
    normalizer: &Normalizer,
    opts: &FitOptions,
    device: Device,
) -> Result<Evaluation, ModelError> {
    evaluate(
        &trainer.model,
        &ds.test,
        normalizer,
        opts.batch_size.max(256),
        device,
        opts.flip_tta,
    )
}

/// What one pass over the training split saw.
struct EpochTotals {
    loss_sum: f64,
    correct: i64,
    seen: i64,
    /// At the epoch's last step.
    lr: f64,
}

/// The training split on the training device and what every epoch of the run shares.
struct Epochs<'a> {
    opts: &'a FitOptions,
    settings: &'a RunSettings,
    images: Tensor,
    labels: Tensor,
    normalizer: &'a Normalizer,
    schedule: LrSchedule,
    steps: u64,
    checkpoint: &'a Path,
}

impl Epochs<'_> {
    /// One epoch of SGD steps, stopping the run at the first loss that is not finite.
    fn train(&self, trainer: &mut Trainer, epoch: u32) -> Result<EpochTotals, FitError> {
        let (opts, device) = (self.opts, self.settings.device);
        // Reading a step's loss waits for the device to finish it; on a GPU that stall would
        // cost more than the step, so losses are read (and checked) every few dozen steps.
        let read_every = if device.is_cuda() { 32 } else { 1 };
        tch::manual_seed(epoch_seed(opts.seed, epoch));
        let t0 = Instant::now();
        let n = self.labels.size()[0];
        let batches = batch_indices(n, opts.batch_size, true, true, device);
        let bar = progress_bar(self.settings.progress, batches.len() as u64, epoch + 1, opts.epochs);
        let mut totals = EpochTotals {
            loss_sum: 0.0,
            correct: 0,
            seen: 0,
            lr: 0.0,
        };
        let (mut pending, mut pending_steps) = (Vec::new(), Vec::new());
        for (i, idx) in batches.iter().enumerate() {
            let lr = self.schedule.at(u64::from(epoch) * self.steps + i as u64);
            totals.lr = lr;
            let mut x = self.images.index_select(0, idx);
            if opts.augment {
                x = random_crop_flip(&x, 4);
            }
            let x = trainer.prepare(self.normalizer.apply(&x));
            let y = self.labels.index_select(0, idx);
            pending.push(trainer.step(&x, &y, lr)?);
            pending_steps.push((i, lr, idx.size()[0]));
            if pending.len() < read_every && i + 1 < batches.len() {
                continue;
            }
            let read = StepStats::read(&pending).inspect_err(|_| bar.abandon())?;
            for ((i, step_lr, b), (loss, ok)) in pending_steps.drain(..).zip(read) {
                if !loss.is_finite() {
                    bar.abandon();
                    return Err(FitError::NonFinite {
                        loss,
                        epoch: epoch + 1,
                        step: i + 1,
                        lr: step_lr,
                        checkpoint: if self.checkpoint.exists() {
                            self.checkpoint.display().to_string()
                        } else {
                            "none (no epoch finished)".to_owned()
                        },
                    });
                }
                totals.loss_sum += loss * b as f64;
                totals.correct += ok;
                totals.seen += b;
            }
            bar.inc(pending.len() as u64);
            pending.clear();
            let seen = totals.seen.max(1) as f64;
            bar.set_message(format!(
                "loss {:.3} acc {:.1}% {:.0} img/s lr {lr:.3}",
                totals.loss_sum / seen,
                100.0 * totals.correct as f64 / seen,
                totals.seen as f64 / t0.elapsed().as_secs_f64()
            ));
        }
        bar.finish_and_clear();
        Ok(totals)
    }
}

fn progress_bar(enabled: bool, len: u64, epoch: u32, epochs: u32) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    let style =
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30.cyan/blue}] {pos}/{len} {msg} ({elapsed} < {eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(format!("epoch {epoch}/{epochs}"));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_skip_a_final_batch_of_one() {
        assert_eq!(steps_per_epoch(10, 4), 3);
        assert_eq!(steps_per_epoch(9, 4), 2);
        assert_eq!(steps_per_epoch(8, 4), 2);
        for n in [5, 9, 130] {
            for bs in [2, 4, 128] {
                assert_eq!(
                    steps_per_epoch(n, bs),
                    batch_indices(n, bs, true, true, Device::Cpu).len() as u64
                );
            }
        }
    }
}
