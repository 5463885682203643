//! The Lambda path: `cargo lambda watch` runs the `infer` binary under a local Lambda runtime
//! emulator, and `cargo lambda invoke` sends it an API Gateway HTTP API (v2) event whose image
//! body is base64-encoded, as API Gateway delivers binary bodies.

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use common::solid;
use image::ImageFormat;
use infer::testing::lambda::{LambdaWatch, api_gateway_v2_event as event};
use infer::testing::{TinyModel, write_with_sidecar};
use serde_json::Value;

#[test]
fn cargo_lambda_watch_serves_api_gateway_events() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let model = write_with_sidecar(dir.path(), "tiny.onnx", &TinyModel::rgb(32).build())?;
    let watch = LambdaWatch::start(&model)?;
    // The first call waits for the emulator to start (and to build the function, when
    // `cargo xtask test` has not already built it).
    let patience = Duration::from_secs(600);
    let png = solid([20, 240, 20], 32, 32, ImageFormat::Png);
    let reply = watch.invoke(&event("/v1/predict", "top_k=2", "image/png", &png)?, patience)?;
    assert_eq!(reply["statusCode"], 200, "{reply}");
    let body: Value = serde_json::from_str(reply["body"].as_str().context("body")?)?;
    assert_eq!(body["predictions"][0]["label"], "green", "{body}");
    assert_eq!(body["predictions"][0]["top_k"].as_array().map(Vec::len), Some(2));

    // Errors travel the same way.
    let reply = watch.invoke(&event("/v1/predict", "", "image/png", b"not an image")?, patience)?;
    assert_eq!(reply["statusCode"], 400, "{reply}");
    let body: Value = serde_json::from_str(reply["body"].as_str().context("body")?)?;
    assert_eq!(body["error"]["code"], "unknown_image_format");
    Ok(())
}
