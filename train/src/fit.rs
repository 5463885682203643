//! `train fit`: the training loop, with per-epoch evaluation, metrics, charts and atomic
//! checkpoints that a run can be resumed from exactly.
//!
//! Determinism: the weights are initialised after `manual_seed(seed)`, and every epoch reseeds
//! libtorch's generator with [`epoch_seed`]`(seed, epoch)` before shuffling and augmenting, so on
//! the CPU a run resumed from the checkpoint of epoch `k` replays epochs `k+1..` exactly as an
//! uninterrupted run would.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::{Device, Kind, Reduction, Tensor};
use tracing::{info, warn};

use crate::checkpoint::{self, CheckpointError, CheckpointInfo, TrainingState, epoch_seed};
use crate::data::{self, Dataset, Normalizer, batch_indices, random_crop_flip};
use crate::eval::{Evaluation, evaluate};
use crate::model::{ModelError, ResNet18, ResNetConfig};
use crate::optim::{LrSchedule, Schedule, Sgd};
use crate::plots;

/// File names inside a run directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.pt";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const CURVES_FILE: &str = "training_curves.png";
pub const CONFUSION_FILE: &str = "confusion_matrix.png";
pub const ONNX_FILE: &str = "model.onnx";

/// The options that define a run; stored in its checkpoint so a resume continues the same run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitOptions {
    pub epochs: u32,
    pub batch_size: i64,
    /// Peak learning rate.
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub label_smoothing: f64,
    pub schedule: Schedule,
    /// Warm-up length for [`Schedule::WarmupCosine`].
    pub warmup_epochs: f64,
    pub width: i64,
    pub seed: u64,
    /// Random crop (pad 4) and horizontal flip.
    pub augment: bool,
    /// Average the logits of each test image and its mirror image.
    pub flip_tta: bool,
    /// Train on a random subset of this many training images.
    pub limit_train: Option<i64>,
    /// Evaluate on a random subset of this many test images.
    pub limit_test: Option<i64>,
}

impl Default for FitOptions {
    fn default() -> Self {
        Self {
            epochs: 30,
            batch_size: 128,
            lr: 0.2,
            momentum: 0.9,
            weight_decay: 5e-4,
            label_smoothing: 0.1,
            schedule: Schedule::OneCycle,
            warmup_epochs: 2.0,
            width: 64,
            seed: 0,
            augment: true,
            flip_tta: false,
            limit_train: None,
            limit_test: None,
        }
    }
}

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

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based.
    pub epoch: u32,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub test_loss: f64,
    pub test_accuracy: f64,
    /// Learning rate at the epoch's last step.
    pub lr: f64,
    pub images_per_second: f64,
    pub epoch_seconds: f64,
    /// Training time since the run started, summed over resumes.
    pub elapsed_seconds: f64,
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

/// Rewrites NCHW-shaped 4-D tensors with NHWC strides (PyTorch's `channels_last`), which
/// libtorch's convolutions pick up from the strides.
pub fn to_channels_last(t: &Tensor) -> Tensor {
    if t.dim() == 4 {
        t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
    } else {
        t.shallow_clone()
    }
}

/// Whether channels-last training is safe for this width. On the CPU, libtorch 2.11's oneDNN
/// backward-weights kernel for 1x1 convolutions corrupts the heap (double free, or a spin that
/// never ends with two threads) when a channels-last layer has 4 channels; AVX2 kernels block
/// channels by 8, so channels-last is used on a CPU only when every layer's count is a multiple.
pub fn channels_last_supported(width: i64, device: Device) -> bool {
    let ok = device.is_cuda() || width % 8 == 0;
    if !ok {
        warn!(
            "channels-last is off at width {width} on the CPU (needs a multiple of 8; see fit::channels_last_supported)"
        );
    }
    ok
}

