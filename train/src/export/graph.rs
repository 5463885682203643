//! Walks a [`ResNet18`] (as [`Ops`] over its body) and emits the equivalent ONNX graph: nodes,
//! initializers from the weights, and the shape of every intermediate value (`value_info`), which
//! ONNX Runtime and the `onnx` checker's shape inference verify against their own.

use onnx::proto::{
    AttributeProto, GraphProto, NodeProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto, attribute_type,
    data_type, tensor_shape_proto, type_proto,
};
use tch::{Device, Kind, Tensor};

use super::{BatchNormMode, ExportError, GraphOptions};
use crate::arch::{self, Ops};
use crate::model::{BasicBlock, ConvBn, ResNet18};

/// Name of the graph input, float32 `[N, 3, H, W]`.
pub const INPUT: &str = "input";
/// Name of the graph output, float32 `[N, classes]`.
pub const OUTPUT: &str = "logits";
/// The symbolic batch dimension.
pub const BATCH: &str = "N";

/// One dimension of a value's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    Batch,
    Fixed(i64),
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Batch => f.write_str(BATCH),
            Dim::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// A value flowing between nodes: its name and its `[N, C, H, W]` (or `[N, C]`) shape.
#[derive(Debug, Clone)]
struct Value {
    name: String,
    shape: Vec<Dim>,
}

impl Value {
    fn channels(&self) -> i64 {
        match self.shape.get(1) {
            Some(Dim::Fixed(c)) => *c,
            _ => 0,
        }
    }
}

/// Builds the graph of `model` for inputs of `height x width` pixels.
pub(super) fn build_graph(
    model: &ResNet18,
    height: i64,
    width: i64,
    opts: &GraphOptions,
) -> Result<GraphProto, ExportError> {
    let mut b = Builder {
        opts: *opts,
        model,
        graph: GraphProto {
            name: format!("resnet18-cifar-w{}", model.config.width),
            ..Default::default()
        },
    };
    let input = Value {
        name: INPUT.to_owned(),
        shape: vec![
            Dim::Batch,
            Dim::Fixed(arch::INPUT_CHANNELS),
            Dim::Fixed(height),
            Dim::Fixed(width),
        ],
    };
    b.graph.input.push(value_info(&input));
    model.body.walk(&mut b, &input)?;
    Ok(b.graph)
}

struct Builder<'a> {
    opts: GraphOptions,
    model: &'a ResNet18,
    graph: GraphProto,
}

