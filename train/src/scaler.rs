//! Dynamic loss scaling for float16 autocast (PyTorch's `GradScaler`, which `tch` does not
//! have): scale the loss so small gradients survive, skip steps whose gradients overflow and
//! halve the scale; double it after 2,000 good steps in a row. Everything stays on the device
//! (libtorch's own AMP kernels, which also run on the CPU), so no step waits for the host.
//!
//! Its state (the scale and the count of good steps since the last change) is part of a
//! training checkpoint ([`ScalerState`]): without it a resumed mixed-precision run would start
//! again from 65,536 and take other steps than the uninterrupted run.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::model::ModelError;

/// The scale a fresh run starts from, as in PyTorch.
pub const INITIAL_SCALE: f32 = 65536.0;
const GROWTH_FACTOR: f64 = 2.0;
const BACKOFF_FACTOR: f64 = 0.5;
const GROWTH_INTERVAL: i64 = 2000;

/// What a checkpoint keeps of the scaler. Both values are exact in JSON: the scale is a power of
/// two in `f32`, the tracker a small integer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScalerState {
    pub scale: f32,
    /// Good steps since the scale last changed.
    pub growth_tracker: i32,
}

impl Default for ScalerState {
    fn default() -> Self {
        Self {
            scale: INITIAL_SCALE,
            growth_tracker: 0,
        }
    }
}

#[derive(Debug)]
pub struct GradScaler {
    /// `[1]` float32 on the training device.
    scale: Tensor,
    /// `[1]` int32 on the training device.
    growth_tracker: Tensor,
}

fn amp_err(e: tch::TchError) -> ModelError {
    ModelError::Readback {
        what: "the loss scaler",
        reason: e.to_string(),
    }
}

impl GradScaler {
    pub fn new(device: Device) -> Self {
        Self::from_state(ScalerState::default(), device)
    }

    pub fn from_state(state: ScalerState, device: Device) -> Self {
        Self {
            scale: Tensor::full([1], f64::from(state.scale), (Kind::Float, device)),
            growth_tracker: Tensor::full([1], i64::from(state.growth_tracker), (Kind::Int, device)),
        }
    }

    /// Reads the state from the device (a wait for the queued steps: call it at checkpoints).
    pub fn state(&self) -> Result<ScalerState, ModelError> {
        let scale = self.scale.f_to_device(Device::Cpu).and_then(|t| t.f_double_value(&[0]));
        let tracker = self
            .growth_tracker
            .f_to_device(Device::Cpu)
            .and_then(|t| t.f_int64_value(&[0]));
        let (scale, tracker) = (scale.map_err(amp_err)?, tracker.map_err(amp_err)?);
        Ok(ScalerState {
            scale: scale as f32,
            growth_tracker: i32::try_from(tracker).map_err(|e| ModelError::Readback {
                what: "the loss scaler",
                reason: format!("growth tracker {tracker}: {e}"),
            })?,
        })
    }

    /// Replaces the state, on the device the scaler lives on.
    pub fn load_state(&mut self, state: ScalerState) {
        *self = Self::from_state(state, self.scale.device());
    }

    /// `loss * scale`, whose gradients [`GradScaler::unscale`] turns back.
    pub fn scale_loss(&self, loss: &Tensor) -> Tensor {
        loss * &self.scale
    }

    /// Divides the gradients by the scale in place; returns a one-element float tensor that is
    /// 1 when any of them is not finite (the step must be skipped), 0 otherwise.
    pub fn unscale(&self, grads: &mut [Tensor]) -> Result<Tensor, ModelError> {
        let mut found_inf = Tensor::zeros([1], (Kind::Float, self.scale.device()));
        let inv_scale = self.scale.reciprocal();
        for g in grads {
            g.f_internal_amp_non_finite_check_and_unscale(&mut found_inf, &inv_scale)
                .map_err(amp_err)?;
        }
        Ok(found_inf)
    }

    /// After a step: halve the scale if it overflowed (`found_inf` 1), else count a good step
    /// and double the scale every [`GROWTH_INTERVAL`] of them.
    pub fn update(&mut self, found_inf: &Tensor) -> Result<(), ModelError> {
        self.scale
            .f_internal_amp_update_scale_(
                &self.growth_tracker,
                found_inf,
                GROWTH_FACTOR,
                BACKOFF_FACTOR,
                GROWTH_INTERVAL,
            )
            .map(|_| ())
            .map_err(amp_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flag(v: f32) -> Tensor {
        Tensor::from_slice(&[v])
    }

    /// PyTorch's rules, on the CPU: an overflow halves the scale and resets the count, good
    /// steps are counted, and the interval's last one doubles the scale.
    #[test]
    fn overflow_halves_good_steps_count_and_the_interval_doubles() -> Result<(), ModelError> {
        let mut s = GradScaler::new(Device::Cpu);
        assert_eq!(s.state()?, ScalerState::default());
        s.update(&flag(1.0))?;
        for _ in 0..3 {
            s.update(&flag(0.0))?;
        }
        assert_eq!(
            s.state()?,
            ScalerState {
                scale: 32768.0,
                growth_tracker: 3
            }
        );
        s.load_state(ScalerState {
            scale: 8.0,
            growth_tracker: (GROWTH_INTERVAL - 1) as i32,
        });
        s.update(&flag(0.0))?;
        assert_eq!(
            s.state()?,
            ScalerState {
                scale: 16.0,
                growth_tracker: 0
            }
        );
        Ok(())
    }

    #[test]
    fn unscale_divides_and_flags_non_finite_gradients() -> Result<(), ModelError> {
        let s = GradScaler::from_state(
            ScalerState {
                scale: 4.0,
                growth_tracker: 0,
            },
            Device::Cpu,
        );
        let mut grads = vec![Tensor::from_slice(&[8.0f32, -2.0])];
        let found = s.unscale(&mut grads)?;
        assert_eq!(Vec::<f32>::try_from(&grads[0]).map_err(amp_err)?, [2.0, -0.5]);
        assert_eq!(found.double_value(&[0]), 0.0);
        let mut grads = vec![Tensor::from_slice(&[1.0f32]), Tensor::from_slice(&[f32::INFINITY])];
        assert_eq!(s.unscale(&mut grads)?.double_value(&[0]), 1.0);
        Ok(())
    }
}
