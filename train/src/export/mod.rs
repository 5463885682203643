//! The project's own ONNX exporter: libtorch has none and neither has `tch` (tch-rs#588), so the
//! graph is emitted here from the network definition ([`crate::model`]) and its weights.
//!
//! The file is the one contract between training and serving. Besides the graph it carries
//! [`onnx::ModelMetadata`] in `metadata_props` (class names, input size, normalisation,
//! provenance), and a sidecar `model.onnx.sha256` (see [`onnx::checksum`]) lets the server
//! refuse a corrupted or modified file.
//!
//! # Graph
//! Input `input`: float32 `[N, 3, 32, 32]` (`N` symbolic); output `logits`: float32 `[N, C]`.
//! Nodes: `Conv` (+ `BatchNormalization`, or with the BatchNorm folded into its weights and
//! bias, see [`BatchNormMode`]), `Relu`, `Add`, `GlobalAveragePool`, `Flatten`, `Gemm`; with
//! `fp16`, weight matrices are stored as FLOAT16 and a `Cast` to float32 follows each, so the
//! input, output and arithmetic stay float32. Every intermediate value's shape is written to
//! `value_info`, which ONNX Runtime and `onnx.checker` (full check) verify.
//!
//! # Measurements
//! See `train/EXPORT.md` for how folding compares with `BatchNormalization` nodes in ONNX Runtime
//! and what float16 storage costs in accuracy, with the commands that produced the figures.

mod graph;
pub mod provenance;

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use onnx::ModelMetadata;
use onnx::proto::{ModelProto, OperatorSetIdProto, StringStringEntryProto};
use tch::Device;
use tch::nn::VarStore;

use crate::atomic_file::{self, ReplaceError};
use crate::checkpoint::{CheckpointError, CheckpointInfo, load_for_inference};
use crate::data::CIFAR10_CLASSES;
use crate::model::{ModelError, ResNet18, ResNetConfig};

pub use graph::{BATCH, Dim, INPUT, OUTPUT, shape_of};

/// Opset written unless asked otherwise: the oldest the project supports, so the widest range
/// of runtimes reads the file.
pub const DEFAULT_OPSET: i64 = 17;
/// The CIFAR form of the network is built for 32x32 inputs.
pub const INPUT_SIZE: u32 = 32;
/// `ModelMetadata::architecture` of every export.
pub const ARCHITECTURE: &str = "resnet18-cifar";
/// `ModelProto.producer_name`.
pub const PRODUCER: &str = "resnet-serverless-train";

/// How BatchNorm reaches the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BatchNormMode {
    /// Folded into the preceding Conv: `W' = W * s`, `b' = beta - mean * s`,
    /// `s = gamma / sqrt(var + eps)`. Fewer nodes and bytes; the default (see `train/EXPORT.md`).
    #[default]
    Fold,
    /// A `BatchNormalization` node after each bias-free Conv, weights as trained.
    Nodes,
}

/// Options of the graph itself, for [`build_model`] / [`export_model`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GraphOptions {
    /// `ai.onnx` opset, within [`onnx::proto::OPSETS`].
    pub opset: i64,
    /// Store weight matrices as float16 (about half the file).
    pub fp16: bool,
    pub batch_norm: BatchNormMode,
}

impl Default for GraphOptions {
    fn default() -> Self {
        Self {
            opset: DEFAULT_OPSET,
            fp16: false,
            batch_norm: BatchNormMode::default(),
        }
    }
}

/// What `train export` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportOptions {
    pub checkpoint: PathBuf,
    pub out: PathBuf,
    pub opset: i64,
    pub fp16: bool,
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportReport {
    pub path: PathBuf,
    /// The `sha256sum`-format sidecar next to `path`.
    pub sidecar: PathBuf,
    pub bytes: u64,
    pub nodes: usize,
    pub initializers: usize,
    /// Lower-case hex SHA-256 of the file.
    pub sha256: String,
    pub opset: i64,
    pub fp16: bool,
}

