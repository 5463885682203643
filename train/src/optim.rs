//! SGD with Nesterov momentum and decoupled-by-group weight decay, and the learning-rate
//! schedules. Written here rather than taken from `tch::nn::Optimizer` because its momentum
//! buffers live inside libtorch where a checkpoint cannot reach them, and an exact resume needs
//! them.
//!
//! The parameters of each weight-decay group live in one flat buffer (every variable becomes a
//! view into it, in its own memory layout), so a step is a dozen whole-buffer kernels instead of
//! eight per variable: on a GPU, where each ResNet-18 step is bound by kernel launches, the
//! per-variable update of 62 tensors cost more than the convolutions. libtorch's multi-tensor
//! (`foreach`) kernels, PyTorch's answer to the same problem, are not reachable through `tch`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::{Kind, Tensor};

/// Where each variable starts in a flat buffer, in elements: 128 f32 = 512 bytes, the CUDA
/// caching allocator's own block alignment. cuDNN and libtorch's vectorised kernels assume
/// aligned pointers, and views packed back to back failed on an H100 with "misaligned address".
const ALIGN: i64 = 128;

fn aligned(n: i64) -> i64 {
    (n + ALIGN - 1) / ALIGN * ALIGN
}

/// One trainable variable: a view into its group's flat buffer.
#[derive(Debug)]
struct Param {
    name: String,
    tensor: Tensor,
    /// Its momentum buffer, a view into the group's flat momentum in the same layout.
    momentum: Tensor,
    /// Stored channels-last (NHWC order in the flat buffer); its gradient is read in that order.
    channels_last: bool,
    /// Zero elements after it in the flat buffer, up to the next aligned start.
    padding: i64,
}

/// The variables that share a weight-decay setting, with their flat storage.
#[derive(Debug)]
struct Group {
    decay: bool,
    params: Vec<Param>,
    flat: Tensor,
    momentum: Tensor,
    /// Zeros that fill the gaps between gradients when they are packed flat.
    zeros: Tensor,
}

/// PyTorch's `SGD(nesterov=True, dampening=0)`: `g += wd * p` (decayed params only),
/// `buf = mu * buf + g`, `p -= lr * (g + mu * buf)`.
#[derive(Debug)]
pub struct Sgd {
    groups: Vec<Group>,
    pub momentum: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
}

/// Weight decay applies to convolution and linear weights; BatchNorm's scale and shift and all
/// biases are left alone (decaying them only hurts, as is common knowledge since Goyal et al.).
pub fn decays(name: &str) -> bool {
    name.ends_with(".weight") && !name.contains(".bn.")
}

/// Whether a 4-D tensor's strides are NHWC (`channels_last`); a 1x1 kernel is both layouts,
/// and reading it in either order gives the same elements.
fn is_channels_last(t: &Tensor) -> bool {
    let (size, stride) = (t.size(), t.stride());
    if size.len() != 4 {
        return false;
    }
    let (c, h, w) = (size[1], size[2], size[3]);
    stride == [h * w * c, 1, w * c, c]
}

/// `t`'s elements in the order of its flat storage (NHWC for a channels-last variable).
fn flat_order(t: &Tensor, channels_last: bool) -> Tensor {
    if channels_last {
        t.permute([0, 2, 3, 1]).reshape([-1])
    } else {
        t.reshape([-1])
    }
}

impl Sgd {
    /// Moves every trainable variable of `vs` into its group's flat buffer (values and layout
    /// kept). Create it after any layout change: a later `set_data` would detach a variable.
    pub fn new(vs: &VarStore, momentum: f64, weight_decay: f64, nesterov: bool) -> Self {
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let groups = [true, false]
            .into_iter()
            .filter_map(|decay| {
                let members: Vec<&(String, Tensor)> = vars.iter().filter(|(n, _)| decays(n) == decay).collect();
                let first = members.first()?;
                let total: i64 = members.iter().map(|(_, t)| aligned(t.numel() as i64)).sum();
                let opts = (first.1.kind(), first.1.device());
                let flat = Tensor::zeros([total], opts);
                let flat_momentum = Tensor::zeros([total], opts);
                let mut offset = 0;
                let params = members
                    .into_iter()
                    .map(|(name, var)| {
                        let n = var.numel() as i64;
                        let channels_last = is_channels_last(var);
                        let view = |buf: &Tensor| {
                            let part = buf.narrow(0, offset, n);
                            let size = var.size();
                            if channels_last {
                                part.view([size[0], size[2], size[3], size[1]]).permute([0, 3, 1, 2])
                            } else {
                                part.view(size.as_slice())
                            }
                        };
                        let (data, momentum) = (view(&flat), view(&flat_momentum));
                        let mut tensor = var.shallow_clone();
                        tch::no_grad(|| {
                            data.shallow_clone().copy_(var);
                            tensor.set_data(&data);
                        });
                        offset += aligned(n);
                        Param {
                            name: name.clone(),
                            tensor,
                            momentum,
                            channels_last,
                            padding: aligned(n) - n,
                        }
                    })
                    .collect();
                Some(Group {
                    decay,
                    params,
                    flat,
                    momentum: flat_momentum,
                    zeros: Tensor::zeros([ALIGN], opts),
                })
            })
            .collect();
        Self {
            groups,
            momentum,
            weight_decay,
            nesterov,
        }
    }

