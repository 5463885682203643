//! Single-file checkpoints: the weights (every `VarStore` variable, BatchNorm running statistics
//! included), the optimiser's momentum buffers, the epoch, the RNG state and a JSON header that
//! says what the model is (width, classes, normalisation, data set, accuracy).
//!
//! The file is libtorch's named-tensor archive (`Tensor::save_multi`): weights under their
//! `VarStore` names (see [`crate::model`]), momentum buffers under `__momentum__.<name>`, and the
//! header as UTF-8 JSON in a `u8` tensor named `__meta__`. It is written atomically
//! ([`crate::atomic_file`]: a temporary file of one fixed name beside it, fsync, rename, fsync of
//! the directory), so a kill at any moment leaves either the previous checkpoint or the new one,
//! never a torn file.
//!
//! A mixed-precision run's loss scaler ([`crate::scaler`]) is in the header too.
//!
//! The RNG state is the run's seed and the number of finished epochs: training reseeds libtorch's
//! generator from `(seed, epoch)` at the start of every epoch (see [`epoch_seed`]), so resuming
//! from the header replays the same shuffles and augmentations as an uninterrupted run.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::{Device, Kind, TchError, Tensor};

use crate::atomic_file::ReplaceError;
use crate::model::{ModelError, ResNet18, ResNetConfig};
use crate::scaler::ScalerState;

/// Name of the tensor holding the JSON header.
pub const META_TENSOR: &str = "__meta__";
/// Prefix of the tensors holding momentum buffers, followed by the variable's name.
pub const MOMENTUM_PREFIX: &str = "__momentum__.";
/// Written into the header so that a foreign file is recognised as one.
const FORMAT: &str = "resnet-serverless-checkpoint";
const FORMAT_VERSION: u32 = 1;

/// What a checkpoint says about its model: enough to rebuild it, normalise its input and label
/// its output.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointInfo {
    pub config: ResNetConfig,
    /// Class names in label order (index = class id), as found in the training data.
    pub class_names: Vec<String>,
    /// Per-channel (RGB) mean of the training pixels scaled to `[0, 1]`.
    pub mean: [f32; 3],
    /// Per-channel (RGB) standard deviation of the training pixels scaled to `[0, 1]`.
    pub std: [f32; 3],
    /// e.g. `"CIFAR-10"`, or the data directory's name.
    pub dataset: String,
    /// Epochs of training done.
    pub epochs: u32,
    /// Top-1 accuracy on the test split after the last epoch, in `[0, 1]`.
    pub test_accuracy: Option<f64>,
}

impl CheckpointInfo {
    /// Info for an untrained model: CIFAR-10-like statistics, classes `class0..`, zero epochs.
    /// Handy in tests that need a checkpoint without training one.
    pub fn untrained(config: ResNetConfig) -> Self {
        Self {
            config,
            class_names: (0..config.num_classes).map(|i| format!("class{i}")).collect(),
            mean: [0.4914, 0.4822, 0.4465],
            std: [0.2470, 0.2435, 0.2616],
            dataset: "synthetic".to_owned(),
            epochs: 0,
            test_accuracy: None,
        }
    }
}

/// Everything beyond the weights that `train fit --resume` needs to continue a run exactly.
#[derive(Debug)]
pub struct TrainingState {
    /// SGD momentum buffer per trainable variable name.
    pub momentum: BTreeMap<String, Tensor>,
    /// The run's seed; with [`CheckpointInfo::epochs`] it is the RNG state (see [`epoch_seed`]).
    pub seed: u64,
    /// The run's options as JSON (schedule, batch size...), so a resume can refuse a changed run.
    pub options: serde_json::Value,
    /// The float16 loss scaler's state, when the run trains in mixed precision.
    pub scaler: Option<ScalerState>,
}

/// The seed libtorch's generator gets at the start of `epoch` (0-based) of a run seeded `seed`.
pub fn epoch_seed(seed: u64, epoch: u32) -> i64 {
    // SplitMix64 finaliser: neighbouring (seed, epoch) pairs get unrelated streams.
    let mut z = seed ^ (u64::from(epoch).wrapping_add(1)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    // libtorch takes a signed seed; keep it non-negative.
    (z >> 1) as i64
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("checkpoint {path} cannot be read as a libtorch archive (truncated or corrupt?): {source}")]
    Read { path: PathBuf, source: TchError },
    #[error("checkpoint {path} cannot be written: {source}")]
    Write { path: PathBuf, source: TchError },
    #[error("{path} is not a checkpoint of this project: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("checkpoint {path} does not match: {what} is {found} in the file but {expected} here")]
    Mismatch {
        path: PathBuf,
        what: String,
        found: String,
        expected: String,
    },
    #[error("checkpoint {path} holds a model that cannot be built: {source}")]
    Model { path: PathBuf, source: ModelError },
}

