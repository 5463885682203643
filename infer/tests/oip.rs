//! The Open Inference Protocol in-process, byte for byte as its clients send it: the binary
//! tensor data extension in both directions, `BYTES` inputs of encoded images, the
//! classification extension, versioned routes and the protocol's error shape. The official
//! client against a real server is `oip_client.rs`.

mod common;

use anyhow::{Context, Result, ensure};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::router::{app, b64, call, call_raw, get};
use common::{expected_logits, expected_probabilities, solid, tiny_logits};
use image::ImageFormat;
use serde_json::{Value, json};

/// A request in the binary extension's form: the JSON, then the tensor bytes.
fn binary_request(uri: &str, header: &Value, data: &[u8]) -> Result<Request<Body>> {
    let json = header.to_string();
    let mut body = json.clone().into_bytes();
    body.extend_from_slice(data);
    Ok(Request::post(uri)
        .header("content-type", "application/octet-stream")
        .header("inference-header-content-length", json.len())
        .body(Body::from(body))?)
}

/// The JSON part and the binary part of a reply.
fn split_reply(headers: &axum::http::HeaderMap, body: &[u8]) -> Result<(Value, Vec<u8>)> {
    let len: usize = headers
        .get("inference-header-content-length")
        .context("no Inference-Header-Content-Length on a binary reply")?
        .to_str()?
        .parse()?;
    ensure!(len <= body.len(), "header length {len} over the body's {}", body.len());
    Ok((serde_json::from_slice(&body[..len])?, body[len..].to_vec()))
}

fn solid_tensor(rgb: [f32; 3]) -> Vec<f32> {
    rgb.iter().flat_map(|&c| std::iter::repeat_n(c, 32 * 32)).collect()
}

fn le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn from_le(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[tokio::test]
async fn binary_tensors_in_and_out_match_json() -> Result<()> {
    let app = app()?;
    // Normalised units: red is (2, -2, -2); the logits are the tiny model's (`tiny_logits`).
    let mut data = solid_tensor([2.0, -2.0, -2.0]);
    data.extend(solid_tensor([-1.0, 0.5, -2.0]));
    let want = [tiny_logits([2.0, -2.0, -2.0]), tiny_logits([-1.0, 0.5, -2.0])].concat();
    let close = |got: &[f32]| got.len() == want.len() && got.iter().zip(&want).all(|(g, w)| (g - w).abs() < 1e-5);
    let header = json!({
        "id": "bin-1",
        "inputs": [{"name": "input", "shape": [2, 3, 32, 32], "datatype": "FP32",
                    "parameters": {"binary_data_size": data.len() * 4}}],
        "parameters": {"binary_data_output": true},
    });
    let (status, headers, body) = call_raw(
        &app,
        binary_request("/v2/models/tiny/infer", &header, &le_bytes(&data))?,
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/octet-stream")
    );
    let (reply, binary) = split_reply(&headers, &body)?;
    assert_eq!(reply["id"], "bin-1");
    let output = &reply["outputs"][0];
    assert_eq!(output["name"], "logits");
    assert_eq!(output["shape"], json!([2, 3]));
    assert_eq!(output["parameters"]["binary_data_size"], json!(binary.len()));
    assert!(output.get("data").is_none(), "{reply}");
    let got = from_le(&binary);
    assert!(close(&got), "{got:?} vs {want:?}");

    // The same tensor as JSON, asking for a JSON output by name: the same numbers.
    let request = json!({
        "inputs": [{"name": "input", "shape": [2, 3, 32, 32], "datatype": "FP32", "data": data}],
        "outputs": [{"name": "logits", "parameters": {"binary_data": false}}],
    });
    let (status, reply) = call(
        &app,
        common::router::post("/v2/models/tiny/infer", "application/json", request.to_string())?,
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let got: Vec<f32> = serde_json::from_value(reply["outputs"][0]["data"].clone())?;
    assert!(close(&got), "{got:?} vs {want:?}");
    // JSON and binary outputs carry the same numbers, bit for bit.
    assert_eq!(got, from_le(&binary));
    Ok(())
}

#[tokio::test]
async fn bytes_inputs_carry_encoded_images_and_classification_names_classes() -> Result<()> {
    let app = app()?;
    let colours = [[240u8, 20, 20], [20, 20, 240]];
    let images: Vec<Vec<u8>> = vec![
        solid(colours[0], 64, 48, ImageFormat::Jpeg),
        solid(colours[1], 20, 20, ImageFormat::Png),
    ];
    let mut raw = Vec::new();
    for image in &images {
        raw.extend((image.len() as u32).to_le_bytes());
        raw.extend(image);
    }
    let header = json!({
        "inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": raw.len()}}],
        "outputs": [{"name": "logits", "parameters": {"binary_data": false, "classification": 2}}],
    });
    let (status, headers, body) = call_raw(&app, binary_request("/v2/models/tiny/infer", &header, &raw)?).await?;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert!(headers.get("inference-header-content-length").is_none());
    let reply: Value = serde_json::from_slice(&body)?;
    let output = &reply["outputs"][0];
    assert_eq!(
        (output["datatype"].as_str(), &output["shape"]),
        (Some("BYTES"), &json!([2, 2]))
    );
    let strings: Vec<&str> = output["data"]
        .as_array()
        .context("data")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    // "<logit>:<index>:<label>", best first; the logit is the tiny model's (`expected_logits`).
    let parse = |s: &str| -> Result<(f32, usize, String)> {
        let mut parts = s.splitn(3, ':');
        Ok((
            parts.next().context("value")?.parse()?,
            parts.next().context("index")?.parse()?,
            parts.next().context("label")?.to_owned(),
        ))
    };
    let (logit, index, label) = parse(strings[0])?;
    assert_eq!((index, label.as_str()), (0, "red"), "{strings:?}");
    let expected = expected_probabilities(colours[0]);
    assert!(
        expected[0] > expected[1] && (logit - expected_logits(colours[0])[0]).abs() < 0.1,
        "{logit}"
    );
    assert_eq!(parse(strings[2])?.2, "blue", "{strings:?}");

    // BYTES in JSON are base64 strings; the classes match.
    let request = json!({
        "inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES", "data": [b64(&images[1])]}],
        "outputs": [{"name": "logits", "parameters": {"classification": 1}}],
    });
    let (status, reply) = call(
        &app,
        common::router::post("/v2/models/tiny/infer", "application/json", request.to_string())?,
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let top = reply["outputs"][0]["data"][0].as_str().context("class string")?;
    assert!(top.ends_with(":2:blue"), "{top}");
    Ok(())
}

