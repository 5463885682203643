//! What the server says about the model it serves, read from the graph and its ONNX metadata
//! contract (or, for a foreign classifier, from flags), and checked against what serving needs:
//! one RGB NCHW float image input, one `[N, classes]` output, a batch any size or one.

use onnx::{ChannelOrder, Layout, MetadataError, ModelMetadata};
use ort::session::Session;
use ort::value::ValueType;
use serde::Serialize;

use super::error::{ModelError, load_error};

/// What flags say about a model; each one given overrides the model's own metadata.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub labels: Option<Vec<String>>,
    pub mean: Option<[f32; 3]>,
    pub std: Option<[f32; 3]>,
    /// `(height, width)`.
    pub size: Option<(u32, u32)>,
}

/// Everything the server says about the model it serves.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// Short name (the file stem), used in `/v2/models/{name}`.
    pub name: String,
    /// The first 12 hex digits of the model file's sha256: changes whenever the weights do.
    pub version: String,
    pub sha256: String,
    /// Where the model came from (a path or `s3://bucket/key`): for the log, never for clients.
    #[serde(skip_serializing)]
    pub source: String,
    pub class_names: Vec<String>,
    pub input_height: u32,
    pub input_width: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// What the model says it expects (a model that expects anything but RGB NCHW is refused).
    pub channel_order: ChannelOrder,
    pub layout: Layout,
    pub input_name: String,
    pub output_name: String,
    /// The batch size the graph is fixed to, when its first dimension is not symbolic.
    pub fixed_batch: Option<usize>,
    /// The exporter's metadata contract, when the model carries it.
    pub metadata: Option<ModelMetadata>,
}

impl ModelInfo {
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// Floats in one image tensor (`3 * H * W`).
    pub fn image_len(&self) -> usize {
        3 * self.input_height as usize * self.input_width as usize
    }
}