/// The JSON header as stored.
#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    format: String,
    format_version: u32,
    width: i64,
    num_classes: i64,
    class_names: Vec<String>,
    mean: [f32; 3],
    std: [f32; 3],
    dataset: String,
    epochs: u32,
    test_accuracy: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    training: Option<TrainingMeta>,
}

#[derive(Debug, Serialize, Deserialize)]
struct TrainingMeta {
    seed: u64,
    options: serde_json::Value,
    /// Absent in runs without mixed precision and in checkpoints of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scaler: Option<ScalerState>,
}

/// Writes a model's weights and info (no optimiser state): what the exporter and server need.
pub fn save(path: &Path, vs: &VarStore, info: &CheckpointInfo) -> Result<(), CheckpointError> {
    write(path, vs, info, None)
}

/// Writes weights, info and the optimiser/RNG state that a resumed run needs.
pub fn save_training(
    path: &Path,
    vs: &VarStore,
    info: &CheckpointInfo,
    state: &TrainingState,
) -> Result<(), CheckpointError> {
    write(path, vs, info, Some(state))
}

fn write(
    path: &Path,
    vs: &VarStore,
    info: &CheckpointInfo,
    state: Option<&TrainingState>,
) -> Result<(), CheckpointError> {
    if info.class_names.len() as i64 != info.config.num_classes {
        return Err(CheckpointError::Mismatch {
            path: path.to_owned(),
            what: "the number of class names".to_owned(),
            found: info.class_names.len().to_string(),
            expected: info.config.num_classes.to_string(),
        });
    }
    let meta = Meta {
        format: FORMAT.to_owned(),
        format_version: FORMAT_VERSION,
        width: info.config.width,
        num_classes: info.config.num_classes,
        class_names: info.class_names.clone(),
        mean: info.mean,
        std: info.std,
        dataset: info.dataset.clone(),
        epochs: info.epochs,
        test_accuracy: info.test_accuracy,
        training: state.map(|s| TrainingMeta {
            seed: s.seed,
            options: s.options.clone(),
            scaler: s.scaler,
        }),
    };
    let json = serde_json::to_vec(&meta).map_err(|e| CheckpointError::Io {
        path: path.to_owned(),
        source: io::Error::other(e),
    })?;

    let mut named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        // Copies: the trainer's variables are views into its optimiser's flat buffers, and a
        // view would be written with the whole buffer behind it.
        .map(|(name, t)| (name, t.to_device(Device::Cpu).copy()))
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(state) = state {
        for (name, buf) in &state.momentum {
            named.push((format!("{MOMENTUM_PREFIX}{name}"), buf.to_device(Device::Cpu).copy()));
        }
    }
    named.push((META_TENSOR.to_owned(), Tensor::from_slice(&json)));

    crate::atomic_file::replace(path, |file| Tensor::save_multi_to_stream(&named, file)).map_err(|e| match e {
        ReplaceError::Io(source) => CheckpointError::Io {
            path: path.to_owned(),
            source,
        },
        ReplaceError::Write(source) => CheckpointError::Write {
            path: path.to_owned(),
            source,
        },
    })
}

/// A checkpoint read into memory, not yet bound to a model.
#[derive(Debug)]
pub struct Loaded {
    pub path: PathBuf,
    pub info: CheckpointInfo,
    /// Weights by variable name, on the CPU.
    pub weights: BTreeMap<String, Tensor>,
    /// Present when the checkpoint was written by a training run.
    pub training: Option<TrainingState>,
}

