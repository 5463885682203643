//! The native runtimes are wired: a tch convolution runs on the libtorch that set-up assembled,
//! and an ONNX Runtime session loads `libonnxruntime.so` through `ORT_DYLIB_PATH`, without the
//! user exporting anything.

use anyhow::{Context, Result};
use ort::session::Session;
use ort::value::Tensor;
use tch::{Device, Kind, Tensor as TchTensor};

#[test]
fn libtorch_conv2d_runs_and_sums_a_box() -> Result<()> {
    // A 3x3 all-ones kernel over an all-ones 5x5 image with padding 1: each output counts the
    // in-bounds neighbours (4 in a corner, 6 on an edge, 9 inside).
    let input = TchTensor::ones([1, 1, 5, 5], (Kind::Float, Device::Cpu));
    let weight = TchTensor::ones([1, 1, 3, 3], (Kind::Float, Device::Cpu));
    let out = input.conv2d(&weight, None::<TchTensor>, [1, 1], [1, 1], [1, 1], 1);
    assert_eq!(out.size(), [1, 1, 5, 5]);
    let values = Vec::<f32>::try_from(out.flatten(0, -1))?;
    assert_eq!(values[0], 4.0);
    assert_eq!(values[1], 6.0);
    assert_eq!(values[12], 9.0);
    Ok(())
}

/// A protobuf field with a length-delimited payload (wire type 2).
fn field(number: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = varint(u64::from(number << 3 | 2));
    out.extend(varint(payload.len() as u64));
    out.extend_from_slice(payload);
    out
}

/// A protobuf varint field (wire type 0).
fn int_field(number: u32, value: u64) -> Vec<u8> {
    let mut out = varint(u64::from(number << 3));
    out.extend(varint(value));
    out
}

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// A float tensor value-info `name: float32[n]` (ValueInfoProto > TypeProto > Tensor > Shape).
fn value_info(name: &str, n: u64) -> Vec<u8> {
    let dim = field(1, &int_field(1, n));
    let tensor = [int_field(1, 1), field(2, &dim)].concat();
    [field(1, name.as_bytes()), field(2, &field(1, &tensor))].concat()
}

/// The smallest useful model, encoded by hand so that this test needs nothing but ort:
/// `y = Relu(x)` over float32[4], opset 17.
fn relu_model() -> Vec<u8> {
    let node = [field(1, b"x"), field(2, b"y"), field(4, b"Relu")].concat();
    let graph = [
        field(1, &node),
        field(2, b"relu"),
        field(11, &value_info("x", 4)),
        field(12, &value_info("y", 4)),
    ]
    .concat();
    let opset = [field(1, b""), int_field(2, 17)].concat();
    [int_field(1, 8), field(8, &opset), field(7, &graph)].concat()
}

#[test]
fn onnxruntime_session_runs_relu() -> Result<()> {
    let dylib = std::env::var("ORT_DYLIB_PATH").context("cargo's [env] should set ORT_DYLIB_PATH")?;
    anyhow::ensure!(
        std::path::Path::new(&dylib).exists(),
        "ORT_DYLIB_PATH={dylib} does not exist; run `cargo xtask setup`"
    );
    let environment = ort::init_from(&dylib)?.with_name("wiring-test").build()?;
    let mut session = Session::builder(&environment)?.commit_from_memory(&relu_model())?;
    let input = Tensor::from_array(([4usize], vec![-1.5f32, 0.0, 2.0, -0.25]))?;
    let outputs = session.run(ort::inputs!["x" => input])?;
    let (shape, data) = outputs["y"].try_extract_tensor::<f32>()?;
    assert_eq!(shape.iter().copied().collect::<Vec<_>>(), [4]);
    assert_eq!(data, [0.0, 0.0, 2.0, 0.0]);
    Ok(())
}