impl fmt::Display for ExportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "wrote {} ({:.2} MB, {} bytes): opset {}, {} nodes, {} initializers, weights {}\nsha256 {}  (in {})",
            self.path.display(),
            self.bytes as f64 / 1e6,
            self.bytes,
            self.opset,
            self.nodes,
            self.initializers,
            if self.fp16 { "float16" } else { "float32" },
            self.sha256,
            self.sidecar.display(),
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("checkpoint {0} does not exist")]
    CheckpointNotFound(PathBuf),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("opset {requested} is not supported: the exporter writes opsets {min} to {max}")]
    Opset { requested: i64, min: i64, max: i64 },
    #[error("metadata does not match the model: {0}")]
    Metadata(String),
    #[error("metadata would be refused by the server: {0}")]
    Contract(#[from] onnx::MetadataError),
    #[error("weight `{name}` has shape {found:?}, but this model's width and class count need {expected:?}")]
    WeightShape {
        name: String,
        expected: Vec<i64>,
        found: Vec<i64>,
    },
    #[error("weight `{0}` contains NaN or infinity")]
    NonFinite(String),
    #[error("weight `{0}` has values beyond float16's range (magnitude above 65504): export it without --fp16")]
    Fp16Range(String),
    #[error("cannot export this network: {0}")]
    Structure(String),
    #[error("input size: {0}")]
    InputSize(String),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `train export`: loads the checkpoint, exports it with metadata from its header, and writes
/// `opts.out` and its `.sha256` sidecar.
pub fn export_checkpoint(opts: &ExportOptions) -> Result<ExportReport, ExportError> {
    check_opset(opts.opset)?;
    if !opts.checkpoint.is_file() {
        return Err(ExportError::CheckpointNotFound(opts.checkpoint.clone()));
    }
    let (_vs, model, info) = load_for_inference(&opts.checkpoint, Device::Cpu)?;
    let graph_opts = GraphOptions {
        opset: opts.opset,
        fp16: opts.fp16,
        ..GraphOptions::default()
    };
    export_to_file(&model, &metadata_for(&info), &opts.out, &graph_opts)
}

/// What `train export --init` asks for: a freshly initialised network, as `train fit` would
/// start it (random weights, BatchNorm as identity), with CIFAR-10's classes and statistics. It
/// costs what a trained network of its width costs to run, so it stands in for one in serving
/// benchmarks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitOptions {
    /// Channels of the first stage (64 = standard ResNet-18).
    pub width: i64,
    /// libtorch's seed for the weights: the same seed gives the same weights.
    pub seed: i64,
    pub out: PathBuf,
    pub opset: i64,
    pub fp16: bool,
}

/// `train export --init`: exports a freshly initialised network to `opts.out` and its sidecar.
pub fn export_initialised(opts: &InitOptions) -> Result<ExportReport, ExportError> {
    check_opset(opts.opset)?;
    let config = ResNetConfig {
        width: opts.width,
        num_classes: CIFAR10_CLASSES.len() as i64,
    };
    tch::manual_seed(opts.seed);
    let vs = VarStore::new(Device::Cpu);
    let model = ResNet18::new(&vs.root(), config)?;
    let mut info = CheckpointInfo::untrained(config);
    info.class_names = CIFAR10_CLASSES.iter().map(|&c| c.to_owned()).collect();
    info.dataset = "CIFAR-10 (untrained: random weights)".to_owned();
    let graph_opts = GraphOptions {
        opset: opts.opset,
        fp16: opts.fp16,
        ..GraphOptions::default()
    };
    export_to_file(&model, &metadata_for(&info), &opts.out, &graph_opts)
}

/// The contract for a model described by a checkpoint header, stamped with the git commit the
/// exporter was built from and the current time.
pub fn metadata_for(info: &CheckpointInfo) -> ModelMetadata {
    ModelMetadata {
        class_names: info.class_names.clone(),
        input_height: INPUT_SIZE,
        input_width: INPUT_SIZE,
        channel_order: onnx::ChannelOrder::Rgb,
        layout: onnx::Layout::Nchw,
        mean: info.mean,
        std: info.std,
        architecture: ARCHITECTURE.to_owned(),
        width: u32::try_from(info.config.width).unwrap_or(0),
        dataset: info.dataset.clone(),
        test_accuracy: info.test_accuracy,
        epochs: Some(info.epochs),
        git_commit: provenance::git_commit(),
        exported_at: Some(provenance::now_rfc3339()),
        project_version: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

/// Exports `model` (in memory, e.g. at the end of `train fit`) to `out` with its sidecar.
pub fn export_to_file(
    model: &ResNet18,
    meta: &ModelMetadata,
    out: &Path,
    opts: &GraphOptions,
) -> Result<ExportReport, ExportError> {
    let proto = build_model(model, meta, opts)?;
    write_model(&proto, out, opts)
}

/// The encoded `.onnx` bytes of `model`; works on any model, trained or not.
pub fn export_model(model: &ResNet18, meta: &ModelMetadata, opts: &GraphOptions) -> Result<Vec<u8>, ExportError> {
    Ok(build_model(model, meta, opts)?.to_bytes())
}

/// The ONNX model of `model` with `meta` in its `metadata_props`, checked against each other.
pub fn build_model(model: &ResNet18, meta: &ModelMetadata, opts: &GraphOptions) -> Result<ModelProto, ExportError> {
    let ir_version = check_opset(opts.opset)?;
    check_metadata(model, meta)?;
    let graph = graph::build_graph(model, i64::from(meta.input_height), i64::from(meta.input_width), opts)?;
    Ok(ModelProto {
        ir_version,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: opts.opset,
        }],
        producer_name: PRODUCER.to_owned(),
        producer_version: env!("CARGO_PKG_VERSION").to_owned(),
        doc_string: format!(
            "ResNet-18 (CIFAR form, width {}) for {} classes of {}; see metadata_props for the input contract.",
            meta.width,
            meta.class_names.len(),
            meta.dataset
        ),
        graph: Some(graph),
        metadata_props: meta
            .to_props()
            .into_iter()
            .map(|(key, value)| StringStringEntryProto { key, value })
            .collect(),
        ..Default::default()
    })
}

