//! `scratch flops`: floating-point operations per image of an ONNX classifier (a multiply-add
//! counts as two) from its Conv nodes, through [`Geometry::macs`], and its Gemm/MatMul nodes with
//! a weight initializer. With the machine's FMA peak (`cargo run --release -p scratch --example
//! fma_peak`) it gives the most images/s that any direct-convolution runtime can reach.
//!
//! Shapes are propagated from the graph input at batch 1 through the operators an image
//! classifier is made of; any other operator is an error naming it, not a guess.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail, ensure};
use onnx::proto::{self, NodeProto, tensor_shape_proto::dimension::Value as Dim, type_proto::Value as Type};
use scratch::{Conv2dParams, Geometry};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The ONNX models to count.
    #[arg(required = true)]
    models: Vec<PathBuf>,
}

pub fn run(args: &Args) -> Result<()> {
    for path in &args.models {
        let flops = model_flops(path)?;
        println!(
            "{}: {:.4} GFLOP per image ({flops} FLOP)",
            path.display(),
            flops as f64 / 1e9
        );
    }
    Ok(())
}

/// FLOPs per image of the model at `path`.
fn model_flops(path: &Path) -> Result<u64> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let model = proto::ModelProto::from_bytes(&bytes).with_context(|| format!("parsing {}", path.display()))?;
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| anyhow!("{}: the model has no graph", path.display()))?;
    graph_flops(graph).with_context(|| format!("counting the FLOPs of {}", path.display()))
}

/// Shapes of the values computed so far, by name.
type Shapes = HashMap<String, Vec<u64>>;

fn graph_flops(graph: &proto::GraphProto) -> Result<u64> {
    let mut shapes = Shapes::new();
    let mut weights = HashMap::new();
    for init in &graph.initializer {
        let dims = init
            .dims
            .iter()
            .map(|&d| u64::try_from(d))
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("initializer {}: negative dimension {:?}", init.name, init.dims))?;
        shapes.insert(init.name.clone(), dims.clone());
        weights.insert(init.name.as_str(), dims);
    }
    for input in graph.input.iter().filter(|i| !weights.contains_key(i.name.as_str())) {
        shapes.insert(input.name.clone(), input_shape(input)?);
    }
    let mut total = 0u64;
    for node in &graph.node {
        let at = || format!("node {:?} ({})", node.name, node.op_type);
        let (output, flops) = node_shape(node, &shapes, &weights).with_context(at)?;
        total = total
            .checked_add(flops)
            .with_context(|| format!("{}: FLOP count overflows", at()))?;
        if let Some(name) = node.output.first() {
            shapes.insert(name.clone(), output);
        }
    }
    Ok(total)
}

/// A graph input's static shape with a symbolic leading (batch) dimension taken as 1.
fn input_shape(input: &proto::ValueInfoProto) -> Result<Vec<u64>> {
    let Some(Type::TensorType(tensor)) = input.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        bail!("graph input {:?} is not a tensor", input.name);
    };
    let dims = tensor.shape.as_ref().map(|s| s.dim.as_slice()).unwrap_or_default();
    dims.iter()
        .enumerate()
        .map(|(i, d)| match &d.value {
            Some(Dim::DimValue(v)) => u64::try_from(*v).map_err(|_| anyhow!("negative dimension {v}")),
            Some(Dim::DimParam(_)) | None if i == 0 => Ok(1),
            other => Err(anyhow!("dimension {i} is not a number: {other:?}")),
        })
        .collect::<Result<_>>()
        .with_context(|| format!("graph input {:?}", input.name))
}

