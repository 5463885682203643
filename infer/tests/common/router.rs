//! The router in-process over a real ONNX Runtime session of the tiny colour classifier, and
//! requests to it (`tower::ServiceExt::oneshot`).

use std::sync::Arc;

use anyhow::Result;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use base64::Engine as _;
use infer::api::Limits;
use infer::batch::BatchConfig;
use infer::model::{Classifier, Overrides};
use infer::testing::TinyModel;
use serde_json::Value;
use tower::ServiceExt;

/// The tiny red/green/blue classifier with 32x32 input.
pub fn classifier() -> Result<Arc<Classifier>> {
    load(&TinyModel::rgb(32))
}

pub fn app_with(limits: Limits, batching: BatchConfig) -> Result<Router> {
    Ok(infer::host::app(classifier()?, batching, limits))
}

pub fn app() -> Result<Router> {
    app_with(
        Limits {
            max_images: 4,
            ..Limits::default()
        },
        BatchConfig::default(),
    )
}

pub async fn call(app: &Router, req: Request<Body>) -> Result<(StatusCode, Value)> {
    let response = app.clone().oneshot(req).await?;
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await?;
    let value =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    Ok((status, value))
}

pub fn post(uri: &str, content_type: &str, body: impl Into<Body>) -> Result<Request<Body>> {
    Ok(Request::post(uri)
        .header(header::CONTENT_TYPE, content_type)
        .body(body.into())?)
}

pub fn get(uri: &str) -> Result<Request<Body>> {
    Ok(Request::get(uri).body(Body::empty())?)
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn multipart(field: &str, bytes: &[u8]) -> (String, Vec<u8>) {
    let boundary = "XyZzYboundary42";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"img.png\"\r\nContent-Type: image/png\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// The model's classifier for `model`, loaded as the server loads it.
pub fn load(model: &TinyModel) -> Result<Arc<Classifier>> {
    Ok(Arc::new(Classifier::load(
        &model.build(),
        "tiny",
        "tiny.onnx",
        &Overrides::default(),
        1,
    )?))
}

/// Status, headers and the raw body.
pub async fn call_raw(app: &Router, req: Request<Body>) -> Result<(StatusCode, HeaderMap, Vec<u8>)> {
    let response = app.clone().oneshot(req).await?;
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await?;
    Ok((status, headers, bytes.to_vec()))
}