/// Reads and validates a checkpoint file.
pub fn read(path: &Path) -> Result<Loaded, CheckpointError> {
    // libtorch's message for a missing file is vague; say it ourselves.
    fs::metadata(path).map_err(|source| CheckpointError::Io {
        path: path.to_owned(),
        source,
    })?;
    let named = Tensor::load_multi_with_device(path, Device::Cpu).map_err(|source| CheckpointError::Read {
        path: path.to_owned(),
        source,
    })?;
    let format_err = |reason: String| CheckpointError::Format {
        path: path.to_owned(),
        reason,
    };
    let mut meta_bytes = None;
    let mut weights = BTreeMap::new();
    let mut momentum = BTreeMap::new();
    for (name, tensor) in named {
        if name == META_TENSOR {
            if tensor.kind() != Kind::Uint8 || tensor.dim() != 1 {
                return Err(format_err(format!("`{META_TENSOR}` is not a byte string")));
            }
            let bytes = Vec::<u8>::try_from(&tensor).map_err(|e| format_err(e.to_string()))?;
            meta_bytes = Some(bytes);
        } else if let Some(var) = name.strip_prefix(MOMENTUM_PREFIX) {
            momentum.insert(var.to_owned(), tensor);
        } else {
            weights.insert(name, tensor);
        }
    }
    let meta_bytes = meta_bytes.ok_or_else(|| format_err(format!("no `{META_TENSOR}` header")))?;
    let meta: Meta =
        serde_json::from_slice(&meta_bytes).map_err(|e| format_err(format!("header is not valid JSON: {e}")))?;
    if meta.format != FORMAT {
        return Err(format_err(format!("header format is {:?}", meta.format)));
    }
    if meta.format_version != FORMAT_VERSION {
        return Err(format_err(format!(
            "format version {} (this build reads {FORMAT_VERSION})",
            meta.format_version
        )));
    }
    if meta.class_names.len() as i64 != meta.num_classes {
        return Err(format_err(format!(
            "{} class names for {} classes",
            meta.class_names.len(),
            meta.num_classes
        )));
    }
    let info = CheckpointInfo {
        config: ResNetConfig {
            width: meta.width,
            num_classes: meta.num_classes,
        },
        class_names: meta.class_names,
        mean: meta.mean,
        std: meta.std,
        dataset: meta.dataset,
        epochs: meta.epochs,
        test_accuracy: meta.test_accuracy,
    };
    let training = meta.training.map(|t| TrainingState {
        momentum,
        seed: t.seed,
        options: t.options,
        scaler: t.scaler,
    });
    Ok(Loaded {
        path: path.to_owned(),
        info,
        weights,
        training,
    })
}