/// Dynamic loss scaling for float16 autocast: scale the loss so small gradients survive, skip
/// steps whose gradients overflow and halve the scale; double it after 2,000 good steps.
/// Everything stays on the device (libtorch's own AMP kernels), so no step waits for the host.
#[derive(Debug)]
struct GradScaler {
    scale: Tensor,
    growth_tracker: Tensor,
}

impl GradScaler {
    fn new(device: Device) -> Self {
        Self {
            scale: Tensor::full([1], 65536.0, (Kind::Float, device)),
            growth_tracker: Tensor::zeros([1], (Kind::Int, device)),
        }
    }
}

/// A model with its optimiser: what a training step needs, shared by `fit` and `bench`.
#[derive(Debug)]
pub struct Trainer {
    pub vs: VarStore,
    pub model: ResNet18,
    pub opt: Sgd,
    pub device: Device,
    pub channels_last: bool,
    pub label_smoothing: f64,
    scaler: Option<GradScaler>,
}

/// What one step saw, as 0-dim tensors on the device: reading them waits for the step to
/// finish, so callers read them in batches ([`StepStats::read`]) rather than every step.
#[derive(Debug)]
pub struct StepStats {
    /// The mean loss over the batch (`f32`).
    pub loss: Tensor,
    /// How many images of the batch were classified right (`i64`).
    pub correct: Tensor,
}

impl StepStats {
    /// `(loss, correct)` of each step, read from the device at once.
    pub fn read(stats: &[StepStats]) -> Vec<(f64, i64)> {
        if stats.is_empty() {
            return Vec::new();
        }
        let loss: Vec<Tensor> = stats.iter().map(|s| s.loss.to_kind(Kind::Double)).collect();
        let correct: Vec<Tensor> = stats.iter().map(|s| s.correct.to_kind(Kind::Double)).collect();
        let both = Tensor::stack(&[Tensor::stack(&loss, 0), Tensor::stack(&correct, 0)], 0).to_device(Device::Cpu);
        let values = Vec::<f64>::try_from(both.reshape([-1])).unwrap_or_default();
        let (loss, correct) = values.split_at(values.len() / 2);
        loss.iter().zip(correct).map(|(&l, &c)| (l, c as i64)).collect()
    }
}

impl Trainer {
    /// A fresh model initialised from libtorch's generator (seed it first).
    pub fn new(
        config: ResNetConfig,
        device: Device,
        channels_last: bool,
        amp: bool,
        opts: &FitOptions,
    ) -> Result<Self, ModelError> {
        let vs = VarStore::new(device);
        let model = ResNet18::new(&vs.root(), config)?;
        let channels_last = channels_last && channels_last_supported(config.width, device);
        if channels_last {
            for (_, mut var) in vs.variables() {
                if var.dim() == 4 {
                    let cl = to_channels_last(&var);
                    tch::no_grad(|| var.set_data(&cl));
                }
            }
        }
        // Created after the layout change: it moves the weights into its flat buffers and the
        // momentum buffers take the weights' layout.
        let opt = Sgd::new(&vs, opts.momentum, opts.weight_decay, true);
        let amp = amp && device.is_cuda();
        Ok(Self {
            vs,
            model,
            opt,
            device,
            channels_last,
            label_smoothing: opts.label_smoothing,
            scaler: amp.then(|| GradScaler::new(device)),
        })
    }

    /// Prepares a normalised float batch on the device in the training layout.
    pub fn prepare(&self, x: Tensor) -> Tensor {
        let x = x.to_device(self.device);
        if self.channels_last { to_channels_last(&x) } else { x }
    }