impl Ops<ConvBn> for Builder<'_> {
    type Value = Value;
    type Error = ExportError;

    /// Conv + BatchNorm, either folded into one Conv with a bias or as Conv -> BatchNormalization.
    fn conv_bn(&mut self, layer: &ConvBn, x: &Value) -> Result<Value, ExportError> {
        let spec = &layer.spec;
        let prefix = spec.name.as_str();
        let (cin, cout, k, stride, pad) = (
            spec.in_channels,
            spec.out_channels,
            spec.kernel,
            spec.stride,
            spec.padding,
        );
        if x.channels() != cin {
            return Err(ExportError::Structure(format!(
                "{prefix} expects {cin} input channels but receives {}",
                x.channels()
            )));
        }
        let spatial = |d: &Dim| match d {
            Dim::Fixed(n) => Ok(Dim::Fixed((n + 2 * pad - k) / stride + 1)),
            Dim::Batch => Err(ExportError::Structure(format!("{prefix}: symbolic spatial size"))),
        };
        let (h, w) = match x.shape.as_slice() {
            [_, _, h, w] => (spatial(h)?, spatial(w)?),
            other => {
                return Err(ExportError::Structure(format!(
                    "{prefix} needs a 4-D input, got {}",
                    fmt_shape(other)
                )));
            }
        };
        if matches!(h, Dim::Fixed(n) if n < 1) || matches!(w, Dim::Fixed(n) if n < 1) {
            return Err(ExportError::InputSize(format!(
                "the input is too small: {prefix} would produce {h}x{w} pixels"
            )));
        }
        let out_shape = vec![Dim::Batch, Dim::Fixed(cout), h, w];
        let conv_attrs = vec![
            attr_ints("kernel_shape", &[k, k]),
            attr_ints("strides", &[stride, stride]),
            attr_ints("pads", &[pad, pad, pad, pad]),
            attr_ints("dilations", &[1, 1]),
            attr_int("group", 1),
        ];

        let bn = &layer.bn;
        let weight = &layer.conv.ws;
        let gamma = bn.ws.as_ref().ok_or_else(|| missing(prefix, "bn.weight"))?;
        let beta = bn.bs.as_ref().ok_or_else(|| missing(prefix, "bn.bias"))?;
        let (mean, var) = (&bn.running_mean, &bn.running_var);
        // Shapes are checked before folding so that a checkpoint of another width is reported by
        // the variable at fault rather than as a libtorch broadcasting error.
        check_shape(&format!("{prefix}.conv.weight"), weight, &[cout, cin, k, k])?;
        for (what, t) in [
            ("weight", gamma),
            ("bias", beta),
            ("running_mean", mean),
            ("running_var", var),
        ] {
            check_shape(&format!("{prefix}.bn.{what}"), t, &[cout])?;
        }
        let eps = batch_norm_eps();

        match self.opts.batch_norm {
            BatchNormMode::Fold => {
                // y = gamma (conv(x) - mean) / sqrt(var + eps) + beta
                //   = conv'(x) + b'  with  W' = W * s,  b' = beta - mean * s,  s = gamma / sqrt(var + eps),
                // computed in f64 so that folding adds no rounding beyond the final f32 cast.
                let _guard = tch::no_grad_guard();
                let f64 = |t: &Tensor| t.to_device(Device::Cpu).to_kind(Kind::Double);
                let scale = f64(gamma) / (f64(var) + eps).sqrt();
                let folded_w = f64(weight) * scale.view([cout, 1, 1, 1]);
                let folded_b = f64(beta) - f64(mean) * &scale;
                let w = self.initializer(&format!("{prefix}.weight"), &folded_w, &[cout, cin, k, k])?;
                let b = self.initializer(&format!("{prefix}.bias"), &folded_b, &[cout])?;
                Ok(self.node(
                    "Conv",
                    &format!("{prefix}.conv"),
                    &[&x.name, &w, &b],
                    out_shape,
                    conv_attrs,
                ))
            }
            BatchNormMode::Nodes => {
                let w = self.initializer(&format!("{prefix}.conv.weight"), weight, &[cout, cin, k, k])?;
                let conv = self.node(
                    "Conv",
                    &format!("{prefix}.conv"),
                    &[&x.name, &w],
                    out_shape.clone(),
                    conv_attrs,
                );
                let inputs = [
                    self.initializer(&format!("{prefix}.bn.weight"), gamma, &[cout])?,
                    self.initializer(&format!("{prefix}.bn.bias"), beta, &[cout])?,
                    self.initializer(&format!("{prefix}.bn.running_mean"), mean, &[cout])?,
                    self.initializer(&format!("{prefix}.bn.running_var"), var, &[cout])?,
                ];
                Ok(self.node(
                    "BatchNormalization",
                    &format!("{prefix}.bn"),
                    &[&conv.name, &inputs[0], &inputs[1], &inputs[2], &inputs[3]],
                    out_shape,
                    vec![attr_float("epsilon", eps as f32)],
                ))
            }
        }
    }

    fn relu(&mut self, x: Value, scope: &str, which: &str) -> Result<Value, ExportError> {
        Ok(self.node("Relu", &format!("{scope}.{which}"), &[&x.name], x.shape.clone(), vec![]))
    }

    fn add(&mut self, block: &BasicBlock, h: Value, skip: Value) -> Result<Value, ExportError> {
        let prefix = &block.name;
        if skip.shape != h.shape {
            return Err(ExportError::Structure(format!(
                "{prefix}: the residual branch gives {} but the shortcut gives {}",
                fmt_shape(&h.shape),
                fmt_shape(&skip.shape)
            )));
        }
        Ok(self.node(
            "Add",
            &format!("{prefix}.add"),
            &[&h.name, &skip.name],
            h.shape.clone(),
            vec![],
        ))
    }

    fn head(&mut self, x: Value) -> Result<Value, ExportError> {
        let channels = x.channels();
        let pooled = self.node(
            "GlobalAveragePool",
            arch::POOL,
            &[&x.name],
            vec![Dim::Batch, Dim::Fixed(channels), Dim::Fixed(1), Dim::Fixed(1)],
            vec![],
        );
        let flat = self.node(
            "Flatten",
            "flatten",
            &[&pooled.name],
            vec![Dim::Batch, Dim::Fixed(channels)],
            vec![attr_int("axis", 1)],
        );

        let (fc, classes) = (&self.model.fc, self.model.config.num_classes);
        let weight = format!("{}.weight", arch::HEAD);
        let bias = format!("{}.bias", arch::HEAD);
        let fc_w = self.initializer(&weight, &fc.ws, &[classes, channels])?;
        let fc_b = match &fc.bs {
            Some(bs) => self.initializer(&bias, bs, &[classes])?,
            None => self.initializer(&bias, &Tensor::zeros([classes], (Kind::Float, Device::Cpu)), &[classes])?,
        };
        let gemm = NodeProto {
            input: vec![flat.name.clone(), fc_w, fc_b],
            output: vec![OUTPUT.to_owned()],
            name: arch::HEAD.to_owned(),
            op_type: "Gemm".to_owned(),
            // torch's Linear computes x W^T + b.
            attribute: vec![attr_int("transB", 1)],
            ..Default::default()
        };
        self.graph.node.push(gemm);
        let logits = Value {
            name: OUTPUT.to_owned(),
            shape: vec![Dim::Batch, Dim::Fixed(classes)],
        };
        self.graph.output.push(value_info(&logits));
        Ok(logits)
    }
}

