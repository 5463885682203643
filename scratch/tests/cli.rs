//! The `scratch` binary end to end: the edge demo on a generated image, and `bench --json`.
//! What the binary reports about itself (its max abs diff, its panels) is checked against the
//! same convolutions recomputed here through the library and libtorch.

mod common;

use std::process::Command;

use anyhow::{Context, Result, anyhow};
use common::{check_close, libtorch_conv2d};
use image::{GrayImage, Luma};
use scratch::{Conv2dParams, Tensor4, edges, fast, naive};

/// Mirrors `LABEL_H` in the binary: the label band above the panels.
const LABEL_H: u32 = 28;

fn scratch() -> Command {
    Command::new(env!("CARGO_BIN_EXE_scratch"))
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().context("starting scratch")?;
    let stdout = String::from_utf8(out.stdout)?;
    anyhow::ensure!(
        out.status.success(),
        "scratch failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

#[test]
fn edges_writes_three_labelled_panels_that_agree_with_libtorch() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // A bright square on a dark field: edges along its border, nothing inside or outside.
    let (w, h) = (48u32, 32u32);
    let photo = GrayImage::from_fn(w, h, |x, y| {
        Luma([if (12..36).contains(&x) && (8..24).contains(&y) {
            220
        } else {
            20
        }])
    });
    let input = dir.path().join("square.png");
    photo.save(&input)?;
    let output = dir.path().join("panel.png");

    let stdout = run(scratch().arg("edges").arg(&input).arg("-o").arg(&output))?;
    let printed: f32 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("max abs diff: "))
        .ok_or_else(|| anyhow!("no max abs diff in {stdout}"))?
        .parse()?;

    // The same responses, recomputed: the binary's figure and panels must be these.
    let x = edges::luma_tensor(w as usize, h as usize, photo.as_raw())?;
    let params = Conv2dParams::default().padding(1);
    let ours = fast::conv2d(&x, &edges::filter_bank(), None, &params)?;
    let theirs = libtorch_conv2d(&x, &edges::filter_bank(), None, &params)?;
    check_close("edges", &ours, &theirs, 1e-5, 1e-6)?;
    assert_eq!(printed, ours.max_abs_diff(&theirs)?, "printed max abs diff");

    let panel = image::open(&output)?.to_rgb8();
    assert_eq!(panel.dimensions(), (3 * w, h + LABEL_H));
    // Photo | scratch | libtorch, each pixel for pixel (no scaling below the panel width).
    for (i, expected) in [
        photo.as_raw().clone(),
        edges::magnitude_image(&ours),
        edges::magnitude_image(&theirs),
    ]
    .iter()
    .enumerate()
    {
        let shown: Vec<u8> = (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .map(|(x, y)| panel.get_pixel(i as u32 * w + x, LABEL_H + y)[0])
            .collect();
        // The border line drawn between panels covers their first column.
        let differing = shown
            .iter()
            .zip(expected)
            .enumerate()
            .filter(|(p, (a, b))| a != b && (i == 0 || p % w as usize != 0))
            .count();
        assert_eq!(
            differing, 0,
            "panel {i} differs from its recomputation in {differing} pixels"
        );
    }
    // Middle panel (scratch): bright on the square's left border, black in its middle and outside.
    let px = |x: u32, y: u32| panel.get_pixel(w + x, LABEL_H + y)[0];
    assert!(px(12, 16) > 200, "no edge on the border: {}", px(12, 16));
    assert_eq!(px(24, 16), 0, "edge inside the flat square");
    assert_eq!(px(3, 3), 0, "edge in the flat background");
    // The label band holds some drawn text (not just the background fill).
    let band_colours: std::collections::HashSet<_> = (0..3 * w).map(|x| panel.get_pixel(x, LABEL_H / 2)).collect();
    assert!(band_colours.len() > 2, "label band looks empty");
    Ok(())
}

#[test]
fn edges_names_a_missing_file() -> Result<()> {
    let out = scratch().args(["edges", "/nonexistent/photo.jpg"]).output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr)?;
    assert!(stderr.contains("/nonexistent/photo.jpg"), "{stderr}");
    Ok(())
}

#[test]
fn bench_json_reports_all_three_timings() -> Result<()> {
    let stdout = run(scratch().args(["bench", "--json", "--threads", "1", "--runs", "2", "--naive-runs", "1"]))?;
    let v: serde_json::Value = serde_json::from_str(stdout.trim())?;
    assert_eq!(v["shape"]["input"], serde_json::json!([1, 3, 128, 128]));
    assert_eq!(v["shape"]["weight"], serde_json::json!([16, 3, 3, 3]));
    assert_eq!(v["threads"], 1);
    for key in ["naive_s", "fast_s", "libtorch_s"] {
        let t = v[key].as_f64().ok_or_else(|| anyhow!("{key} missing in {v}"))?;
        assert!(t > 0.0 && t.is_finite(), "{key} = {t}");
    }

    // Its parity figure, recomputed from the inputs it names: the larger of naive's and fast's
    // max abs diff from libtorch, each on one thread as the binary ran them.
    let seed = |name: &str| {
        v["seeds"][name]
            .as_u64()
            .ok_or_else(|| anyhow!("seeds.{name} missing in {v}"))
    };
    let input = Tensor4::random([1, 3, 128, 128], seed("input")?);
    let weight = Tensor4::random([16, 3, 3, 3], seed("weight")?);
    let bias = Tensor4::random([1, 1, 1, 16], seed("bias")?).into_data();
    let params = Conv2dParams::default().padding(1);
    tch::set_num_threads(1);
    let reference = libtorch_conv2d(&input, &weight, Some(&bias), &params)?;
    let naive_out = naive::conv2d(&input, &weight, Some(&bias), &params)?;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let fast_out = pool.install(|| fast::conv2d(&input, &weight, Some(&bias), &params))?;
    check_close("fast", &fast_out, &reference, 1e-5, 1e-6)?;
    let expected = naive_out
        .max_abs_diff(&reference)?
        .max(fast_out.max_abs_diff(&reference)?);
    let printed = v["max_abs_diff"]
        .as_f64()
        .ok_or_else(|| anyhow!("max_abs_diff missing in {v}"))?;
    assert_eq!(printed as f32, expected, "printed max abs diff");
    Ok(())
}

