//! API Gateway REST (v1), HTTP API (v2) and Function URL events, parsed by `lambda_http` exactly
//! as on Lambda (base64 binary bodies, the stage left out of the path as `infer` asks), through
//! the same router in-process. One test: the variable that `lambda_http` reads is set first,
//! while no other thread runs.

mod common;

use std::sync::Arc;

use anyhow::{Context, Result};
use axum::body::Body;
use base64::Engine as _;
use common::solid;
use image::ImageFormat;
use infer::model::{Classifier, Overrides};
use infer::testing::TinyModel;
use serde_json::{Value, json};
use tower::ServiceExt;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn send(event: &Value) -> Result<(u16, Value)> {
    let classifier = Arc::new(Classifier::load(
        &TinyModel::rgb(32).build(),
        "tiny",
        "tiny.onnx",
        &Overrides::default(),
        1,
    )?);
    let app = infer::host::app(
        classifier,
        infer::batch::BatchConfig::default(),
        infer::api::Limits::default(),
    );
    let request =
        lambda_http::request::from_str(&event.to_string())?.map(|body: lambda_http::Body| Body::from(body.to_vec()));
    let response = app.oneshot(request).await?;
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await?;
    Ok((status, serde_json::from_slice(&bytes).context("JSON reply")?))
}

#[tokio::test]
async fn api_gateway_and_function_url_events_reach_the_routes() -> Result<()> {
    // SAFETY: the only test of this binary, run before it starts any thread.
    unsafe { infer::host::ignore_stage_in_path() };
    rest_api_events_with_a_stage_and_base64_body().await?;
    http_api_event_on_a_named_stage_and_function_url_event().await
}

/// `v1` is the template's stage: a path that starts with it must not lose it (`/v1/model` is
/// served only under that path; `/predict` also answers an image, as `/v1/predict` does).
async fn rest_api_events_with_a_stage_and_base64_body() -> Result<()> {
    let png = solid([240, 10, 10], 32, 32, ImageFormat::Png);
    for stage in ["prod", "v1"] {
        let (status, reply) = send(&rest_event(stage, "POST", "/v1/predict", &png)).await?;
        assert_eq!(status, 200, "{stage}: {reply}");
        assert_eq!(reply["predictions"][0]["label"], "red", "{stage}");
        assert_eq!(reply["predictions"][0]["top_k"].as_array().map(Vec::len), Some(1));
        let (status, reply) = send(&rest_event(stage, "GET", "/v1/model", &[])).await?;
        assert_eq!((status, &reply["name"]), (200, &json!("tiny")), "{stage}: {reply}");
    }
    Ok(())
}

fn rest_event(stage: &str, method: &str, path: &str, png: &[u8]) -> Value {
    json!({
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": method,
        "headers": {"Content-Type": "image/png"},
        "multiValueHeaders": {"Content-Type": ["image/png"]},
        "queryStringParameters": {"top_k": "1"},
        "multiValueQueryStringParameters": {"top_k": ["1"]},
        "pathParameters": {"proxy": path.trim_start_matches('/')},
        "stageVariables": null,
        "requestContext": {
            "accountId": "123456789012", "resourceId": "abc", "stage": stage, "requestId": "req-rest-1",
            "identity": {"sourceIp": "192.0.2.1"}, "resourcePath": "/{proxy+}", "httpMethod": method,
            "apiId": "abc", "path": format!("/{stage}{path}")
        },
        "body": b64(png),
        "isBase64Encoded": true
    })
}

async fn http_api_event_on_a_named_stage_and_function_url_event() -> Result<()> {
    let png = solid([10, 10, 240], 32, 32, ImageFormat::Png);
    let context = |stage: &str, domain: &str| {
        json!({
            "accountId": "123456789012", "apiId": "abc", "domainName": domain, "domainPrefix": "abc",
            "http": {"method": "POST", "path": "/v1/predict", "protocol": "HTTP/1.1", "sourceIp": "192.0.2.1", "userAgent": "t"},
            "requestId": "req-2", "routeKey": "$default", "stage": stage,
            "time": "25/Nov/2026:18:00:00 +0000", "timeEpoch": 1_795_000_000_000_i64
        })
    };
    for (stage, domain) in [
        ("live", "abc.execute-api.eu-west-1.amazonaws.com"),
        ("$default", "abc.lambda-url.eu-west-1.on.aws"),
    ] {
        let event = json!({
            "version": "2.0", "routeKey": "$default", "rawPath": "/v1/predict", "rawQueryString": "",
            "headers": {"content-type": "image/png"},
            "requestContext": context(stage, domain),
            "body": b64(&png), "isBase64Encoded": true
        });
        let (status, reply) = send(&event).await?;
        assert_eq!(status, 200, "{stage}: {reply}");
        assert_eq!(reply["predictions"][0]["label"], "blue", "{stage}");
    }
    Ok(())
}