/// Writes the encoded model to `out` and its sidecar beside it, each through a synced temporary
/// file and a rename (see [`crate::atomic_file`]), so a reader never sees half a file.
///
/// Both temporary files are written before either rename: an export that fails while writing
/// (a full disk) changes neither file. The sidecar is renamed first, the model second. Readers
/// check the model against the sidecar, so the one state between the renames, the new sidecar
/// beside the old model, is refused rather than served; the other order would put the new model
/// in place beside the old sidecar, or beside none at all where there was none, which a reader
/// takes as a model with nothing to check against. This way the new model is visible only once
/// its own sidecar is durably in place.
pub fn write_model(proto: &ModelProto, out: &Path, opts: &GraphOptions) -> Result<ExportReport, ExportError> {
    let bytes = proto.to_bytes();
    let sha256 = onnx::checksum::sha256_hex(&bytes);
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| ExportError::Write { path, source }
    };
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(write_err(dir))?;
    }
    let sidecar = onnx::checksum::sidecar_path(out);
    let stage = |path: &Path, content: &[u8]| {
        atomic_file::stage(path, |f| f.write_all(content)).map_err(|e| match e {
            ReplaceError::Io(source) | ReplaceError::Write(source) => ExportError::Write {
                path: path.to_owned(),
                source,
            },
        })
    };
    let model_file = stage(out, &bytes)?;
    let sidecar_file = stage(&sidecar, onnx::checksum::sidecar_line(&sha256, out).as_bytes())?;
    sidecar_file.commit().map_err(write_err(&sidecar))?;
    model_file.commit().map_err(write_err(out))?;
    let graph = proto.graph.as_ref();
    Ok(ExportReport {
        path: out.to_owned(),
        sidecar,
        bytes: bytes.len() as u64,
        nodes: graph.map_or(0, |g| g.node.len()),
        initializers: graph.map_or(0, |g| g.initializer.len()),
        sha256,
        opset: opts.opset,
        fp16: opts.fp16,
    })
}

fn check_opset(opset: i64) -> Result<i64, ExportError> {
    onnx::proto::ir_version_for_opset(opset).ok_or(ExportError::Opset {
        requested: opset,
        min: *onnx::proto::OPSETS.start(),
        max: *onnx::proto::OPSETS.end(),
    })
}

/// The metadata must describe this model, and must be what the server will accept.
fn check_metadata(model: &ResNet18, meta: &ModelMetadata) -> Result<(), ExportError> {
    let config = model.config;
    if i64::from(meta.width) != config.width {
        return Err(ExportError::Metadata(format!(
            "metadata says width {} but the model has width {}",
            meta.width, config.width
        )));
    }
    if meta.class_names.len() as i64 != config.num_classes {
        return Err(ExportError::Metadata(format!(
            "metadata has {} class names but the model has {} outputs",
            meta.class_names.len(),
            config.num_classes
        )));
    }
    if meta.layout != onnx::Layout::Nchw {
        return Err(ExportError::Metadata(format!(
            "layout {}: the graph's input is NCHW",
            meta.layout
        )));
    }
    if meta.input_height == 0 || meta.input_width == 0 {
        return Err(ExportError::InputSize(format!(
            "{}x{} pixels",
            meta.input_height, meta.input_width
        )));
    }
    // Whatever `infer` would refuse when loading is refused here, at export time.
    let props = meta.to_props();
    let lookup = |k: &str| props.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    let parsed = ModelMetadata::from_props(lookup)?;
    if parsed != *meta {
        return Err(ExportError::Metadata(
            "metadata does not survive the round trip through metadata_props (NaN in mean or accuracy?)".to_owned(),
        ));
    }
    Ok(())
}
