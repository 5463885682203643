//! SGD with Nesterov momentum and decoupled-by-group weight decay, and the learning-rate
//! schedules. Written here rather than taken from `tch::nn::Optimizer` because its momentum
//! buffers live inside libtorch where a checkpoint cannot reach them, and an exact resume needs
//! them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::Tensor;
use tch::nn::VarStore;

/// One trainable variable with its optimiser state.
#[derive(Debug)]
struct Param {
    name: String,
    tensor: Tensor,
    momentum: Tensor,
    decay: bool,
}

/// PyTorch's `SGD(nesterov=True, dampening=0)`: `g += wd * p` (decayed params only),
/// `buf = mu * buf + g`, `p -= lr * (g + mu * buf)`.
#[derive(Debug)]
pub struct Sgd {
    params: Vec<Param>,
    pub momentum: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
}

/// Weight decay applies to convolution and linear weights; BatchNorm's scale and shift and all
/// biases are left alone (decaying them only hurts, as is common knowledge since Goyal et al.).
pub fn decays(name: &str) -> bool {
    name.ends_with(".weight") && !name.contains(".bn.")
}

impl Sgd {
    pub fn new(vs: &VarStore, momentum: f64, weight_decay: f64, nesterov: bool) -> Self {
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let params = vars
            .into_iter()
            .map(|(name, tensor)| Param {
                decay: decays(&name),
                momentum: tch::no_grad(|| tensor.zeros_like()),
                name,
                tensor,
            })
            .collect();
        Self {
            params,
            momentum,
            weight_decay,
            nesterov,
        }
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.tensor.zero_grad();
        }
    }

    pub fn step(&mut self, lr: f64) {
        let (mu, wd, nesterov) = (self.momentum, self.weight_decay, self.nesterov);
        tch::no_grad(|| {
            for p in &mut self.params {
                let grad = p.tensor.grad();
                if !grad.defined() {
                    continue;
                }
                let g = if p.decay && wd != 0.0 {
                    grad + &p.tensor * wd
                } else {
                    grad
                };
                let _ = p.momentum.g_mul_scalar_(mu).g_add_(&g);
                let update = if nesterov {
                    g + &p.momentum * mu
                } else {
                    p.momentum.shallow_clone()
                };
                let _ = p.tensor.g_sub_(&(update * lr));
            }
        });
    }

    /// The momentum buffers by variable name, for a checkpoint.
    pub fn state(&self) -> BTreeMap<String, Tensor> {
        self.params
            .iter()
            .map(|p| (p.name.clone(), p.momentum.shallow_clone()))
            .collect()
    }

    /// Restores momentum buffers saved by [`Sgd::state`]; every variable must have one.
    pub fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<(), String> {
        for p in &mut self.params {
            let buf = state
                .get(&p.name)
                .ok_or_else(|| format!("no momentum buffer for `{}`", p.name))?;
            if buf.size() != p.momentum.size() {
                return Err(format!(
                    "momentum buffer of `{}` has shape {:?}, expected {:?}",
                    p.name,
                    buf.size(),
                    p.momentum.size()
                ));
            }
            tch::no_grad(|| p.momentum.copy_(buf));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// Linear warm-up to the peak over the first 30% of steps, then cosine annealing to ~0
    /// (Smith's one-cycle, the fastest way to a good accuracy in a fixed budget).
    OneCycle,
    /// Linear warm-up over `--warmup-epochs`, then cosine annealing to 0.
    WarmupCosine,
}

/// The learning rate of every step of a run, a pure function of the step so a resumed run
/// continues on the same curve.
#[derive(Debug, Clone, Copy)]
pub struct LrSchedule {
    pub schedule: Schedule,
    pub peak: f64,
    pub total_steps: u64,
    pub warmup_steps: u64,
}

impl LrSchedule {
    pub fn new(schedule: Schedule, peak: f64, total_steps: u64, warmup_epochs: f64, steps_per_epoch: u64) -> Self {
        let warmup_steps = match schedule {
            Schedule::OneCycle => (total_steps as f64 * 0.3).round() as u64,
            Schedule::WarmupCosine => (warmup_epochs * steps_per_epoch as f64).round() as u64,
        };
        Self {
            schedule,
            peak,
            total_steps: total_steps.max(1),
            warmup_steps: warmup_steps.min(total_steps),
        }
    }

    pub fn at(&self, step: u64) -> f64 {
        let step = step.min(self.total_steps);
        let (start, end) = match self.schedule {
            // One-cycle starts at peak/25 and ends near peak/1e4, as in Smith and in PyTorch.
            Schedule::OneCycle => (self.peak / 25.0, self.peak / 1e4),
            Schedule::WarmupCosine => (0.0, 0.0),
        };
        if step < self.warmup_steps {
            let t = (step + 1) as f64 / self.warmup_steps as f64;
            return start + (self.peak - start) * t;
        }
        let decay_steps = (self.total_steps - self.warmup_steps).max(1);
        let t = (step - self.warmup_steps) as f64 / decay_steps as f64;
        end + (self.peak - end) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn weight_decay_groups_skip_batchnorm_and_biases() {
        assert!(decays("layer1.0.conv1.conv.weight"));
        assert!(decays("fc.weight"));
        assert!(!decays("fc.bias"));
        assert!(!decays("stem.bn.weight"));
        assert!(!decays("stem.bn.bias"));
    }

    #[test]
    fn sgd_matches_the_nesterov_formula_by_hand() {
        let vs = VarStore::new(Device::Cpu);
        let w = (vs.root() / "w").var("weight", &[3], tch::nn::Init::Const(1.0));
        let b = (vs.root() / "w").var("bias", &[3], tch::nn::Init::Const(1.0));
        let mut opt = Sgd::new(&vs, 0.9, 0.1, true);
        let (mut pw, mut pb, mut bw, mut bb) = (1.0f64, 1.0f64, 0.0f64, 0.0f64);
        for step in 0..3 {
            opt.zero_grad();
            // d/dw of sum(2 w) is 2 for every element.
            let loss = (&w * 2.0 + &b * 3.0).sum(Kind::Float);
            loss.backward();
            opt.step(0.5);
            let gw = 2.0 + 0.1 * pw;
            bw = 0.9 * bw + gw;
            pw -= 0.5 * (gw + 0.9 * bw);
            let gb = 3.0;
            bb = 0.9 * bb + gb;
            pb -= 0.5 * (gb + 0.9 * bb);
            assert!((w.double_value(&[0]) - pw).abs() < 1e-5, "step {step}");
            assert!((b.double_value(&[2]) - pb).abs() < 1e-5, "step {step}");
        }
    }

    #[test]
    fn schedules_warm_up_peak_and_anneal() {
        for schedule in [Schedule::OneCycle, Schedule::WarmupCosine] {
            let s = LrSchedule::new(schedule, 0.4, 1000, 2.0, 100);
            let lrs: Vec<f64> = (0..1000).map(|i| s.at(i)).collect();
            let peak = lrs.iter().cloned().fold(0.0, f64::max);
            assert!((peak - 0.4).abs() < 1e-9, "{schedule:?}");
            let top = lrs.iter().position(|&l| l == peak).unwrap_or(0);
            assert!(
                lrs[..top].windows(2).all(|w| w[0] <= w[1]),
                "{schedule:?} warm-up rises"
            );
            assert!(lrs[top..].windows(2).all(|w| w[0] >= w[1]), "{schedule:?} anneal falls");
            assert!(
                lrs[0] < 0.05 && lrs[999] < 1e-3,
                "{schedule:?}: {} .. {}",
                lrs[0],
                lrs[999]
            );
        }
    }
}