/// The shape of `node`'s first output and the FLOPs it does per image.
fn node_shape(node: &NodeProto, shapes: &Shapes, weights: &HashMap<&str, Vec<u64>>) -> Result<(Vec<u64>, u64)> {
    let input = |i: usize| -> Result<&Vec<u64>> {
        let name = node.input.get(i).ok_or_else(|| anyhow!("no input {i}"))?;
        shapes
            .get(name)
            .ok_or_else(|| anyhow!("input {name:?} has no known shape"))
    };
    Ok(match node.op_type.as_str() {
        "Conv" => conv(node, input(0)?, input(1)?)?,
        "MaxPool" | "AveragePool" => (pool(node, input(0)?)?, 0),
        "GlobalAveragePool" | "GlobalMaxPool" => {
            let x = input(0)?;
            ensure!(x.len() >= 2, "input of rank {} where at least 2 was expected", x.len());
            let mut out = x[..2].to_vec();
            out.resize(x.len(), 1);
            (out, 0)
        }
        "Flatten" => {
            let x = input(0)?;
            let axis = usize::try_from(int_attr(node, "axis")?.unwrap_or(1))
                .ok()
                .filter(|&a| a <= x.len())
                .ok_or_else(|| anyhow!("axis outside a rank-{} input", x.len()))?;
            (vec![product(&x[..axis])?, product(&x[axis..])?], 0)
        }
        "Gemm" | "MatMul" => {
            let (a, b) = (input(0)?, input(1)?);
            let transposed = |name| Ok::<_, anyhow::Error>(int_attr(node, name)?.unwrap_or(0) != 0);
            let (trans_a, trans_b) = if node.op_type == "Gemm" {
                (transposed("transA")?, transposed("transB")?)
            } else {
                (false, false)
            };
            ensure!(
                a.len() >= 2 && b.len() == 2,
                "operand shapes {a:?} and {b:?} are not matrices"
            );
            let rows = if trans_a { a[a.len() - 1] } else { a[a.len() - 2] };
            let cols = if trans_b { b[0] } else { b[1] };
            let mut out = a[..a.len() - 2].to_vec();
            out.extend([rows, cols]);
            // Only a product with a weight is the model's work; per image, as the batch is 1.
            let flops = if weights.contains_key(node.input[1].as_str()) {
                product(&[2, b[0], b[1]])?
            } else {
                0
            };
            (out, flops)
        }
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Max" | "Min" => {
            let mut out = input(0)?.clone();
            for i in 1..node.input.len() {
                out = broadcast(&out, input(i)?)?;
            }
            (out, 0)
        }
        "Relu" | "LeakyRelu" | "Sigmoid" | "Tanh" | "Clip" | "HardSigmoid" | "HardSwish" | "Identity" | "Dropout"
        | "BatchNormalization" | "Cast" | "Softmax" | "LogSoftmax" => (input(0)?.clone(), 0),
        other => bail!("operator {other} is not one this count knows the output shape of"),
    })
}

/// A Conv's output shape and FLOPs per image, with the sizes checked by [`Geometry::new`].
fn conv(node: &NodeProto, x: &[u64], w: &[u64]) -> Result<(Vec<u64>, u64)> {
    let four = |shape: &[u64], what| -> Result<[usize; 4]> {
        let dims: Vec<usize> = shape.iter().map(|&d| usize::try_from(d)).collect::<Result<_, _>>()?;
        dims.try_into()
            .map_err(|d: Vec<usize>| anyhow!("{what} of rank {} where 4 (a 2-D conv) was expected", d.len()))
    };
    let pair = |name, default: usize| -> Result<[usize; 2]> {
        match ints_attr(node, name)? {
            None => Ok([default; 2]),
            Some([h, w]) => Ok([usize::try_from(*h)?, usize::try_from(*w)?]),
            Some(other) => bail!("{name} {other:?} is not a pair"),
        }
    };
    let auto_pad = node
        .attribute
        .iter()
        .find(|a| a.name == "auto_pad")
        .map(|a| String::from_utf8_lossy(&a.s).into_owned());
    let padding = match auto_pad.as_deref() {
        None | Some("NOTSET") => match ints_attr(node, "pads")? {
            None => [0, 0],
            Some(&[top, left, bottom, right]) if top == bottom && left == right => {
                [usize::try_from(top)?, usize::try_from(left)?]
            }
            Some(other) => bail!("pads {other:?} are not symmetric, which Geometry does not model"),
        },
        Some("VALID") => [0, 0],
        Some(other) => bail!("auto_pad {other} is not supported"),
    };
    let params = Conv2dParams {
        stride: pair("strides", 1)?,
        padding,
        dilation: pair("dilations", 1)?,
        groups: usize::try_from(int_attr(node, "group")?.unwrap_or(1))?,
    };
    let g = Geometry::new(four(x, "input")?, four(w, "weight")?, None, &params)?;
    // Geometry checks that each tensor's size fits; their product bounds the multiply-adds.
    let bound = product(&[product(&g.output_shape().map(|d| d as u64))?, product(w)?]);
    ensure!(
        bound.is_ok_and(|b| b <= usize::MAX as u64 / 2),
        "the FLOP count overflows"
    );
    let flops = (2 * g.macs() / g.batch) as u64;
    Ok((g.output_shape().iter().map(|&d| d as u64).collect(), flops))
}