/// Reads and checks the graph of `session`; `sha256`, `name` and `source` name the model in the
/// info and in messages.
pub(super) fn describe(
    session: &Session,
    sha256: String,
    name: &str,
    source: &str,
    overrides: &Overrides,
) -> Result<ModelInfo, ModelError> {
    let load_err = |e: ort::Error| load_error(source, e);
    let incompatible = |reason: String| ModelError::Incompatible {
        model: source.to_owned(),
        reason,
    };

    let metadata = match session.metadata() {
        Ok(meta) => match ModelMetadata::from_props(|key| meta.custom(key)) {
            Ok(contract) => Some(contract),
            // No contract at all: a foreign classifier, described by flags.
            Err(MetadataError::Missing(onnx::metadata::keys::CONTRACT_VERSION)) => None,
            Err(source_err) => {
                return Err(ModelError::Metadata {
                    model: source.to_owned(),
                    source: source_err,
                });
            }
        },
        Err(e) => return Err(load_err(e)),
    };

    // What preprocessing produces; a model that says it wants anything else would be fed
    // the wrong pixels without an error, so it is refused here.
    let (channel_order, layout) = metadata
        .as_ref()
        .map_or((ChannelOrder::Rgb, Layout::Nchw), |m| (m.channel_order, m.layout));
    if (channel_order, layout) != (ChannelOrder::Rgb, Layout::Nchw) {
        return Err(incompatible(format!(
            "its metadata says {channel_order} channels in {layout} layout, but infer feeds \
                 RGB planes in NCHW layout; export the model for RGB NCHW input"
        )));
    }

    let [input] = session.inputs() else {
        return Err(incompatible(format!(
            "it has {} inputs; a classifier has one image input",
            session.inputs().len()
        )));
    };
    let in_shape = float_shape(input.dtype())
        .ok_or_else(|| incompatible(format!("input `{}` is not a float32 tensor", input.name())))?;
    if in_shape.len() != 4 || !matches!(in_shape[1], -1 | 3) {
        return Err(incompatible(format!(
            "input `{}` has shape {in_shape:?}; expected [N, 3, H, W]",
            input.name()
        )));
    }
    let output = session
        .outputs()
        .first()
        .ok_or_else(|| incompatible("it has no outputs".into()))?;
    let out_shape = float_shape(output.dtype())
        .ok_or_else(|| incompatible(format!("output `{}` is not a float32 tensor", output.name())))?;
    if out_shape.len() != 2 {
        return Err(incompatible(format!(
            "output `{}` has shape {out_shape:?}; expected [N, classes]",
            output.name()
        )));
    }

    // Requests bring any number of images and micro-batching merges them, so only a graph that
    // takes any batch, or exactly one image (run image by image), can serve them.
    if let Some(batch) = usize::try_from(in_shape[0]).ok().filter(|n| *n > 1) {
        return Err(incompatible(format!(
            "input `{}` has its batch dimension fixed to {batch}, but requests bring any number \
                 of images; export the model with a symbolic batch dimension (or a batch of 1)",
            input.name()
        )));
    }
    let fixed = |d: i64| u32::try_from(d).ok().filter(|d| *d > 0);
    let (input_height, input_width) = overrides
        .size
        .or(metadata.as_ref().map(|m| (m.input_height, m.input_width)))
        .or_else(|| Some((fixed(in_shape[2])?, fixed(in_shape[3])?)))
        .ok_or_else(|| incompatible("it has no metadata and a symbolic input size; pass --size HxW".into()))?;
    if input_height == 0 || input_width == 0 {
        return Err(incompatible("input size must be positive".into()));
    }
    for (axis, want) in [(2, input_height), (3, input_width)] {
        if let Some(got) = fixed(in_shape[axis])
            && got != want
        {
            return Err(incompatible(format!(
                "its input is fixed to {}x{} but the size to serve is {input_height}x{input_width}",
                in_shape[2], in_shape[3]
            )));
        }
    }
    let class_names = match (&overrides.labels, &metadata) {
        (Some(labels), _) => labels.clone(),
        (None, Some(meta)) => meta.class_names.clone(),
        (None, None) => match fixed(out_shape[1]) {
            Some(n) => {
                tracing::warn!(
                    model = source,
                    "no class names in the model or --labels; using class_0.."
                );
                (0..n).map(|i| format!("class_{i}")).collect()
            }
            None => {
                return Err(incompatible(
                    "it has no metadata and a symbolic class count; pass --labels".into(),
                ));
            }
        },
    };
    if class_names.is_empty() {
        return Err(incompatible("no class names".into()));
    }
    if let Some(n) = fixed(out_shape[1])
        && n as usize != class_names.len()
    {
        return Err(incompatible(format!(
            "output `{}` has {n} classes but there are {} class names",
            output.name(),
            class_names.len()
        )));
    }
    let (mean, std) = match (&metadata, overrides.mean, overrides.std) {
        (_, Some(mean), Some(std)) => (mean, std),
        (Some(meta), mean, std) => (mean.unwrap_or(meta.mean), std.unwrap_or(meta.std)),
        (None, mean, std) => {
            if mean.is_none() || std.is_none() {
                tracing::warn!(
                    model = source,
                    "no normalisation in the model or flags; using mean 0, std 1"
                );
            }
            (mean.unwrap_or([0.0; 3]), std.unwrap_or([1.0; 3]))
        }
    };
    if std.iter().any(|s| !s.is_finite() || *s <= 0.0) || mean.iter().any(|m| !m.is_finite()) {
        return Err(incompatible(format!("bad normalisation mean {mean:?} / std {std:?}")));
    }

    Ok(ModelInfo {
        name: name.to_owned(),
        version: sha256[..12].to_owned(),
        sha256,
        source: source.to_owned(),
        class_names,
        input_height,
        input_width,
        mean,
        std,
        channel_order,
        layout,
        input_name: input.name().to_owned(),
        output_name: output.name().to_owned(),
        fixed_batch: usize::try_from(in_shape[0]).ok().filter(|n| *n > 0),
        metadata,
    })
}

fn float_shape(dtype: &ValueType) -> Option<Vec<i64>> {
    match dtype {
        ValueType::Tensor {
            ty: ort::value::TensorElementType::Float32,
            shape,
            ..
        } => Some(shape.to_vec()),
        _ => None,
    }
}