    /// One SGD step on a prepared batch. Nothing here waits for the device; the caller checks
    /// the loss when it reads the stats, and stops a run whose loss is not finite.
    pub fn step(&mut self, x: &Tensor, y: &Tensor, lr: f64) -> Result<StepStats, ModelError> {
        let amp = self.scaler.is_some();
        let forward = || -> Result<(Tensor, Tensor), ModelError> {
            let logits = self.model.forward_checked(x, true)?;
            let loss = logits.to_kind(Kind::Float).cross_entropy_loss::<Tensor>(
                y,
                None,
                Reduction::Mean,
                -100,
                self.label_smoothing,
            );
            Ok((logits, loss))
        };
        let (logits, loss) = if amp { tch::autocast(true, forward)? } else { forward()? };
        let correct = logits.argmax(-1, false).eq_tensor(y).sum(Kind::Int64);
        match &mut self.scaler {
            None => {
                let grads = self.opt.gradients(&loss);
                self.opt.step(grads, lr, None);
            }
            Some(scaler) => {
                let mut grads = self.opt.gradients(&(&loss * &scaler.scale));
                let mut found_inf = Tensor::zeros([1], (Kind::Float, self.device));
                let inv_scale = scaler.scale.reciprocal();
                for g in &mut grads {
                    g.internal_amp_non_finite_check_and_unscale(&mut found_inf, &inv_scale);
                }
                self.opt.step(grads, lr, Some(&found_inf));
                let _ = scaler
                    .scale
                    .internal_amp_update_scale_(&scaler.growth_tracker, &found_inf, 2.0, 0.5, 2000);
            }
        }
        Ok(StepStats {
            loss: loss.detach(),
            correct,
        })
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

/// Reads `metrics.jsonl`, keeping the lines of epochs up to `up_to`.
pub fn read_metrics(path: &Path, up_to: u32) -> Result<Vec<EpochMetrics>, FitError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(path)(e)),
    };
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io_err(path))?;
        if line.trim().is_empty() {
            continue;
        }
        let m: EpochMetrics = serde_json::from_str(&line).map_err(|e| FitError::Io {
            path: path.to_owned(),
            source: std::io::Error::other(format!("line {}: {e}", i + 1)),
        })?;
        if m.epoch <= up_to {
            out.push(m);
        }
    }
    Ok(out)
}

fn write_metrics(path: &Path, history: &[EpochMetrics]) -> Result<(), FitError> {
    let mut text = String::new();
    for m in history {
        text.push_str(&serde_json::to_string(m).map_err(|e| io_err(path)(std::io::Error::other(e)))?);
        text.push('\n');
    }
    fs::write(path, text).map_err(io_err(path))
}

fn append_metrics(path: &Path, m: &EpochMetrics) -> Result<(), FitError> {
    let line = serde_json::to_string(m).map_err(|e| io_err(path)(std::io::Error::other(e)))?;
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_err(path))?;
    writeln!(f, "{line}").map_err(io_err(path))?;
    f.sync_data().map_err(io_err(path))
}

/// Training steps in one epoch of `n` images (a final batch of one is skipped).
pub fn steps_per_epoch(n: i64, batch_size: i64) -> u64 {
    let full = n / batch_size;
    let rest = n % batch_size;
    (full + i64::from(rest >= 2)) as u64
}