/// MaxPool/AveragePool output shape (`ceil_mode` included).
fn pool(node: &NodeProto, x: &[u64]) -> Result<Vec<u64>> {
    let kernel = ints_attr(node, "kernel_shape")?.ok_or_else(|| anyhow!("no kernel_shape"))?;
    let spatial = kernel.len();
    ensure!(
        x.len() == spatial + 2,
        "input {x:?} does not match kernel_shape {kernel:?}"
    );
    let list = |name, default: i64, len: usize| -> Result<Vec<i64>> {
        let v = ints_attr(node, name)?.map_or_else(|| vec![default; len], <[i64]>::to_vec);
        ensure!(v.len() == len, "{name} {v:?} has not {len} values");
        Ok(v)
    };
    let (strides, dilations, pads) = (
        list("strides", 1, spatial)?,
        list("dilations", 1, spatial)?,
        list("pads", 0, 2 * spatial)?,
    );
    let ceil = int_attr(node, "ceil_mode")?.unwrap_or(0) != 0;
    let mut out = x[..2].to_vec();
    for i in 0..spatial {
        ensure!(
            kernel[i] > 0 && dilations[i] > 0 && strides[i] > 0 && pads[i] >= 0 && pads[i + spatial] >= 0,
            "kernel_shape {kernel:?}, dilations {dilations:?}, strides {strides:?} or pads {pads:?} out of range"
        );
        let size = i64::try_from(x[i + 2])?;
        let padded = size.checked_add(pads[i]).and_then(|p| p.checked_add(pads[i + spatial]));
        let span = (kernel[i] - 1).checked_mul(dilations[i]).and_then(|s| s.checked_add(1));
        let (Some(padded), Some(span)) = (padded, span) else {
            bail!("pooling sizes overflow: kernel {kernel:?}, dilations {dilations:?}, pads {pads:?}");
        };
        ensure!(span <= padded, "pooling window {span} over {padded} values");
        let (steps, stride) = (u64::try_from(padded - span)?, u64::try_from(strides[i])?);
        out.push(if ceil { steps.div_ceil(stride) } else { steps / stride } + 1);
    }
    Ok(out)
}

/// The number of elements of `shape`.
fn product(shape: &[u64]) -> Result<u64> {
    shape
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d))
        .ok_or_else(|| anyhow!("{shape:?} has more elements than a u64 counts"))
}

/// NumPy broadcasting of two shapes.
fn broadcast(a: &[u64], b: &[u64]) -> Result<Vec<u64>> {
    let rank = a.len().max(b.len());
    let at = |s: &[u64], i: usize| if i + s.len() >= rank { s[i + s.len() - rank] } else { 1 };
    (0..rank)
        .map(|i| match (at(a, i), at(b, i)) {
            (x, y) if x == y || y == 1 => Ok(x),
            (1, y) => Ok(y),
            (x, y) => Err(anyhow!("shapes {a:?} and {b:?} do not broadcast ({x} vs {y})")),
        })
        .collect()
}

fn int_attr(node: &NodeProto, name: &str) -> Result<Option<i64>> {
    match node.attribute.iter().find(|a| a.name == name) {
        None => Ok(None),
        Some(a) if a.r#type == proto::attribute_type::INT => Ok(Some(a.i)),
        Some(a) => bail!("attribute {name} has type {} where INT was expected", a.r#type),
    }
}

fn ints_attr<'a>(node: &'a NodeProto, name: &str) -> Result<Option<&'a [i64]>> {
    match node.attribute.iter().find(|a| a.name == name) {
        None => Ok(None),
        Some(a) if a.r#type == proto::attribute_type::INTS => Ok(Some(&a.ints)),
        Some(a) => bail!("attribute {name} has type {} where INTS was expected", a.r#type),
    }
}
