//! The router in-process (`tower::ServiceExt::oneshot`) over a real ONNX Runtime session of a
//! tiny colour classifier: every input form, every error class, a batch, top_k edges, the V2
//! protocol, health, metrics and OpenAPI. Replies are insta JSON snapshots, timings redacted.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::router::{app, app_with, b64, call, get, multipart, post};
use common::{expected_probabilities, solid, tiny_logits};
use image::ImageFormat;
use infer::api::Limits;
use infer::batch::BatchConfig;
use infer::preprocess::DecodeLimits;
use serde_json::{Value, json};
use tower::ServiceExt;

/// Wording that comes from a dependency (base64, serde_json, the image decoders, axum's
/// multipart parser), after our own text that names the field or the step at fault: snapshots
/// keep the error code and our text, and redact theirs, so a dependency's update does not
/// change what these tests assert.
const THIRD_PARTY_WORDING: [(&str, &str); 6] = [
    (r#"(is not valid base64: )[^"]*"#, "${1}[base64's message]"),
    (r#"(the JSON body is invalid: )[^"]*"#, "${1}[serde_json's message]"),
    (
        r#"(the inference request is invalid: )[^"]*"#,
        "${1}[serde_json's message]",
    ),
    (
        r#"(the image could not be decoded: )[^"]*"#,
        "${1}[the decoder's message]",
    ),
    (
        r#"(the image is too large: )[^"(]*"#,
        "${1}[the image crate's message] ",
    ),
    (
        r#"("code": "bad_multipart",\s*"message": )"[^"]*""#,
        "${1}\"[axum's multipart message]\"",
    ),
];

macro_rules! snapshot {
    ($name:expr, $value:expr) => {
        insta::with_settings!({ filters => THIRD_PARTY_WORDING.to_vec() }, {
        insta::assert_json_snapshot!($name, $value, {
            ".timing.preprocess_ms" => "[ms]",
            ".timing.inference_ms" => "[ms]",
            ".timing.total_ms" => "[ms]",
            ".predictions[].probability" => insta::rounded_redaction(5),
            ".predictions[].top_k[].probability" => insta::rounded_redaction(5),
            ".model.version" => "[version]",
            ".version" => "[version]",
            ".model_version" => "[version]",
            ".sha256" => "[sha256]",
            ".versions[]" => "[version]",
            ".info.version" => "[crate version]"
        })
        })
    };
}

fn label(reply: &Value, i: usize) -> &str {
    reply["predictions"][i]["label"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn raw_body_is_classified_by_content_whatever_the_content_type_says() -> Result<()> {
    let app = app()?;
    let png = solid([250, 10, 10], 32, 32, ImageFormat::Png);
    let (status, reply) = call(&app, post("/v1/predict", "image/png", png.clone())?).await?;
    assert_eq!(status, StatusCode::OK);
    snapshot!("predict_raw_png", &reply);

    // A JPEG labelled image/png, a WebP as octet-stream, on the student's path.
    let jpeg = solid([10, 240, 10], 64, 48, ImageFormat::Jpeg);
    let (status, reply) = call(&app, post("/predict", "image/png", jpeg)?).await?;
    assert_eq!((status, label(&reply, 0)), (StatusCode::OK, "green"));
    let webp = solid([5, 5, 250], 20, 20, ImageFormat::WebP);
    let (status, reply) = call(&app, post("/v1/predict", "application/octet-stream", webp)?).await?;
    assert_eq!((status, label(&reply, 0)), (StatusCode::OK, "blue"));
    Ok(())
}

#[tokio::test]
async fn probabilities_match_an_independent_computation() -> Result<()> {
    let app = app()?;
    let colour = [180, 140, 60];
    let png = solid(colour, 32, 32, ImageFormat::Png);
    let (status, reply) = call(&app, post("/v1/predict?top_k=3", "image/png", png)?).await?;
    assert_eq!(status, StatusCode::OK);
    assert_probabilities(&reply["predictions"][0], colour)?;
    Ok(())
}

/// A prediction's `top_k` (every class) against the softmax this test computes from the tiny
/// model's weights, best first; probabilities pinned at 0 or 1 would not tell a wrong softmax.
fn assert_probabilities(prediction: &Value, colour: [u8; 3]) -> Result<()> {
    let expected = expected_probabilities(colour);
    assert!(
        expected.iter().all(|p| (0.02..0.98).contains(p)),
        "the tiny model saturates for {colour:?}: {expected:?}"
    );
    let top = prediction["top_k"].as_array().context("top_k list")?;
    assert_eq!(top.len(), 3, "{prediction}");
    let mut last = f64::INFINITY;
    for entry in top {
        let id = entry["class_id"].as_u64().context("class_id")? as usize;
        let p = entry["probability"].as_f64().context("probability")?;
        assert!(
            (p - f64::from(expected[id])).abs() < 1e-4,
            "{colour:?} class {id}: {p} vs {}",
            expected[id]
        );
        assert!(p <= last, "not sorted");
        last = p;
    }
    assert_eq!(prediction["probability"], top[0]["probability"], "{prediction}");
    Ok(())
}

#[tokio::test]
async fn multipart_json_and_batch_forms() -> Result<()> {
    let app = app()?;
    let (content_type, body) = multipart("file", &solid([240, 20, 20], 32, 32, ImageFormat::Bmp));
    let (status, reply) = call(&app, post("/predict", &content_type, body)?).await?;
    assert_eq!(status, StatusCode::OK);
    snapshot!("predict_multipart_bmp", &reply);

    let gif = solid([20, 20, 240], 32, 32, ImageFormat::Gif);
    let request = json!({"image": b64(&gif)}).to_string();
    let (status, reply) = call(&app, post("/v1/predict?top_k=1", "application/json", request)?).await?;
    assert_eq!(status, StatusCode::OK);
    snapshot!("predict_json_gif_top1", &reply);

    let colours = [[250, 0, 0], [0, 250, 0], [0, 0, 250]];
    let images: Vec<String> = colours
        .into_iter()
        .map(|c| b64(&solid(c, 40, 30, ImageFormat::Png)))
        .collect();
    let request = json!({ "images": images.clone() }).to_string();
    let (status, reply) = call(&app, post("/v1/predict?top_k=2", "application/json", request)?).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        [label(&reply, 0), label(&reply, 1), label(&reply, 2)],
        ["red", "green", "blue"]
    );
    snapshot!("predict_json_batch", &reply);
    // Each image of a batch gets its own probabilities, not its neighbour's.
    let request = json!({ "images": images }).to_string();
    let (_, reply) = call(&app, post("/v1/predict?top_k=3", "application/json", request)?).await?;
    for (i, colour) in colours.into_iter().enumerate() {
        assert_probabilities(&reply["predictions"][i], colour)?;
    }
    Ok(())
}

#[tokio::test]
async fn top_k_edges() -> Result<()> {
    let app = app()?;
    let png = solid([200, 100, 50], 32, 32, ImageFormat::Png);
    let (status, reply) = call(&app, post("/v1/predict?top_k=1000", "image/png", png.clone())?).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reply["predictions"][0]["top_k"].as_array().map(Vec::len), Some(3));
    for (query, code) in [
        ("top_k=0", "invalid_parameter"),
        ("top_k=-2", "invalid_parameter"),
        ("top_k=two", "invalid_parameter"),
    ] {
        let (status, reply) = call(&app, post(&format!("/v1/predict?{query}"), "image/png", png.clone())?).await?;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}");
        assert_eq!(reply["error"]["code"], code, "{query}");
    }
    let (_, reply) = call(&app, post("/v1/predict?top_k=0", "image/png", png)?).await?;
    snapshot!("error_top_k_zero", &reply);
    Ok(())
}

#[tokio::test]
async fn every_client_error_has_its_status_and_code() -> Result<()> {
    let app = app()?;
    let png = solid([1, 2, 3], 32, 32, ImageFormat::Png);
    let cases: Vec<(&str, Request<Body>, StatusCode)> = vec![
        (
            "not_an_image",
            post("/v1/predict", "image/jpeg", "hello, world")?,
            StatusCode::BAD_REQUEST,
        ),
        (
            "empty_body",
            post("/v1/predict", "image/png", "")?,
            StatusCode::BAD_REQUEST,
        ),
        (
            "truncated_png",
            post("/v1/predict", "image/png", png[..png.len() / 2].to_vec())?,
            StatusCode::BAD_REQUEST,
        ),
        (
            "bad_json",
            post("/v1/predict", "application/json", "{\"image\": ")?,
            StatusCode::BAD_REQUEST,
        ),
        (
            "bad_base64",
            post("/v1/predict", "application/json", r#"{"image": "!!!"}"#)?,
            StatusCode::BAD_REQUEST,
        ),
        (
            "json_unknown_field",
            post("/v1/predict", "application/json", r#"{"img": "aGk="}"#)?,
            StatusCode::BAD_REQUEST,
        ),
        (
            "json_neither",
            post("/v1/predict", "application/json", "{}")?,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "json_empty_batch",
            post("/v1/predict", "application/json", r#"{"images": []}"#)?,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "too_many_images",
            post(
                "/v1/predict",
                "application/json",
                json!({"images": vec![b64(&png); 5]}).to_string(),
            )?,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "text_plain",
            post("/v1/predict", "text/plain", png.clone())?,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "form_urlencoded",
            post("/v1/predict", "application/x-www-form-urlencoded", png.clone())?,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "no_content_type",
            Request::post("/v1/predict").body(Body::from(png.clone()))?,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "tiff",
            post("/v1/predict", "image/tiff", b"II*\0\x08\0\0\0\0\0".to_vec())?,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "multipart_no_file",
            {
                let (ct, body) = multipart("picture", &png);
                post("/v1/predict", &ct, body)?
            },
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "multipart_no_boundary",
            post("/v1/predict", "multipart/form-data", "x")?,
            StatusCode::BAD_REQUEST,
        ),
        ("unknown_route", get("/v1/nothing")?, StatusCode::NOT_FOUND),
        ("wrong_method", get("/v1/predict")?, StatusCode::METHOD_NOT_ALLOWED),
    ];
    for (name, request, want) in cases {
        let (status, reply) = call(&app, request).await?;
        assert_eq!(status, want, "{name}: {reply}");
        assert!(
            reply["error"]["code"].is_string() && reply["error"]["message"].is_string(),
            "{name}: {reply}"
        );
        snapshot!(format!("error_{name}"), &reply);
    }
    // With the dependencies' wording redacted from the snapshots, what is at fault is still named.
    for (body, field) in [(r#"{"img": "aGk="}"#, "`img`"), (r#"{"image": "!!!"}"#, "`image`")] {
        let (_, reply) = call(&app, post("/v1/predict", "application/json", body)?).await?;
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(field), "{field} not named: {reply}");
    }
    Ok(())
}

#[tokio::test]
async fn body_and_pixel_limits_give_413() -> Result<()> {
    let app = app_with(
        Limits {
            max_body: 4096,
            max_images: 4,
            decode: DecodeLimits {
                max_width: 64,
                max_height: 64,
                ..DecodeLimits::default()
            },
            ..Limits::default()
        },
        BatchConfig::default(),
    )?;
    // Noise does not compress: a 64x64 PNG of it is over 4 KiB.
    let noisy = image::RgbImage::from_fn(64, 64, |x, y| {
        image::Rgb([(x * 37 + y * 91) as u8, (x * y) as u8, (x ^ y) as u8])
    });
    let mut big = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(noisy).write_to(&mut big, ImageFormat::Png)?;
    let big = big.into_inner();
    assert!(big.len() > 4096);
    for request in [
        post("/v1/predict", "image/png", big.clone())?,
        post(
            "/v1/predict",
            "application/json",
            json!({"image": b64(&big)}).to_string(),
        )?,
        {
            let (ct, body) = multipart("file", &big);
            post("/v1/predict", &ct, body)?
        },
    ] {
        let (status, reply) = call(&app, request).await?;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{reply}");
        assert_eq!(reply["error"]["code"], "payload_too_large");
    }
    let (_, reply) = call(&app, post("/v1/predict", "image/png", big)?).await?;
    snapshot!("error_body_too_large", &reply);

    // Small file, too many pixels: a 65x1 solid PNG compresses to a few bytes.
    let wide = solid([9, 9, 9], 65, 1, ImageFormat::Png);
    let (status, reply) = call(&app, post("/v1/predict", "image/png", wide)?).await?;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{reply}");
    snapshot!("error_too_many_pixels", &reply);
    Ok(())
}

#[tokio::test]
async fn kserve_v2_protocol() -> Result<()> {
    let app = app()?;
    for uri in [
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/tiny",
        "/v2/models/tiny/ready",
    ] {
        let (status, reply) = call(&app, get(uri)?).await?;
        assert_eq!(status, StatusCode::OK, "{uri}");
        snapshot!(format!("v2_{}", uri.trim_start_matches('/').replace('/', "_")), &reply);
    }
    // Two 32x32 images, solid red and solid blue in normalised units: the tiny model's logits.
    let plane = 32 * 32;
    let mut data = Vec::new();
    for rgb in [[2.0f32, -2.0, -2.0], [-2.0, -2.0, 1.0]] {
        for c in rgb {
            data.extend(std::iter::repeat_n(c, plane));
        }
    }
    let request = json!({"id": "req-1", "inputs": [{"name": "input", "shape": [2, 3, 32, 32], "datatype": "FP32", "data": data}]});
    let (status, reply) = call(
        &app,
        post("/v2/models/tiny/infer", "application/json", request.to_string())?,
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let want = [tiny_logits([2.0, -2.0, -2.0]), tiny_logits([-2.0, -2.0, 1.0])].concat();
    let got: Vec<f32> = serde_json::from_value(reply["outputs"][0]["data"].clone())?;
    assert!(
        got.len() == 6 && got.iter().zip(&want).all(|(g, w)| (g - w).abs() < 1e-5),
        "{got:?} vs {want:?}"
    );
    snapshot!("v2_infer", &reply);

    let bad = |tensor: Value| {
        post(
            "/v2/models/tiny/infer",
            "application/json",
            json!({"inputs": [tensor]}).to_string(),
        )
    };
    let cases = vec![
        (
            "unknown_model",
            post("/v2/models/other/infer", "application/json", request.to_string())?,
            StatusCode::NOT_FOUND,
        ),
        ("unknown_model_meta", get("/v2/models/other")?, StatusCode::NOT_FOUND),
        (
            "wrong_shape",
            bad(json!({"name": "input", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": [0.0]}))?,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "wrong_count",
            bad(json!({"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [0.0, 1.0]}))?,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "wrong_type",
            bad(json!({"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP16", "data": []}))?,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "wrong_name",
            bad(json!({"name": "x", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": []}))?,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "strings",
            bad(json!({"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": ["a"]}))?,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "not_json",
            post("/v2/models/tiny/infer", "application/json", "nope")?,
            StatusCode::BAD_REQUEST,
        ),
        (
            "infer_get",
            get("/v2/models/tiny/infer")?,
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        ("unknown_v2_route", get("/v2/repository/index")?, StatusCode::NOT_FOUND),
        (
            "unknown_version",
            get("/v2/models/tiny/versions/7")?,
            StatusCode::NOT_FOUND,
        ),
    ];
    for (name, request, want) in cases {
        let (status, reply) = call(&app, request).await?;
        assert_eq!(status, want, "{name}: {reply}");
        // The protocol's own shape, which its clients parse: a string, not an object.
        assert!(reply["error"].is_string(), "{name}: {reply}");
        snapshot!(format!("v2_error_{name}"), &reply);
    }
    Ok(())
}

#[tokio::test]
async fn health_model_metrics_and_openapi() -> Result<()> {
    let app = app()?;
    for uri in ["/healthz", "/readyz"] {
        let (status, reply) = call(&app, get(uri)?).await?;
        assert_eq!(status, StatusCode::OK);
        snapshot!(format!("health_{}", uri.trim_start_matches('/')), &reply);
    }
    let (status, reply) = call(&app, get("/v1/model")?).await?;
    assert_eq!(status, StatusCode::OK);
    // Where the file lives is none of the client's business.
    assert!(reply.get("source").is_none(), "{reply}");
    assert!(!reply.to_string().contains("tiny.onnx"), "{reply}");
    snapshot!("model_info", &reply);

    // The router's table and the document list the same routes, and each one answers (neither
    // 404 nor 405).
    let (status, doc) = call(&app, get("/openapi.json")?).await?;
    assert_eq!(status, StatusCode::OK);
    let routed: BTreeSet<(String, String)> = infer::api::routes()
        .iter()
        .map(|r| (r.verb.as_str().to_owned(), r.path.to_owned()))
        .collect();
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().context("paths")? {
        for method in item.as_object().context("path item")?.keys() {
            documented.insert((method.clone(), path.clone()));
        }
    }
    assert_eq!(
        routed.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "routed but not documented"
    );
    assert_eq!(
        documented.difference(&routed).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "documented but not routed"
    );
    let version = doc["paths"]["/v2/models/{name}/versions/{version}"]["get"]["parameters"][1]["example"]
        .as_str()
        .context("the version example")?
        .to_owned();
    // The whole document, so that any change to it is seen, and accepted, in review.
    let redacted = doc.to_string().replace(&format!("\"{version}\""), "\"[version]\"");
    let redacted: Value = serde_json::from_str(&redacted)?;
    snapshot!("openapi", &redacted);
    for (method, path) in &routed {
        let uri = path.replace("{name}", "tiny").replace("{version}", &version);
        let request = Request::builder()
            .method(method.to_uppercase().as_str())
            .uri(&uri)
            .body(Body::empty())?;
        let (status, _) = call(&app, request).await?;
        assert!(
            status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED,
            "{method} {uri}: {status}"
        );
    }

    let png = solid([250, 10, 10], 32, 32, ImageFormat::Png);
    call(&app, post("/v1/predict", "image/png", png)?).await?;
    call(&app, get("/nowhere")?).await?;
    let response = app.clone().oneshot(get("/metrics")?).await?;
    assert!(response.headers().get("x-request-id").is_some());
    let text = String::from_utf8(axum::body::to_bytes(response.into_body(), usize::MAX).await?.to_vec())?;
    assert!(
        text.contains(r#"infer_http_requests_total{method="POST",route="/v1/predict",status="200"}"#),
        "{text}"
    );
    assert!(text.contains(r#"route="unmatched",status="404"} 1"#), "{text}");
    assert!(
        text.contains("infer_http_request_duration_seconds_bucket{route=\"/v1/predict\",le=\"+Inf\"}"),
        "{text}"
    );
    assert!(text.contains("infer_batch_size_count"), "{text}");
    Ok(())
}

/// A schema, or the component schema its `$ref` names.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
    {
        Some(name) => &doc["components"]["schemas"][name],
        None => schema,
    }
}

/// The fields of `value`, as paths from `at`, that `schema` does not describe.
fn undocumented(doc: &Value, schema: &Value, value: &Value, at: &str) -> Vec<String> {
    let schema = resolve(doc, schema);
    if let Some(alternatives) = schema
        .get("oneOf")
        .or_else(|| schema.get("anyOf"))
        .and_then(Value::as_array)
    {
        // The value is one of them: the one that describes most of it.
        return alternatives
            .iter()
            .map(|alternative| undocumented(doc, alternative, value, at))
            .min_by_key(Vec::len)
            .unwrap_or_default();
    }
    match value {
        Value::Object(fields) => match schema.get("properties").and_then(Value::as_object) {
            Some(properties) => fields
                .iter()
                .flat_map(|(key, field)| match properties.get(key) {
                    Some(property) => undocumented(doc, property, field, &format!("{at}.{key}")),
                    None => vec![format!("{at}.{key}")],
                })
                .collect(),
            // A free-form object describes whatever it holds.
            None if schema["type"] == "object"
                || schema["type"].as_array().is_some_and(|t| t.contains(&json!("object"))) =>
            {
                Vec::new()
            }
            None => fields.keys().map(|key| format!("{at}.{key}")).collect(),
        },
        Value::Array(items) => items
            .iter()
            .enumerate()
            .flat_map(|(i, item)| undocumented(doc, &schema["items"], item, &format!("{at}[{i}]")))
            .collect(),
        _ => Vec::new(),
    }
}

/// Every reply's status is listed for its route, and every field of a JSON reply is in the
/// schema listed for that status: a field added to a reply, or a status a route starts to
/// answer, cannot go undocumented.
#[tokio::test]
async fn the_openapi_document_describes_every_reply() -> Result<()> {
    let app = app()?;
    let (_, doc) = call(&app, get("/openapi.json")?).await?;
    let (_, model) = call(&app, get("/v1/model")?).await?;
    let version = model["version"].as_str().context("the model's version")?.to_owned();
    let png = solid([250, 10, 10], 32, 32, ImageFormat::Png);
    let with_method = |method: &str, uri: &str| Request::builder().method(method).uri(uri).body(Body::empty());
    let classes = json!({"id": "r", "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64(&png)]}],
                         "outputs": [{"name": "logits", "parameters": {"classification": 2}}]});
    let logits = json!({"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32",
                                    "data": vec![0.0f32; 3 * 32 * 32]}]});
    let versioned = format!("/v2/models/tiny/versions/{version}");
    // (the documented operation, a request to it, the status it is answered with)
    let cases = vec![
        (
            "post",
            "/v1/predict",
            post("/v1/predict?top_k=2&input_image=true", "image/png", png.clone())?,
            200,
        ),
        (
            "post",
            "/v1/predict",
            post(
                "/v1/predict",
                "application/json",
                json!({"images": [b64(&png), b64(&png)]}).to_string(),
            )?,
            200,
        ),
        (
            "post",
            "/predict",
            post("/predict?input_image=1", "image/png", png.clone())?,
            200,
        ),
        ("post", "/predict", post("/predict", "text/plain", "x")?, 415),
        (
            "post",
            "/v1/predict",
            post("/v1/predict?top_k=0", "image/png", png.clone())?,
            422,
        ),
        (
            "post",
            "/v1/predict",
            post("/v1/predict", "image/png", "not a png")?,
            400,
        ),
        ("post", "/v1/predict", get("/v1/predict")?, 405),
        ("get", "/", get("/")?, 200),
        ("get", "/healthz", get("/healthz")?, 200),
        ("get", "/healthz", with_method("DELETE", "/healthz")?, 405),
        ("get", "/readyz", get("/readyz")?, 200),
        ("get", "/v1/model", get("/v1/model")?, 200),
        ("get", "/metrics", get("/metrics")?, 200),
        ("get", "/openapi.json", get("/openapi.json")?, 200),
        ("get", "/v2", get("/v2")?, 200),
        ("get", "/v2/health/live", get("/v2/health/live")?, 200),
        ("get", "/v2/health/ready", get("/v2/health/ready")?, 200),
        ("get", "/v2/models/{name}", get("/v2/models/tiny")?, 200),
        ("get", "/v2/models/{name}", get("/v2/models/other")?, 404),
        ("get", "/v2/models/{name}/ready", get("/v2/models/tiny/ready")?, 200),
        ("get", "/v2/models/{name}/versions/{version}", get(&versioned)?, 200),
        (
            "get",
            "/v2/models/{name}/versions/{version}",
            get("/v2/models/tiny/versions/7")?,
            404,
        ),
        (
            "get",
            "/v2/models/{name}/versions/{version}/ready",
            get(&format!("{versioned}/ready"))?,
            200,
        ),
        (
            "post",
            "/v2/models/{name}/infer",
            post("/v2/models/tiny/infer", "application/json", classes.to_string())?,
            200,
        ),
        (
            "post",
            "/v2/models/{name}/versions/{version}/infer",
            post(&format!("{versioned}/infer"), "application/json", logits.to_string())?,
            200,
        ),
        (
            "post",
            "/v2/models/{name}/infer",
            post("/v2/models/tiny/infer", "application/json", "nope")?,
            400,
        ),
        ("post", "/v2/models/{name}/infer", get("/v2/models/tiny/infer")?, 405),
    ];
    for (method, path, request, want) in cases {
        let what = format!("{} {}", request.method(), request.uri());
        let (status, reply) = call(&app, request).await?;
        assert_eq!(status.as_u16(), want, "{what}: {reply}");
        let response = &doc["paths"][path][method]["responses"][status.as_str()];
        assert!(
            response.is_object(),
            "{what}: {status} is not documented for {method} {path}"
        );
        let Some(schema) = response["content"].get("application/json").map(|c| &c["schema"]) else {
            assert!(!reply.is_object(), "{what}: a JSON reply documented as another type");
            continue;
        };
        let missing = undocumented(&doc, schema, &reply, "");
        assert!(
            missing.is_empty(),
            "{what}: {missing:?} are not in the schema of {status}"
        );
    }
    // A field the predict replies above carried, named here so that the check above cannot
    // pass by finding no such field to check.
    let prediction = resolve(&doc, &doc["components"]["schemas"]["Prediction"]);
    assert!(prediction["properties"]["input_image"].is_object(), "{prediction}");

    // What the router and its layers answer, on routes not exercised above too.
    for route in infer::api::routes() {
        let responses = &doc["paths"][route.path][route.verb.as_str()]["responses"];
        let mut layers = vec!["405", "503"];
        if route.verb == infer::api::Verb::Post {
            layers.extend(["500", "504"]);
        }
        for status in layers {
            let error = if route.path.starts_with("/v2") {
                "V2ErrorBody"
            } else {
                "ErrorBody"
            };
            assert_eq!(
                responses[status]["content"]["application/json"]["schema"]["$ref"],
                format!("#/components/schemas/{error}"),
                "{status} on {} {}",
                route.verb.as_str(),
                route.path
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn request_id_is_echoed_or_made() -> Result<()> {
    let app = app()?;
    let request = Request::get("/healthz")
        .header("x-request-id", "abc-123")
        .body(Body::empty())?;
    let response = app.clone().oneshot(request).await?;
    assert_eq!(
        response.headers().get("x-request-id").and_then(|v| v.to_str().ok()),
        Some("abc-123")
    );
    let response = app.clone().oneshot(get("/healthz")?).await?;
    assert!(response.headers().get("x-request-id").is_some_and(|v| !v.is_empty()));
    // An id unfit for a log line is replaced, not echoed.
    for unfit in ["x".repeat(129), "has space".to_owned(), String::new()] {
        let request = Request::get("/healthz")
            .header("x-request-id", &unfit)
            .body(Body::empty())?;
        let response = app.clone().oneshot(request).await?;
        let echoed = response.headers().get("x-request-id").and_then(|v| v.to_str().ok());
        assert!(
            echoed.is_some_and(|id| !id.is_empty() && id != unfit),
            "{unfit:?} -> {echoed:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn concurrent_requests_are_batched_and_answered_correctly() -> Result<()> {
    // A long batch window makes concurrent requests share model runs; each must still get its own answer.
    let app = app_with(
        Limits::default(),
        BatchConfig {
            max_batch: 8,
            max_wait: std::time::Duration::from_millis(50),
        },
    )?;
    let colours = [[250, 0, 0], [0, 250, 0], [0, 0, 250]];
    let mut tasks = Vec::new();
    for i in 0..12 {
        let app = app.clone();
        let colour = colours[i % 3];
        tasks.push(tokio::spawn(async move {
            let png = solid(colour, 32, 32, ImageFormat::Png);
            let reply = call(&app, post("/v1/predict", "image/png", png)?).await?;
            Ok::<_, anyhow::Error>((i, reply))
        }));
    }
    for task in tasks {
        let (i, (status, reply)) = task.await??;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(label(&reply, 0), ["red", "green", "blue"][i % 3]);
    }
    let (_, _) = call(&app, get("/healthz")?).await?;
    let response = app.clone().oneshot(get("/metrics")?).await?;
    let text = String::from_utf8(axum::body::to_bytes(response.into_body(), usize::MAX).await?.to_vec())?;
    // 12 images in fewer than 12 runs.
    let runs: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("infer_batch_size_count "))
        .and_then(|v| v.trim().parse().ok())
        .context("batch count")?;
    assert!(runs < 12, "{runs} runs for 12 concurrent requests: no batching\n{text}");
    Ok(())
}

#[tokio::test]
async fn an_internal_error_answers_a_generic_message_and_the_request_id() -> Result<()> {
    // A model run that panics (the test seam, as a bug in the runtime would): an internal error
    // whose cause (the panic, the batch worker) stays in the log.
    let classifier = common::router::classifier()?;
    let app = infer::host::app(Arc::clone(&classifier), BatchConfig::default(), Limits::default());
    classifier.panic_on_next_runs(1);
    let png = solid([250, 10, 10], 32, 32, ImageFormat::Png);
    let request = Request::post("/v1/predict")
        .header("content-type", "image/png")
        .header("x-request-id", "req-500")
        .body(Body::from(png))?;
    let (status, reply) = call(&app, request).await?;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{reply}");
    assert_eq!(reply["error"]["code"], "internal");
    let message = reply["error"]["message"].as_str().context("message")?;
    assert!(message.contains("req-500"), "{message}");
    assert!(
        !message.contains("batch") && !message.contains("panic") && !message.contains("inference failed"),
        "the internal cause leaked: {message}"
    );
    snapshot!("error_internal", &reply);

    // The same on the V2 route, in its shape.
    classifier.panic_on_next_runs(1);
    let plane = vec![0.0f32; 3 * 32 * 32];
    let request = Request::post("/v2/models/tiny/infer")
        .header("content-type", "application/json")
        .header("x-request-id", "req-500-v2")
        .body(Body::from(
            json!({"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": plane}]})
                .to_string(),
        ))?;
    let (status, reply) = call(&app, request).await?;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{reply}");
    let message = reply["error"].as_str().context("a V2 error string")?;
    assert!(
        message.contains("req-500-v2") && !message.contains("batch") && !message.contains("panic"),
        "{message}"
    );
    Ok(())
}

#[tokio::test]
async fn the_page_is_served_at_the_root_with_relative_urls() -> Result<()> {
    let app = app()?;
    let (status, headers, body) = common::router::call_raw(&app, get("/")?).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("text/html; charset=utf-8")
    );
    let html = String::from_utf8(body)?;
    assert!(
        html.contains("v1/predict?top_k=5&input_image=true"),
        "the page calls the API"
    );
    // No absolute API path and nothing from another origin: it must work under a stage prefix.
    for absolute in ["\"/v1/", "'/v1/", "\"/openapi", "http://", "https://", "src=\"/"] {
        assert!(!html.contains(absolute), "{absolute} in the page");
    }
    Ok(())
}

#[tokio::test]
async fn input_image_returns_what_the_model_saw() -> Result<()> {
    let app = app()?;
    // Left half red, right half blue, 64x32: the model's 32x32 view keeps the halves.
    let image = image::RgbImage::from_fn(64, 32, |x, _| {
        if x < 32 {
            image::Rgb([250, 0, 0])
        } else {
            image::Rgb([0, 0, 250])
        }
    });
    let mut png = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(image).write_to(&mut png, ImageFormat::Png)?;
    let (status, reply) = call(
        &app,
        post("/v1/predict?input_image=true", "image/png", png.into_inner())?,
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let url = reply["predictions"][0]["input_image"].as_str().context("input_image")?;
    let b64 = url.strip_prefix("data:image/png;base64,").context("a PNG data URL")?;
    let seen = image::load_from_memory(&base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        b64,
    )?)?
    .into_rgb8();
    assert_eq!(seen.dimensions(), (32, 32));
    assert!(seen.get_pixel(2, 16)[0] > 200 && seen.get_pixel(29, 16)[2] > 200);
    // Without the flag there is none.
    let (_, reply) = call(
        &app,
        post("/v1/predict", "image/png", solid([1, 2, 3], 8, 8, ImageFormat::Png))?,
    )
    .await?;
    assert!(reply["predictions"][0].get("input_image").is_none(), "{reply}");
    let (status, _) = call(&app, post("/v1/predict?input_image=maybe", "image/png", vec![0u8])?).await?;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    Ok(())
}