/// A small classifier graph: Conv (stride 2) -> Relu -> MaxPool (ceil mode) -> grouped Conv,
/// added to its own input -> GlobalAveragePool -> Flatten -> Gemm, with a symbolic batch.
fn tiny_classifier(extra: Option<&str>) -> onnx::proto::ModelProto {
    use onnx::proto::{
        AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto,
        TypeProto, ValueInfoProto, attribute_type, data_type, tensor_shape_proto, type_proto,
    };
    use tensor_shape_proto::dimension::Value::{DimParam, DimValue};
    let ints = |name: &str, ints: &[i64]| AttributeProto {
        name: name.into(),
        r#type: attribute_type::INTS,
        ints: ints.to_vec(),
        ..AttributeProto::default()
    };
    let int = |name: &str, i: i64| AttributeProto {
        name: name.into(),
        r#type: attribute_type::INT,
        i,
        ..AttributeProto::default()
    };
    let node = |op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>| NodeProto {
        input: inputs.iter().map(|&s| s.into()).collect(),
        output: vec![output.into()],
        name: output.into(),
        op_type: op.into(),
        attribute,
        ..NodeProto::default()
    };
    let weight = |name: &str, dims: &[i64]| TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: data_type::FLOAT,
        float_data: vec![0.5; dims.iter().product::<i64>() as usize],
        ..TensorProto::default()
    };
    let dim = |value| tensor_shape_proto::Dimension {
        value: Some(value),
        ..tensor_shape_proto::Dimension::default()
    };
    let input = ValueInfoProto {
        name: "input".into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: data_type::FLOAT,
                shape: Some(TensorShapeProto {
                    dim: vec![
                        dim(DimParam("N".into())),
                        dim(DimValue(3)),
                        dim(DimValue(10)),
                        dim(DimValue(10)),
                    ],
                }),
            })),
            ..TypeProto::default()
        }),
        ..ValueInfoProto::default()
    };
    let mut nodes = vec![
        node(
            "Conv",
            &["input", "w1"],
            "conv1",
            vec![ints("pads", &[1, 1, 1, 1]), ints("strides", &[2, 2])],
        ),
        node("Relu", &["conv1"], "relu1", vec![]),
        node(
            "MaxPool",
            &["relu1"],
            "pool1",
            vec![
                ints("kernel_shape", &[2, 2]),
                ints("strides", &[2, 2]),
                int("ceil_mode", 1),
            ],
        ),
        node(
            "Conv",
            &["pool1", "w2"],
            "conv2",
            vec![ints("pads", &[1, 1, 1, 1]), int("group", 2)],
        ),
        node("Add", &["conv2", "pool1"], "add", vec![]),
        node("GlobalAveragePool", &["add"], "gap", vec![]),
        node("Flatten", &["gap"], "flat", vec![int("axis", 1)]),
        node("Gemm", &["flat", "fc", "fc_bias"], "logits", vec![int("transB", 1)]),
    ];
    if let Some(op) = extra {
        nodes.push(node(op, &["logits"], "extra", vec![]));
    }
    ModelProto {
        ir_version: onnx::proto::IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(GraphProto {
            node: nodes,
            name: "tiny".into(),
            initializer: vec![
                weight("w1", &[4, 3, 3, 3]),
                weight("w2", &[4, 2, 3, 3]),
                weight("fc", &[5, 4]),
                weight("fc_bias", &[5]),
            ],
            input: vec![input],
            ..GraphProto::default()
        }),
        ..ModelProto::default()
    }
}

#[test]
fn flops_counts_convs_and_the_classifier_per_image() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("tiny.onnx");
    std::fs::write(&path, tiny_classifier(None).to_bytes())?;
    let stdout = run(scratch().arg("flops").arg(&path))?;
    // conv1: 4 filters of 3x3x3 at (10 + 2 - 3) / 2 + 1 = 5x5; the pool: ceil((5 - 2) / 2) + 1 = 3x3;
    // conv2: 4 filters of 2 channels (2 groups) x 3x3 at 3x3; the Gemm: a 5x4 weight.
    let expected: u64 = 2 * (4 * 3 * 9 * 5 * 5) + 2 * (4 * 2 * 9 * 3 * 3) + 2 * 5 * 4;
    assert_eq!(
        stdout.trim(),
        format!(
            "{}: {:.4} GFLOP per image ({expected} FLOP)",
            path.display(),
            expected as f64 / 1e9
        )
    );
    Ok(())
}

#[test]
fn flops_names_an_operator_it_cannot_shape() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("tiny.onnx");
    std::fs::write(&path, tiny_classifier(Some("Upsample")).to_bytes())?;
    let out = scratch().arg("flops").arg(&path).output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr)?;
    for needle in ["tiny.onnx", "node \"extra\" (Upsample)", "operator Upsample"] {
        assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    }
    Ok(())
}