    /// The gradient of `loss` for every group, flat in the group's order (autograd's
    /// `grad`, so nothing accumulates in the variables' `.grad` and nothing needs zeroing).
    pub fn gradients(&self, loss: &Tensor) -> Vec<Tensor> {
        let inputs: Vec<&Tensor> = self
            .groups
            .iter()
            .flat_map(|g| g.params.iter().map(|p| &p.tensor))
            .collect();
        let mut grads = Tensor::run_backward(&[loss], &inputs, false, false).into_iter();
        self.groups
            .iter()
            .map(|g| {
                let mut parts = Vec::with_capacity(2 * g.params.len());
                for p in &g.params {
                    parts.push(match grads.next() {
                        // A variable that the loss does not reach gets a zero gradient.
                        Some(grad) if grad.defined() => flat_order(&grad, p.channels_last),
                        _ => p.tensor.zeros_like().reshape([-1]),
                    });
                    if p.padding > 0 {
                        parts.push(g.zeros.narrow(0, 0, p.padding));
                    }
                }
                Tensor::cat(&parts, 0)
            })
            .collect()
    }

    /// One update with gradients from [`Sgd::gradients`]. With `skip` (a one-element float
    /// tensor, 1 to skip), a step whose gradients overflowed leaves parameters and momentum as
    /// they were, decided on the device so the host never waits for it.
    pub fn step(&mut self, mut grads: Vec<Tensor>, lr: f64, skip: Option<&Tensor>) {
        let (mu, wd, nesterov) = (self.momentum, self.weight_decay, self.nesterov);
        tch::no_grad(|| {
            // keep = 1 - skip; momentum factor = mu * keep + skip (1 leaves the buffer alone).
            let masks = skip.map(|s| {
                let keep = s.ones_like() - s;
                (s.to_kind(Kind::Bool), &keep * mu + s, keep * lr)
            });
            for (group, g) in self.groups.iter_mut().zip(grads.iter_mut()) {
                if group.decay && wd != 0.0 {
                    let _ = g.g_add_(&(&group.flat * wd));
                }
                match &masks {
                    None => {
                        let _ = group.momentum.g_mul_scalar_(mu).g_add_(g);
                    }
                    Some((skip, factor, _)) => {
                        let _ = g.masked_fill_(skip, 0.0);
                        let _ = group.momentum.g_mul_(factor).g_add_(g);
                    }
                }
                let update = if nesterov {
                    &*g + &group.momentum * mu
                } else {
                    group.momentum.shallow_clone()
                };
                let update = match &masks {
                    None => update * lr,
                    Some((_, _, step_lr)) => update * step_lr,
                };
                let _ = group.flat.g_sub_(&update);
            }
        });
    }

    /// The momentum buffers by variable name, for a checkpoint (views: copy to keep).
    pub fn state(&self) -> BTreeMap<String, Tensor> {
        self.groups
            .iter()
            .flat_map(|g| g.params.iter())
            .map(|p| (p.name.clone(), p.momentum.shallow_clone()))
            .collect()
    }