fn validate(opts: &FitOptions) -> Result<(), FitError> {
    let bad = |m: String| Err(FitError::Option(m));
    if opts.epochs == 0 {
        return bad("--epochs must be at least 1".into());
    }
    if opts.batch_size < 2 {
        return bad(format!(
            "--batch-size must be at least 2 (BatchNorm cannot train on one image), got {}",
            opts.batch_size
        ));
    }
    if !(opts.lr.is_finite() && opts.lr > 0.0) {
        return bad(format!("--lr must be positive, got {}", opts.lr));
    }
    if !(0.0..1.0).contains(&opts.label_smoothing) {
        return bad(format!(
            "--label-smoothing must be in [0, 1), got {}",
            opts.label_smoothing
        ));
    }
    if opts.limit_train.is_some_and(|n| n < 2) || opts.limit_test.is_some_and(|n| n < 1) {
        return bad("--limit-train needs at least 2 images and --limit-test at least 1".into());
    }
    Ok(())
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
    validate(opts)?;
    let out = &settings.out;
    fs::create_dir_all(out).map_err(io_err(out))?;
    let ckpt_path = out.join(CHECKPOINT_FILE);
    let metrics_path = out.join(METRICS_FILE);

    let resumed = if settings.resume {
        if !ckpt_path.exists() {
            return Err(FitError::NothingToResume { path: ckpt_path });
        }
        let loaded = checkpoint::read(&ckpt_path)?;
        let stored = options_of(&loaded)?;
        if &stored != opts {
            return Err(FitError::Resume {
                path: ckpt_path.clone(),
                reason: format!("the run's options differ from these: {}", option_diff(&stored, opts)),
            });
        }
        Some(loaded)
    } else {
        if ckpt_path.exists() {
            return Err(FitError::RunExists { path: ckpt_path });
        }
        None
    };

    let ds = load_data(&settings.data, opts)?;
    let config = ResNetConfig {
        width: opts.width,
        num_classes: ds.num_classes(),
    };
    let (mean, std) = match &resumed {
        Some(l) => (l.info.mean, l.info.std),
        None => data::channel_stats(&ds.train),
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
    let mut history = Vec::new();
    let start_epoch = match &resumed {
        Some(l) => {
            l.copy_weights_into(&trainer.vs)?;
            let state = l.training.as_ref().map(|s| &s.momentum);
            trainer
                .opt
                .load_state(state.unwrap_or(&Default::default()))
                .map_err(|reason| FitError::Resume {
                    path: ckpt_path.clone(),
                    reason,
                })?;
            info.epochs = l.info.epochs;
            info.test_accuracy = l.info.test_accuracy;
            // Lines past the checkpoint (an epoch cut short by a kill) are dropped.
            history = read_metrics(&metrics_path, l.info.epochs)?;
            write_metrics(&metrics_path, &history)?;
            info!(epoch = l.info.epochs, "resuming {}", ckpt_path.display());
            l.info.epochs
        }
        None => {
            write_metrics(&metrics_path, &[])?;
            0
        }
    };

    let normalizer = Normalizer::new(mean, std, settings.device);
    let n = ds.train.len();
    let steps = steps_per_epoch(n, opts.batch_size);
    let schedule = LrSchedule::new(
        opts.schedule,
        opts.lr,
        steps * u64::from(opts.epochs),
        opts.warmup_epochs,
        steps,
    );
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

    // On a GPU the training split moves there once (150 MB for CIFAR-10): batches are then
    // gathered, augmented and normalised on the device, with no host copy per step.
    let (train_images, train_labels) = if settings.device.is_cuda() {
        (
            ds.train.images.to_device(settings.device),
            ds.train.labels.to_device(settings.device),
        )
    } else {
        (ds.train.images.shallow_clone(), ds.train.labels.shallow_clone())
    };
    // Reading a step's loss waits for the device to finish it; on a GPU that stall would cost
    // more than the step, so losses are read (and checked) every few dozen steps.
    let read_every = if settings.device.is_cuda() { 32 } else { 1 };

    let mut last_eval = None;
    let last_epoch = settings.stop_after.map_or(opts.epochs, |s| s.min(opts.epochs));
    for epoch in start_epoch..last_epoch {
        tch::manual_seed(epoch_seed(opts.seed, epoch));
        let t0 = Instant::now();
        let batches = batch_indices(n, opts.batch_size, true, true, settings.device);
        let bar = progress_bar(settings.progress, batches.len() as u64, epoch + 1, opts.epochs);
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0i64, 0i64);
        let mut lr = 0.0;
        let (mut pending, mut pending_steps) = (Vec::new(), Vec::new());
        for (i, idx) in batches.iter().enumerate() {
            let step = u64::from(epoch) * steps + i as u64;
            lr = schedule.at(step);
            let mut x = train_images.index_select(0, idx);
            if opts.augment {
                x = random_crop_flip(&x, 4);
            }
            let x = trainer.prepare(normalizer.apply(&x));
            let y = train_labels.index_select(0, idx);
            pending.push(trainer.step(&x, &y, lr)?);
            pending_steps.push((i, lr, idx.size()[0]));
            if pending.len() < read_every && i + 1 < batches.len() {
                continue;
            }
            for ((i, step_lr, b), (loss, ok)) in pending_steps.drain(..).zip(StepStats::read(&pending)) {
                if !loss.is_finite() {
                    bar.abandon();
                    return Err(FitError::NonFinite {
                        loss,
                        epoch: epoch + 1,
                        step: i + 1,
                        lr: step_lr,
                        checkpoint: if ckpt_path.exists() {
                            ckpt_path.display().to_string()
                        } else {
                            "none (no epoch finished)".to_owned()
                        },
                    });
                }
                loss_sum += loss * b as f64;
                correct += ok;
                seen += b;
            }
            bar.inc(pending.len() as u64);
            pending.clear();
            bar.set_message(format!(
                "loss {:.3} acc {:.1}% {:.0} img/s lr {lr:.3}",
                loss_sum / seen.max(1) as f64,
                100.0 * correct as f64 / seen.max(1) as f64,
                seen as f64 / t0.elapsed().as_secs_f64()
            ));
        }
        let train_seconds = t0.elapsed().as_secs_f64();
        bar.finish_and_clear();
        let eval = evaluate(
            &trainer.model,
            &ds.test,
            &normalizer,
            opts.batch_size.max(256),
            settings.device,
            opts.flip_tta,
        )?;
        let epoch_seconds = t0.elapsed().as_secs_f64();
        elapsed += epoch_seconds;
        let m = EpochMetrics {
            epoch: epoch + 1,
            train_loss: loss_sum / seen.max(1) as f64,
            train_accuracy: correct as f64 / seen.max(1) as f64,
            test_loss: eval.loss,
            test_accuracy: eval.accuracy,
            lr,
            images_per_second: seen as f64 / train_seconds,
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
        // Metrics first: a kill between the two leaves a line that the resume drops and redoes.
        append_metrics(&metrics_path, &m)?;
        history.push(m);
        info.epochs = epoch + 1;
        info.test_accuracy = Some(eval.accuracy);
        let state = TrainingState {
            momentum: trainer.opt.state(),
            seed: opts.seed,
            options: serde_json::to_value(opts).map_err(|e| FitError::Option(e.to_string()))?,
        };
        checkpoint::save_training(&ckpt_path, &trainer.vs, &info, &state)?;
        if let Err(e) = plots::training_curves(&out.join(CURVES_FILE), &history) {
            warn!("{e}");
        }
        last_eval = Some(eval);
    }

    let final_eval = match last_eval {
        Some(e) => e,
        // Resumed a finished run: evaluate what it left.
        None => evaluate(
            &trainer.model,
            &ds.test,
            &normalizer,
            opts.batch_size.max(256),
            settings.device,
            opts.flip_tta,
        )?,
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

/// `field: run has X, given Y` for every differing option.
fn option_diff(stored: &FitOptions, given: &FitOptions) -> String {
    let (a, b) = (serde_json::to_value(stored), serde_json::to_value(given));
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) = (a, b) else {
        return "unknown".into();
    };
    let diffs: Vec<String> = a
        .iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .map(|(k, v)| {
            format!(
                "{k}: run has {v}, given {}",
                b.get(k).unwrap_or(&serde_json::Value::Null)
            )
        })
        .collect();
    diffs.join("; ")
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

    #[test]
    fn step_stats_are_read_back_in_step_order() {
        let stats: Vec<StepStats> = [(0.5f32, 3i64), (f32::NAN, 0), (2.25, 7)]
            .iter()
            .map(|&(l, c)| StepStats {
                loss: Tensor::from(l),
                correct: Tensor::from(c),
            })
            .collect();
        let read = StepStats::read(&stats);
        assert_eq!(read.len(), 3);
        assert_eq!((read[0], read[2]), ((0.5, 3), (2.25, 7)));
        assert!(read[1].0.is_nan() && read[1].1 == 0);
        assert!(StepStats::read(&[]).is_empty());
    }
}
