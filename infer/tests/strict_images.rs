//! A truncated or corrupt image is a `400 bad_image` naming what is wrong, in every input form
//! (raw body, multipart, JSON base64, a JSON batch, V2 `BYTES`) and through a Lambda event;
//! never a partly grey image that gets classified. The files are made here from a real JPEG.

mod common;

use anyhow::{Context, Result};
use axum::body::Body;
use axum::http::StatusCode;
use base64::Engine as _;
use common::router::{app, b64, call, multipart, post};
use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
use serde_json::{Value, json};
use tower::ServiceExt;

/// A textured 96x64 JPEG: long enough a scan to cut or damage in the middle.
fn jpeg() -> Result<Vec<u8>> {
    let image = RgbImage::from_fn(96, 64, |x, y| {
        let noise = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)) % 97;
        Rgb([(150 + noise) as u8, (x * 2) as u8, (y * 3) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(image).write_to(&mut out, ImageFormat::Jpeg)?;
    Ok(out.into_inner())
}

/// Where the first scan's entropy-coded data starts: after the SOS segment.
fn scan_start(jpeg: &[u8]) -> Result<usize> {
    let sos = jpeg
        .windows(2)
        .position(|w| w == [0xFF, 0xDA])
        .context("no SOS marker")?;
    let len = usize::from(u16::from_be_bytes([jpeg[sos + 2], jpeg[sos + 3]]));
    Ok(sos + 2 + len)
}

/// Cut in the middle of the scan.
fn truncated(jpeg: &[u8]) -> Result<Vec<u8>> {
    let start = scan_start(jpeg)?;
    Ok(jpeg[..start + (jpeg.len() - start) / 2].to_vec())
}

/// Every byte present and the end-of-image marker too, but a run in the middle of the scan is
/// overwritten with stuffed 0xFF bytes: all-ones bits, which no Huffman table assigns.
fn corrupt_scan(jpeg: &[u8]) -> Result<Vec<u8>> {
    let start = scan_start(jpeg)?;
    let mut out = jpeg.to_vec();
    let middle = start + (jpeg.len() - start) / 2;
    for pair in out[middle..middle + 64].chunks_exact_mut(2) {
        pair.copy_from_slice(&[0xFF, 0x00]);
    }
    Ok(out)
}

fn assert_bad_image(name: &str, status: StatusCode, reply: &Value, needle: &str) {
    assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {reply}");
    let (code, message) = match &reply["error"] {
        Value::String(message) => ("bad_image", message.as_str()),
        error => (
            error["code"].as_str().unwrap_or_default(),
            error["message"].as_str().unwrap_or_default(),
        ),
    };
    assert_eq!(code, "bad_image", "{name}: {reply}");
    assert!(message.contains(needle), "{name}: {message:?} does not name {needle:?}");
}

#[tokio::test]
async fn truncated_and_corrupt_jpegs_are_refused_in_every_input_form() -> Result<()> {
    let app = app()?;
    let good = jpeg()?;
    let (status, reply) = call(&app, post("/v1/predict", "image/jpeg", good.clone())?).await?;
    assert_eq!(status, StatusCode::OK, "the intact file: {reply}");
    let cases = [
        ("truncated", truncated(&good)?, "ends before the end-of-image marker"),
        (
            "without_eoi",
            good[..good.len() - 2].to_vec(),
            "ends before the end-of-image marker",
        ),
        ("corrupt_scan", corrupt_scan(&good)?, "JPEG: "),
    ];
    for (name, bad, needle) in &cases {
        let (status, reply) = call(&app, post("/v1/predict", "image/jpeg", bad.clone())?).await?;
        assert_bad_image(&format!("{name} raw"), status, &reply, needle);

        let (content_type, body) = multipart("file", bad);
        let (status, reply) = call(&app, post("/predict", &content_type, body)?).await?;
        assert_bad_image(&format!("{name} multipart"), status, &reply, needle);

        let request = json!({"image": b64(bad)}).to_string();
        let (status, reply) = call(&app, post("/v1/predict", "application/json", request)?).await?;
        assert_bad_image(&format!("{name} json"), status, &reply, needle);

        // In a batch the message names the image.
        let request = json!({"images": [b64(&good), b64(bad)]}).to_string();
        let (status, reply) = call(&app, post("/v1/predict", "application/json", request)?).await?;
        assert_bad_image(&format!("{name} batch"), status, &reply, "image 1: ");

        let request = json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64(bad)]}]});
        let (status, reply) = call(
            &app,
            post("/v2/models/tiny/infer", "application/json", request.to_string())?,
        )
        .await?;
        assert_bad_image(&format!("{name} v2"), status, &reply, needle);
    }
    Ok(())
}

#[tokio::test]
async fn a_truncated_jpeg_through_a_lambda_event_is_refused() -> Result<()> {
    let app = app()?;
    let bad = truncated(&jpeg()?)?;
    let event = json!({
        "version": "2.0", "routeKey": "$default", "rawPath": "/v1/predict", "rawQueryString": "",
        "headers": {"content-type": "image/jpeg"},
        "requestContext": {"accountId": "123456789012", "apiId": "abc", "domainName": "abc.lambda-url.us-east-1.on.aws",
            "domainPrefix": "abc", "http": {"method": "POST", "path": "/v1/predict", "protocol": "HTTP/1.1",
            "sourceIp": "192.0.2.1", "userAgent": "test"}, "requestId": "req-url-bad", "routeKey": "$default",
            "stage": "$default", "time": "01/Jan/2026:00:00:00 +0000", "timeEpoch": 0},
        "body": base64::engine::general_purpose::STANDARD.encode(&bad),
        "isBase64Encoded": true
    });
    let request = lambda_http::request::from_str(&event.to_string())?;
    let request = request.map(|body: lambda_http::Body| Body::from(body.to_vec()));
    let response = app.oneshot(request).await?;
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await?;
    let reply: Value = serde_json::from_slice(&bytes)?;
    assert_bad_image("lambda", status, &reply, "ends before the end-of-image marker");
    Ok(())
}