impl Loaded {
    /// Fails unless the checkpoint's model has exactly this configuration.
    pub fn expect_config(&self, expected: ResNetConfig) -> Result<(), CheckpointError> {
        let found = self.info.config;
        for (what, f, e) in [
            ("width", found.width, expected.width),
            ("class count", found.num_classes, expected.num_classes),
        ] {
            if f != e {
                return Err(CheckpointError::Mismatch {
                    path: self.path.clone(),
                    what: what.to_owned(),
                    found: f.to_string(),
                    expected: e.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Copies the weights into `vs`, which must hold exactly the same variables and shapes.
    pub fn copy_weights_into(&self, vs: &VarStore) -> Result<(), CheckpointError> {
        let mismatch = |what: String, found: String, expected: String| CheckpointError::Mismatch {
            path: self.path.clone(),
            what,
            found,
            expected,
        };
        let vars = vs.variables();
        for (name, var) in &vars {
            let src = self
                .weights
                .get(name)
                .ok_or_else(|| mismatch(format!("variable `{name}`"), "absent".into(), "present".into()))?;
            if src.size() != var.size() {
                return Err(mismatch(
                    format!("shape of `{name}`"),
                    format!("{:?}", src.size()),
                    format!("{:?}", var.size()),
                ));
            }
            if src.kind() != var.kind() {
                return Err(mismatch(
                    format!("dtype of `{name}`"),
                    format!("{:?}", src.kind()),
                    format!("{:?}", var.kind()),
                ));
            }
        }
        let known: HashSet<&String> = vars.keys().collect();
        if let Some(extra) = self.weights.keys().find(|k| !known.contains(k)) {
            return Err(mismatch(
                format!("variable `{extra}`"),
                "present".into(),
                "absent".into(),
            ));
        }
        tch::no_grad(|| {
            for (name, var) in &vars {
                let mut var = var.shallow_clone();
                var.copy_(&self.weights[name]);
            }
        });
        Ok(())
    }

    /// Builds the checkpoint's model in a fresh `VarStore` on `device`, weights loaded.
    pub fn into_model(self, device: Device) -> Result<(VarStore, ResNet18, CheckpointInfo), CheckpointError> {
        let vs = VarStore::new(device);
        let model = ResNet18::new(&vs.root(), self.info.config).map_err(|source| CheckpointError::Model {
            path: self.path.clone(),
            source,
        })?;
        self.copy_weights_into(&vs)?;
        Ok((vs, model, self.info))
    }
}

/// Loads a checkpoint for inference or export: the model in a fresh `VarStore` on `device`
/// with the weights loaded, and the checkpoint's info. Call the model with `train = false`.
pub fn load_for_inference(
    path: &Path,
    device: Device,
) -> Result<(VarStore, ResNet18, CheckpointInfo), CheckpointError> {
    read(path)?.into_model(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn tiny(width: i64, classes: i64) -> Result<(VarStore, ResNet18, CheckpointInfo), ModelError> {
        let vs = VarStore::new(Device::Cpu);
        let config = ResNetConfig {
            width,
            num_classes: classes,
        };
        let model = ResNet18::new(&vs.root(), config)?;
        Ok((vs, model, CheckpointInfo::untrained(config)))
    }

    fn same_weights(a: &VarStore, b: &VarStore) -> bool {
        let (a, b) = (a.variables(), b.variables());
        a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| v.equal(w)))
    }

    #[test]
    fn round_trip_keeps_weights_running_stats_and_info() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("ckpt.pt");
        let (vs, model, mut info) = tiny(4, 3)?;
        // Move BatchNorm running statistics off their initial values.
        let _ = model.forward_checked(&Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu)), true)?;
        info.class_names = vec!["ant".into(), "bee".into(), "cow".into()];
        info.test_accuracy = Some(0.5);
        info.epochs = 7;
        save(&path, &vs, &info)?;

        let (vs2, model2, info2) = load_for_inference(&path, Device::Cpu)?;
        assert_eq!(info2, info);
        assert!(same_weights(&vs, &vs2));
        let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        let (y1, y2) = (model.forward_checked(&x, false)?, model2.forward_checked(&x, false)?);
        assert!(y1.equal(&y2));
        assert!(read(&path)?.training.is_none());
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path())?.count(), 1);
        Ok(())
    }

    #[test]
    fn training_state_round_trips() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("ckpt.pt");
        let (vs, _model, info) = tiny(4, 2)?;
        let momentum: BTreeMap<String, Tensor> = vs
            .trainable_variables()
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("v{i}"), t.randn_like()))
            .collect();
        let state = TrainingState {
            momentum,
            seed: 42,
            options: serde_json::json!({"lr": 0.1}),
            scaler: Some(ScalerState {
                scale: 2048.0,
                growth_tracker: 1999,
            }),
        };
        save_training(&path, &vs, &info, &state)?;
        let loaded = read(&path)?.training.ok_or("training state missing")?;
        assert_eq!(loaded.seed, 42);
        assert_eq!(loaded.options, state.options);
        assert_eq!(loaded.scaler, state.scaler);
        assert_eq!(loaded.momentum.len(), state.momentum.len());
        for (k, v) in &state.momentum {
            assert!(loaded.momentum[k].equal(v), "{k}");
        }
        Ok(())
    }

    #[test]
    fn wrong_width_missing_and_corrupt_files_are_errors_naming_the_file() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("w4.pt");
        let (vs, _model, info) = tiny(4, 3)?;
        save(&path, &vs, &info)?;

        let err = read(&path)?
            .expect_config(ResNetConfig {
                width: 8,
                num_classes: 3,
            })
            .err()
            .ok_or("width 8 accepted")?;
        let msg = err.to_string();
        assert!(msg.contains("w4.pt") && msg.contains("width"), "{msg}");

        // Weights of width 4 into a width-8 model: the first differing shape is named.
        let vs8 = VarStore::new(Device::Cpu);
        let _m8 = ResNet18::new(
            &vs8.root(),
            ResNetConfig {
                width: 8,
                num_classes: 3,
            },
        )?;
        let msg = read(&path)?.copy_weights_into(&vs8).err().ok_or("copied")?.to_string();
        assert!(msg.contains("shape of"), "{msg}");

        let missing = dir.path().join("nope.pt");
        let msg = load_for_inference(&missing, Device::Cpu)
            .err()
            .ok_or("loaded")?
            .to_string();
        assert!(msg.contains("nope.pt"), "{msg}");

        let bytes = fs::read(&path)?;
        let truncated = dir.path().join("truncated.pt");
        fs::write(&truncated, &bytes[..bytes.len() / 2])?;
        let msg = load_for_inference(&truncated, Device::Cpu)
            .err()
            .ok_or("loaded")?
            .to_string();
        assert!(msg.contains("truncated.pt"), "{msg}");

        let foreign = dir.path().join("foreign.pt");
        Tensor::save_multi(&[("x", Tensor::zeros([2], (Kind::Float, Device::Cpu)))], &foreign)?;
        let msg = load_for_inference(&foreign, Device::Cpu)
            .err()
            .ok_or("loaded")?
            .to_string();
        assert!(msg.contains("foreign.pt") && msg.contains("__meta__"), "{msg}");
        Ok(())
    }

    #[test]
    fn epoch_seeds_differ_and_are_stable() {
        assert_eq!(epoch_seed(1, 0), epoch_seed(1, 0));
        assert_ne!(epoch_seed(1, 0), epoch_seed(1, 1));
        assert_ne!(epoch_seed(1, 0), epoch_seed(2, 0));
        assert!(epoch_seed(u64::MAX, u32::MAX) >= 0);
    }
}
