//! Tiny real ONNX classifiers for tests (here and in the `e2e` crate, via the `test-support`
//! feature): `input [N,3,H,W] -> GlobalAveragePool -> Flatten -> Gemm -> logits [N,C]`, so the
//! logits follow from the image's mean colour and the expected answer is known in advance.

pub mod lambda;
pub mod moto;
pub mod slow;

use onnx::ModelMetadata;
use onnx::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto, attribute_type, data_type, tensor_shape_proto, type_proto,
};
use prost::Message;

/// What to build.
#[derive(Debug, Clone)]
pub struct TinyModel {
    pub class_names: Vec<String>,
    pub height: u32,
    pub width: u32,
    /// One row of 3 weights (R, G, B of the normalised mean colour) per class.
    pub weights: Vec<[f32; 3]>,
    pub bias: Vec<f32>,
    /// Write the metadata contract (false: a "foreign" model with no metadata).
    pub with_metadata: bool,
    /// A fixed batch dimension instead of the symbolic `N`.
    pub fixed_batch: Option<i64>,
}

impl TinyModel {
    /// Three classes, `red`, `green`, `blue`: a channel 30 levels above the others wins. The
    /// weights are small, so a solid colour's probabilities stay well inside (0, 1) (a test
    /// that pins 1.0 and 0.0 would pass a wrong softmax), and not symmetric, so a transposed
    /// weight matrix answers differently.
    pub fn rgb(size: u32) -> Self {
        Self {
            class_names: vec!["red".into(), "green".into(), "blue".into()],
            height: size,
            width: size,
            weights: vec![[0.5, 0.1, 0.0], [0.0, 0.5, 0.1], [0.1, 0.0, 0.5]],
            bias: vec![0.1, -0.1, 0.0],
            with_metadata: true,
            fixed_batch: None,
        }
    }

    /// The metadata this model carries: mean 0.5, std 0.25 on `[0,1]` pixels.
    pub fn metadata(&self) -> ModelMetadata {
        ModelMetadata {
            class_names: self.class_names.clone(),
            input_height: self.height,
            input_width: self.width,
            channel_order: onnx::ChannelOrder::Rgb,
            layout: onnx::Layout::Nchw,
            mean: [0.5; 3],
            std: [0.25; 3],
            architecture: "tiny-colour".into(),
            width: 3,
            dataset: "synthetic".into(),
            test_accuracy: Some(1.0),
            epochs: Some(0),
            git_commit: Some("0000000".into()),
            exported_at: Some("2026-01-01T00:00:00Z".into()),
            project_version: "0.1.0".into(),
        }
    }

    /// The serialised ONNX model.
    pub fn build(&self) -> Vec<u8> {
        self.build_with(self.with_metadata.then(|| self.metadata()).as_ref())
    }

    /// The serialised ONNX model carrying `metadata` (e.g. [`TinyModel::metadata`] with a field
    /// changed), or no contract at all.
    pub fn build_with(&self, metadata: Option<&ModelMetadata>) -> Vec<u8> {
        let classes = self.class_names.len() as i64;
        let batch = match self.fixed_batch {
            Some(n) => tensor_shape_proto::dimension::Value::DimValue(n),
            None => tensor_shape_proto::dimension::Value::DimParam("N".into()),
        };
        let graph = GraphProto {
            name: "tiny_colour_classifier".into(),
            node: vec![
                node("GlobalAveragePool", &["input"], &["pooled"], vec![]),
                node("Flatten", &["pooled"], &["features"], vec![int_attr("axis", 1)]),
                node(
                    "Gemm",
                    &["features", "weight", "bias"],
                    &["logits"],
                    vec![int_attr("transB", 1)],
                ),
            ],
            initializer: vec![
                float_tensor(
                    "weight",
                    &[classes, 3],
                    self.weights.iter().flatten().copied().collect(),
                ),
                float_tensor("bias", &[classes], self.bias.clone()),
            ],
            input: vec![value_info(
                "input",
                vec![
                    batch.clone(),
                    dim(3),
                    dim(i64::from(self.height)),
                    dim(i64::from(self.width)),
                ],
            )],
            output: vec![value_info("logits", vec![batch, dim(classes)])],
            ..Default::default()
        };
        let metadata_props = metadata
            .map(ModelMetadata::to_props)
            .unwrap_or_default()
            .into_iter()
            .map(|(key, value)| StringStringEntryProto { key, value })
            .collect();
        ModelProto {
            ir_version: onnx::proto::IR_VERSION,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            }],
            producer_name: "infer-tests".into(),
            graph: Some(graph),
            metadata_props,
            ..Default::default()
        }
        .encode_to_vec()
    }
}

/// Writes `bytes` to `dir/name` with a `sha256sum`-format sidecar; returns the model path.
pub fn write_with_sidecar(dir: &std::path::Path, name: &str, bytes: &[u8]) -> std::io::Result<std::path::PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, bytes)?;
    std::fs::write(
        onnx::checksum::sidecar_path(&path),
        onnx::checksum::sidecar_line(&onnx::checksum::sha256_hex(bytes), &path),
    )?;
    Ok(path)
}

fn dim(n: i64) -> tensor_shape_proto::dimension::Value {
    tensor_shape_proto::dimension::Value::DimValue(n)
}

fn node(op: &str, inputs: &[&str], outputs: &[&str], attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| (*s).to_owned()).collect(),
        output: outputs.iter().map(|s| (*s).to_owned()).collect(),
        name: op.to_lowercase(),
        op_type: op.into(),
        attribute,
        ..Default::default()
    }
}

fn int_attr(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::INT,
        i,
        ..Default::default()
    }
}

fn float_tensor(name: &str, dims: &[i64], data: Vec<f32>) -> TensorProto {
    TensorProto {
        dims: dims.to_vec(),
        data_type: data_type::FLOAT,
        float_data: data,
        name: name.into(),
        ..Default::default()
    }
}

fn value_info(name: &str, dims: Vec<tensor_shape_proto::dimension::Value>) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: data_type::FLOAT,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .into_iter()
                        .map(|value| tensor_shape_proto::Dimension {
                            value: Some(value),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}
