//! A real ONNX classifier that is slow on purpose, for the tests of what the server does when the
//! model cannot keep up (deadlines, a full queue, shutdown's grace period): the 3-class colour
//! model's contract and input, but the image is tiled up (`Tile`) and run through a stack of
//! 3x3 convolutions before the pooling, so that one run takes a good fraction of a second of
//! real ONNX Runtime work on any CPU, with no sleep anywhere.

use onnx::proto::{AttributeProto, GraphProto, ModelProto, OperatorSetIdProto, StringStringEntryProto, TensorProto};
use onnx::proto::{attribute_type, data_type};
use prost::Message;

use super::{TinyModel, dim, float_tensor, int_attr, node, value_info};

/// What to build.
#[derive(Debug, Clone)]
pub struct SlowModel {
    /// Input side, as [`TinyModel::rgb`]'s.
    pub size: u32,
    /// How many times the image is repeated along each side before the convolutions.
    pub tile: i64,
    /// Channels of each convolution.
    pub channels: i64,
    /// Convolutions after the first.
    pub layers: usize,
}

impl SlowModel {
    /// 32x32 input tiled to 512x512, nine convolutions of 32 channels: about 40 GFLOP a run,
    /// which no CPU runs within the few milliseconds of the tests' deadlines.
    pub fn new() -> Self {
        Self {
            size: 32,
            tile: 16,
            channels: 32,
            layers: 8,
        }
    }

    /// The serialised ONNX model, with the colour model's metadata contract.
    pub fn build(&self) -> Vec<u8> {
        let tiny = TinyModel::rgb(self.size);
        let classes = tiny.class_names.len() as i64;
        let c = self.channels;
        let conv_attrs = || vec![ints_attr("kernel_shape", &[3, 3]), ints_attr("pads", &[1, 1, 1, 1])];
        let mut nodes = vec![
            node("Tile", &["input", "repeats"], &["tiled"], vec![]),
            node("Conv", &["tiled", "w0"], &["conv0"], conv_attrs()),
        ];
        // Small weights keep the activations finite through the stack.
        let weights = |n: usize| (0..n).map(|i| ((i % 7) as f32 - 3.0) * 0.01).collect::<Vec<f32>>();
        let mut initializer = vec![
            TensorProto {
                dims: vec![4],
                data_type: data_type::INT64,
                int64_data: vec![1, 1, self.tile, self.tile],
                name: "repeats".into(),
                ..Default::default()
            },
            float_tensor("w0", &[c, 3, 3, 3], weights((c * 27) as usize)),
        ];
        for layer in 1..=self.layers {
            let (from, to, w) = (
                format!("conv{}", layer - 1),
                format!("conv{layer}"),
                format!("w{layer}"),
            );
            nodes.push(node("Conv", &[from.as_str(), w.as_str()], &[to.as_str()], conv_attrs()));
            // Distinct node names: ONNX Runtime wants them unique.
            if let Some(last) = nodes.last_mut() {
                last.name = format!("conv{layer}");
            }
            initializer.push(float_tensor(&w, &[c, c, 3, 3], weights((c * c * 9) as usize)));
        }
        let last = format!("conv{}", self.layers);
        nodes.extend([
            node("GlobalAveragePool", &[last.as_str()], &["pooled"], vec![]),
            node("Flatten", &["pooled"], &["features"], vec![int_attr("axis", 1)]),
            node(
                "Gemm",
                &["features", "weight", "bias"],
                &["logits"],
                vec![int_attr("transB", 1)],
            ),
        ]);
        initializer.push(float_tensor("weight", &[classes, c], weights((classes * c) as usize)));
        initializer.push(float_tensor("bias", &[classes], vec![0.0; classes as usize]));
        let batch = onnx::proto::tensor_shape_proto::dimension::Value::DimParam("N".into());
        let side = i64::from(self.size);
        let graph = GraphProto {
            name: "slow_colour_classifier".into(),
            node: nodes,
            initializer,
            input: vec![value_info("input", vec![batch.clone(), dim(3), dim(side), dim(side)])],
            output: vec![value_info("logits", vec![batch, dim(classes)])],
            ..Default::default()
        };
        ModelProto {
            ir_version: onnx::proto::IR_VERSION,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            }],
            producer_name: "infer-tests".into(),
            graph: Some(graph),
            metadata_props: tiny
                .metadata()
                .to_props()
                .into_iter()
                .map(|(key, value)| StringStringEntryProto { key, value })
                .collect(),
            ..Default::default()
        }
        .encode_to_vec()
    }
}

impl Default for SlowModel {
    fn default() -> Self {
        Self::new()
    }
}

fn ints_attr(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::INTS,
        ints: ints.to_vec(),
        ..Default::default()
    }
}