impl Builder<'_> {
    /// Appends a single-output node and records its output's shape.
    fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        shape: Vec<Dim>,
        attribute: Vec<AttributeProto>,
    ) -> Value {
        let out = Value {
            name: name.to_owned(),
            shape,
        };
        self.graph.node.push(NodeProto {
            input: inputs.iter().map(|s| (*s).to_owned()).collect(),
            output: vec![out.name.clone()],
            name: name.to_owned(),
            op_type: op.to_owned(),
            attribute,
            ..Default::default()
        });
        self.graph.value_info.push(value_info(&out));
        out
    }

    /// Adds `tensor` as an initializer called `name` and returns the name nodes should read:
    /// with `fp16`, weight matrices (2-D and up) are stored as FLOAT16 and a Cast node turns
    /// them back into float32, so the graph computes in float32 on any execution provider.
    /// 1-D tensors (biases, BatchNorm statistics) stay float32: they are under 0.1% of the bytes,
    /// and float16 would flush a tiny running variance towards `eps`.
    fn initializer(&mut self, name: &str, tensor: &Tensor, expected: &[i64]) -> Result<String, ExportError> {
        check_shape(name, tensor, expected)?;
        let t = tensor.to_device(Device::Cpu).detach().contiguous();
        let finite = t.isfinite().all().int64_value(&[]) != 0;
        if !finite {
            return Err(ExportError::NonFinite(name.to_owned()));
        }
        let numel = t.numel();
        let half = self.opts.fp16 && expected.len() >= 2;
        let (kind, onnx_type, stored_name) = if half {
            (Kind::Half, data_type::FLOAT16, format!("{name}.fp16"))
        } else {
            (Kind::Float, data_type::FLOAT, name.to_owned())
        };
        let t = t.to_kind(kind);
        // A finite float32 above float16's largest value (65504, e.g. a weight scaled up by
        // folding a tiny running variance) becomes infinity in the cast: checked on what is stored.
        if half && t.isfinite().all().int64_value(&[]) == 0 {
            return Err(ExportError::Fp16Range(name.to_owned()));
        }
        let mut raw = vec![0u8; numel * kind.elt_size_in_bytes()];
        t.f_copy_data_u8(&mut raw, numel)?;
        if cfg!(target_endian = "big") {
            // ONNX raw_data is little-endian; libtorch copies in host order.
            for chunk in raw.chunks_mut(kind.elt_size_in_bytes()) {
                chunk.reverse();
            }
        }
        self.graph.initializer.push(TensorProto {
            dims: expected.to_vec(),
            data_type: onnx_type,
            name: stored_name.clone(),
            raw_data: raw,
            ..Default::default()
        });
        if half {
            let cast = NodeProto {
                input: vec![stored_name],
                output: vec![name.to_owned()],
                name: format!("{name}.cast"),
                op_type: "Cast".to_owned(),
                attribute: vec![attr_int("to", i64::from(data_type::FLOAT))],
                ..Default::default()
            };
            self.graph.node.push(cast);
            self.graph.value_info.push(value_info(&Value {
                name: name.to_owned(),
                shape: expected.iter().map(|&n| Dim::Fixed(n)).collect(),
            }));
        }
        Ok(name.to_owned())
    }
}

