//! The options that define a training run, their defaults and their checks.

use serde::{Deserialize, Serialize};

use crate::optim::Schedule;

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

impl FitOptions {
    /// Why these options cannot train, naming the command-line option at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.epochs == 0 {
            return Err("--epochs must be at least 1".into());
        }
        if self.batch_size < 2 {
            return Err(format!(
                "--batch-size must be at least 2 (BatchNorm cannot train on one image), got {}",
                self.batch_size
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(format!("--lr must be positive, got {}", self.lr));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(format!(
                "--label-smoothing must be in [0, 1), got {}",
                self.label_smoothing
            ));
        }
        if self.limit_train.is_some_and(|n| n < 2) || self.limit_test.is_some_and(|n| n < 1) {
            return Err("--limit-train needs at least 2 images and --limit-test at least 1".into());
        }
        Ok(())
    }

    /// `field: run has X, given Y` for every option that differs from `given`.
    pub fn diff(&self, given: &FitOptions) -> String {
        let (a, b) = (serde_json::to_value(self), serde_json::to_value(given));
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
}
