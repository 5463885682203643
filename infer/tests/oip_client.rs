//! The official Open Inference Protocol client (`tritonclient[http]` from PyPI, installed into
//! the tools venv by `cargo xtask setup`) drives a real `infer serve` on loopback through
//! `tests/oip/client.py`: health, metadata, readiness (versioned too), inference with JSON and
//! binary tensors, sync and async, a JPEG as `BYTES` with the classification extension, and
//! errors whose messages the client prints. The logits it gets must equal ONNX Runtime's for
//! the same tensor, run here in-process without the server.

mod common;

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use common::server::{start, tools_python};
use common::solid;
use image::ImageFormat;
use infer::model::{Classifier, Overrides};
use infer::testing::{TinyModel, write_with_sidecar};
use serde_json::{Value, json};

#[test]
fn tritonclient_gets_onnx_runtime_s_answers_from_a_real_server() -> Result<()> {
    let python = tools_python()?;
    let dir = tempfile::tempdir()?;
    let model = TinyModel::rgb(32);
    let path = write_with_sidecar(dir.path(), "tiny.onnx", &model.build())?;

    // Two images of varied values, so that every logit differs.
    let shape = [2usize, 3, 32, 32];
    let input: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0 + (i / 3072) as f32 * 0.5)
        .collect();
    let classifier = Classifier::load(&model.build(), "tiny", "tiny.onnx", &Overrides::default(), 1)?;
    let logits: Vec<f32> = classifier.run(input.clone(), 2)?.into_iter().flatten().collect();
    std::fs::write(
        dir.path().join("input.bin"),
        input.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
    )?;

    let server = start(&path, &[])?;
    let photo = solid([30, 200, 40], 64, 48, ImageFormat::Jpeg);
    let predicted: Value = ureq::post(&format!("http://{}/v1/predict", server.addr))
        .header("Content-Type", "image/jpeg")
        .send(&photo[..])?
        .body_mut()
        .read_json()?;
    let label = predicted["predictions"][0]["label"].as_str().context("label")?;
    ensure!(label == "green", "the tiny model calls a green photo {label}");
    std::fs::write(dir.path().join("photo.jpg"), &photo)?;
    std::fs::write(dir.path().join("truncated.jpg"), &photo[..photo.len() - 10])?;
    let expected = json!({
        "shape": shape, "logits": logits, "input": "input", "output": "logits", "image_input": "image",
        "photo_label": label, "photo_class_id": predicted["predictions"][0]["class_id"],
    });
    std::fs::write(dir.path().join("expected.json"), expected.to_string())?;

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oip/client.py");
    let output = Command::new(&python)
        .arg(&script)
        .args([server.addr.as_str(), "tiny"])
        .arg(dir.path())
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success() && stdout.contains("all checks passed"),
        "client.py failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    // The client printed the server's own messages, not a crash while parsing them.
    ensure!(
        stdout.contains("the client reports: [404] no model \"nope\""),
        "{stdout}"
    );
    Ok(())
}