/// `tch` keeps `BatchNormConfig` private on the module; the model builds every BatchNorm with
/// the default config, so its `eps` is the one in use (the parity tests would catch a change).
fn batch_norm_eps() -> f64 {
    tch::nn::BatchNormConfig::default().eps
}

fn missing(prefix: &str, what: &str) -> ExportError {
    ExportError::Structure(format!(
        "{prefix}.{what} is missing (BatchNorm without affine parameters)"
    ))
}

fn check_shape(name: &str, t: &Tensor, expected: &[i64]) -> Result<(), ExportError> {
    let found = t.size();
    if found != expected {
        return Err(ExportError::WeightShape {
            name: name.to_owned(),
            expected: expected.to_vec(),
            found,
        });
    }
    Ok(())
}

pub(super) fn fmt_shape(shape: &[Dim]) -> String {
    let dims: Vec<String> = shape.iter().map(ToString::to_string).collect();
    format!("[{}]", dims.join(", "))
}

fn value_info(v: &Value) -> ValueInfoProto {
    let dim = v
        .shape
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Dim::Batch => tensor_shape_proto::dimension::Value::DimParam(BATCH.to_owned()),
                Dim::Fixed(n) => tensor_shape_proto::dimension::Value::DimValue(*n),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: v.name.clone(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: data_type::FLOAT,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn attr_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.to_owned(),
        r#type: attribute_type::INT,
        i,
        ..Default::default()
    }
}

fn attr_ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.to_owned(),
        r#type: attribute_type::INTS,
        ints: ints.to_vec(),
        ..Default::default()
    }
}

fn attr_float(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.to_owned(),
        r#type: attribute_type::FLOAT,
        f,
        ..Default::default()
    }
}

/// Reads a value's shape back from a `ValueInfoProto` (for reports and snapshots).
pub fn shape_of(info: &ValueInfoProto) -> Option<Vec<Dim>> {
    let Some(TypeProto {
        value: Some(type_proto::Value::TensorType(t)),
        ..
    }) = &info.r#type
    else {
        return None;
    };
    t.shape.as_ref().map(|s| {
        s.dim
            .iter()
            .map(|d| match &d.value {
                Some(tensor_shape_proto::dimension::Value::DimValue(n)) => Dim::Fixed(*n),
                _ => Dim::Batch,
            })
            .collect()
    })
}