#[tokio::test]
async fn versioned_routes_answer_the_one_version_and_refuse_others() -> Result<()> {
    let app = app()?;
    let (_, meta) = call(&app, get("/v2/models/tiny")?).await?;
    let version = meta["versions"][0].as_str().context("version")?.to_owned();
    // The metadata lists what a request must carry: one input. A client that builds its request
    // from it (every listed input, -1 as 1) is answered.
    let inputs = meta["inputs"].as_array().context("inputs")?;
    assert_eq!(inputs.len(), 1, "{meta}");
    let built: Vec<Value> = inputs
        .iter()
        .map(|t| {
            let shape: Vec<i64> = t["shape"]
                .as_array()
                .map(|d| d.iter().map(|v| v.as_i64().unwrap_or(0).max(1)).collect())
                .unwrap_or_default();
            let len = shape.iter().product::<i64>() as usize;
            json!({"name": t["name"], "datatype": t["datatype"], "shape": shape, "data": vec![0.0f32; len]})
        })
        .collect();
    let (status, reply) = call(
        &app,
        common::router::post(
            "/v2/models/tiny/infer",
            "application/json",
            json!({"inputs": built}).to_string(),
        )?,
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{reply}");
    for uri in [
        format!("/v2/models/tiny/versions/{version}"),
        format!("/v2/models/tiny/versions/{version}/ready"),
    ] {
        let (status, reply) = call(&app, get(&uri)?).await?;
        assert_eq!(status, StatusCode::OK, "{uri}: {reply}");
    }
    let request = json!({"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32",
                                     "data": solid_tensor([-2.0, 2.0, -2.0])}]});
    let (status, reply) = call(
        &app,
        common::router::post(
            &format!("/v2/models/tiny/versions/{version}/infer"),
            "application/json",
            request.to_string(),
        )?,
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["model_version"], version.as_str());
    let (status, reply) = call(
        &app,
        common::router::post(
            "/v2/models/tiny/versions/2/infer",
            "application/json",
            request.to_string(),
        )?,
    )
    .await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let message = reply["error"].as_str().context("a V2 error string")?;
    assert!(
        message.contains("no version \"2\"") && message.contains(&version),
        "{message}"
    );
    Ok(())
}

#[tokio::test]
async fn server_metadata_lists_what_is_implemented() -> Result<()> {
    let (status, reply) = call(&app()?, get("/v2")?).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reply["extensions"], json!(infer::api::EXTENSIONS));
    assert_eq!(reply["extensions"], json!(["binary_tensor_data", "classification"]));
    Ok(())
}

#[tokio::test]
async fn malformed_binary_requests_are_v2_errors_naming_the_fault() -> Result<()> {
    let app = app()?;
    let data = le_bytes(&solid_tensor([0.0, 0.0, 0.0]));
    let header = |size: usize| {
        json!({"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32",
                           "parameters": {"binary_data_size": size}}]})
    };
    let uri = "/v2/models/tiny/infer";
    let cases = vec![
        (
            "size_mismatch",
            binary_request(uri, &header(data.len() + 4), &data)?,
            "binary_data_size",
        ),
        (
            "short_tensor",
            binary_request(uri, &header(8), &data[..8])?,
            "needs 12288",
        ),
        (
            "header_over_body",
            Request::post(uri)
                .header("inference-header-content-length", "999999")
                .body(Body::from(header(0).to_string()))?,
            "Inference-Header-Content-Length",
        ),
        (
            "gzip",
            Request::post(uri)
                .header("content-encoding", "gzip")
                .body(Body::from(header(0).to_string()))?,
            "Content-Encoding",
        ),
        (
            "bytes_cut",
            binary_request(
                uri,
                &json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                    "parameters": {"binary_data_size": 6}}]}),
                &[200, 0, 0, 0, 1, 2],
            )?,
            "BYTES element 0",
        ),
        (
            "unknown_output",
            common::router::post(
                uri,
                "application/json",
                json!({"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32",
                                   "data": solid_tensor([0.0, 0.0, 0.0])}],
                       "outputs": [{"name": "probs"}]})
                .to_string(),
            )?,
            "unknown output",
        ),
    ];
    for (name, request, needle) in cases {
        let (status, reply) = call(&app, request).await?;
        assert!(status.is_client_error(), "{name}: {status} {reply}");
        let message = reply["error"].as_str().with_context(|| format!("{name}: {reply}"))?;
        assert!(message.contains(needle), "{name}: {message}");
    }
    Ok(())
}
