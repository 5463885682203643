//! One training step: a model with its optimiser, the channels-last layout, float16 loss
//! scaling ([`crate::scaler`]), and the per-step statistics that stay on the device until read
//! in batches.

use tch::nn::VarStore;
use tch::{Device, Kind, Reduction, Tensor};
use tracing::warn;

use crate::checkpoint::{CheckpointError, Loaded, TrainingState};
use crate::layout::{channels_last_supported, to_channels_last};
use crate::model::{ModelError, ResNet18, ResNetConfig};
use crate::optim::Sgd;
use crate::options::FitOptions;
use crate::scaler::{GradScaler, ScalerState};

/// Why a checkpoint does not fit a trainer.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The optimiser's buffers do not match the model (the message names the variable).
    #[error("{0}")]
    Momentum(String),
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
    /// `(loss, correct)` of each step, read from the device at once. Stats that cannot be
    /// read are an error, never an empty list: the caller checks every loss it gets back.
    pub fn read(stats: &[StepStats]) -> Result<Vec<(f64, i64)>, ModelError> {
        if stats.is_empty() {
            return Ok(Vec::new());
        }
        let readback = |reason: String| ModelError::Readback {
            what: "the training steps' losses",
            reason,
        };
        let tch_err = |e: tch::TchError| readback(e.to_string());
        let stack = |field: fn(&StepStats) -> &Tensor| -> Result<Tensor, tch::TchError> {
            let values = stats
                .iter()
                .map(|s| field(s).f_to_kind(Kind::Double))
                .collect::<Result<Vec<_>, _>>()?;
            Tensor::f_stack(&values, 0)
        };
        let both = Tensor::f_stack(
            &[
                stack(|s| &s.loss).map_err(tch_err)?,
                stack(|s| &s.correct).map_err(tch_err)?,
            ],
            0,
        )
        .and_then(|t| t.f_to_device(Device::Cpu))
        .and_then(|t| t.f_reshape([-1]))
        .map_err(tch_err)?;
        let values = Vec::<f64>::try_from(both).map_err(tch_err)?;
        if values.len() != 2 * stats.len() {
            return Err(readback(format!(
                "{} values for {} steps (each step's loss and count must be one number)",
                values.len(),
                stats.len()
            )));
        }
        let (loss, correct) = values.split_at(stats.len());
        Ok(loss.iter().zip(correct).map(|(&l, &c)| (l, c as i64)).collect())
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
        let supported = channels_last_supported(config.width, device);
        if channels_last && !supported {
            warn!(
                "channels-last is off at width {} on the CPU (needs a multiple of 8; see layout::channels_last_supported)",
                config.width
            );
        }
        let channels_last = channels_last && supported;
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
                let mut grads = self.opt.gradients(&scaler.scale_loss(&loss));
                let found_inf = scaler.unscale(&mut grads)?;
                self.opt.step(grads, lr, Some(&found_inf));
                scaler.update(&found_inf)?;
            }
        }
        Ok(StepStats {
            loss: loss.detach(),
            correct,
        })
    }

    /// Loss scaling from `state` without autocast, on any device: what `amp` does on a GPU
    /// minus the float16 forward pass, so the scaler's part of a run can be checked on a CPU.
    pub fn with_loss_scaling(mut self, state: ScalerState) -> Self {
        self.scaler = Some(GradScaler::from_state(state, self.device));
        self
    }

    /// The loss scaler's state (`None` without mixed precision); waits for the queued steps.
    pub fn scaler_state(&self) -> Result<Option<ScalerState>, ModelError> {
        self.scaler.as_ref().map(GradScaler::state).transpose()
    }

    /// Everything a checkpoint needs to continue this run exactly, besides the weights.
    pub fn training_state(&self, seed: u64, options: serde_json::Value) -> Result<TrainingState, ModelError> {
        Ok(TrainingState {
            momentum: self.opt.state(),
            seed,
            options,
            scaler: self.scaler_state()?,
        })
    }

    /// Puts a checkpoint's weights, momentum buffers and loss-scaler state into this trainer.
    pub fn restore(&mut self, loaded: &Loaded) -> Result<(), RestoreError> {
        loaded.copy_weights_into(&self.vs)?;
        let state = loaded.training.as_ref();
        self.opt
            .load_state(state.map(|s| &s.momentum).unwrap_or(&Default::default()))
            .map_err(RestoreError::Momentum)?;
        match (&mut self.scaler, state.and_then(|s| s.scaler)) {
            (Some(scaler), Some(saved)) => scaler.load_state(saved),
            (Some(_), None) => warn!(
                "{} holds no loss-scaler state (a run without mixed precision, or an earlier \
                 version): the scale starts again from {}",
                loaded.path.display(),
                crate::scaler::INITIAL_SCALE
            ),
            (None, Some(saved)) => warn!(
                "{}: the run trained in mixed precision (loss scale {}); this one does not, so \
                 it leaves the loss scale unused",
                loaded.path.display(),
                saved.scale
            ),
            (None, None) => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_stats_are_read_back_in_step_order() -> Result<(), ModelError> {
        let stats: Vec<StepStats> = [(0.5f32, 3i64), (f32::NAN, 0), (2.25, 7)]
            .iter()
            .map(|&(l, c)| StepStats {
                loss: Tensor::from(l),
                correct: Tensor::from(c),
            })
            .collect();
        let read = StepStats::read(&stats)?;
        assert_eq!(read.len(), 3);
        assert_eq!((read[0], read[2]), ((0.5, 3), (2.25, 7)));
        assert!(read[1].0.is_nan() && read[1].1 == 0);
        assert!(StepStats::read(&[])?.is_empty());
        Ok(())
    }

    /// A read that fails must not come back as "no steps": the caller would check no loss.
    #[test]
    fn step_stats_that_cannot_be_read_are_an_error() {
        let step = |loss: Tensor, correct: Tensor| StepStats { loss, correct };
        let vector = || Tensor::from_slice(&[f32::NAN, 1.0]);
        let cases = [
            vec![step(vector(), Tensor::from(1i64))],
            vec![step(vector(), Tensor::from_slice(&[1i64, 2]))],
        ];
        for stats in &cases {
            let got = StepStats::read(stats);
            assert!(got.as_ref().is_err_and(|e| e.to_string().contains("losses")), "{got:?}");
        }
    }
}