    /// Restores momentum buffers saved by [`Sgd::state`]; every variable must have one.
    pub fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<(), String> {
        for p in self.groups.iter_mut().flat_map(|g| g.params.iter_mut()) {
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
            // Smith's one-cycle shape: a linear warm-up from peak/25, then a cosine decay to
            // peak/1e4. Not PyTorch's OneCycleLR, which warms up on a cosine too and ends at
            // peak/2.5e5.
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
            // d/dw of sum(2 w) is 2 for every element.
            let loss = (&w * 2.0 + &b * 3.0).sum(Kind::Float);
            opt.step(opt.gradients(&loss), 0.5, None);
            let gw = 2.0 + 0.1 * pw;
            bw = 0.9 * bw + gw;
            pw -= 0.5 * (gw + 0.9 * bw);
            let gb = 3.0;
            bb = 0.9 * bb + gb;
            pb -= 0.5 * (gb + 0.9 * bb);
            // The variables the model holds see the update made in the flat buffers.
            assert!((w.double_value(&[0]) - pw).abs() < 1e-5, "step {step}");
            assert!((b.double_value(&[2]) - pb).abs() < 1e-5, "step {step}");
            let state = opt.state();
            assert!(
                (state["w.weight"].double_value(&[1]) - bw).abs() < 1e-5,
                "momentum, step {step}"
            );
        }
    }

    #[test]
    fn flat_buffers_keep_values_and_layouts_and_read_gradients_in_order() {
        tch::manual_seed(3);
        let vs = VarStore::new(Device::Cpu);
        let root = vs.root();
        let mut conv = (&root / "conv").var("weight", &[4, 3, 2, 2], tch::nn::Init::Randn { mean: 0.0, stdev: 1.0 });
        let one = (&root / "proj").var("weight", &[4, 3, 1, 1], tch::nn::Init::Randn { mean: 0.0, stdev: 1.0 });
        let bias = (&root / "conv").var("bias", &[4], tch::nn::Init::Randn { mean: 0.0, stdev: 1.0 });
        let cl = crate::layout::to_channels_last(&conv);
        tch::no_grad(|| conv.set_data(&cl));
        let before: Vec<Tensor> = [&conv, &one, &bias].iter().map(|t| t.copy()).collect();
        let mut opt = Sgd::new(&vs, 0.0, 0.0, false);
        for (t, b) in [&conv, &one, &bias].iter().zip(&before) {
            assert!(t.equal(b), "values kept");
            assert_eq!(t.stride(), b.stride(), "layout kept");
        }
        for g in &opt.groups {
            for p in &g.params {
                let at = p.tensor.data_ptr() as usize - g.flat.data_ptr() as usize;
                assert_eq!(at % (4 * ALIGN as usize), 0, "{} starts aligned", p.name);
            }
        }
        // d/dt of sum(t * c) is c: each element must get its own coefficient back.
        let coefs: Vec<Tensor> = before.iter().map(Tensor::randn_like).collect();
        let loss = [&conv, &one, &bias]
            .iter()
            .zip(&coefs)
            .map(|(t, c)| (*t * c).sum(Kind::Float))
            .fold(Tensor::zeros([], (Kind::Float, Device::Cpu)), |a, b| a + b);
        opt.step(opt.gradients(&loss), 0.5, None);
        for ((t, b), c) in [&conv, &one, &bias].iter().zip(&before).zip(&coefs) {
            let expected = b - c * 0.5;
            assert!(t.allclose(&expected, 1e-6, 1e-6, false), "{:?}", t.size());
        }
    }

    #[test]
    fn a_skipped_step_changes_nothing_and_a_kept_one_matches_the_plain_step() {
        let make = || {
            let vs = VarStore::new(Device::Cpu);
            let w = (vs.root() / "fc").var("weight", &[3], tch::nn::Init::Const(1.0));
            (Sgd::new(&vs, 0.9, 0.1, true), w, vs)
        };
        let (mut plain, wp, _a) = make();
        let (mut masked, wm, _b) = make();
        for step in 0..3 {
            let lp = (&wp * 2.0).sum(Kind::Float);
            plain.step(plain.gradients(&lp), 0.5, None);
            let lm = (&wm * 2.0).sum(Kind::Float);
            masked.step(masked.gradients(&lm), 0.5, Some(&Tensor::from_slice(&[0.0f32])));
            assert!(wp.allclose(&wm, 1e-6, 1e-6, false), "step {step}");
        }
        let (w, m) = (wm.copy(), masked.state()["fc.weight"].copy());
        let overflowed = (&wm * f64::INFINITY).sum(Kind::Float);
        masked.step(masked.gradients(&overflowed), 0.5, Some(&Tensor::from_slice(&[1.0f32])));
        assert!(
            wm.equal(&w) && masked.state()["fc.weight"].equal(&m),
            "skipped step left no trace"
        );
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
