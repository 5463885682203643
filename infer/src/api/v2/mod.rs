//! The KServe V2 / Open Inference Protocol as its clients (`tritonclient`, KServe's) use it:
//! server and model metadata and health, unversioned and versioned
//! (`/v2/models/{name}/versions/{version}/...`), and inference with tensors in JSON or in the
//! binary tensor data extension (`Inference-Header-Content-Length`). The model takes either its
//! FP32 NCHW input or a `BYTES` input of encoded images (decoded as `/v1/predict` decodes them);
//! an output may ask for the classification extension's `"<logit>:<index>:<label>"` strings.
//! Every error is the protocol's `{"error": "<message>"}`.

mod tensors;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, RequestId, Shared, V2Error, media_type, preprocess_images, read_body, run_model};
use crate::model::ModelInfo;
use tensors::{InputTensor, Param, Parameters, bytes_elements_binary, bytes_input, fp32_input};

/// The protocol extensions this server implements, as `GET /v2` lists them.
pub const EXTENSIONS: [&str; 2] = ["binary_tensor_data", "classification"];

/// The header that splits a binary-extension body into its JSON part and the tensor bytes.
const HEADER_LENGTH: &str = "inference-header-content-length";

/// The name of the `BYTES` input that carries encoded images: `image`, unless the model's own
/// input already has that name.
pub fn image_input_name(info: &ModelInfo) -> &'static str {
    if info.input_name == "image" {
        "image_bytes"
    } else {
        "image"
    }
}

pub(super) async fn server() -> Json<Value> {
    Json(json!({"name": "infer", "version": env!("CARGO_PKG_VERSION"), "extensions": EXTENSIONS}))
}

pub(super) async fn live() -> Json<Value> {
    Json(json!({"live": true}))
}

/// The protocol answers health with the status: 200 for true, a 4xx for false.
fn health(ready: bool, mut body: Value) -> Response {
    body["ready"] = json!(ready);
    let status = if ready { StatusCode::OK } else { StatusCode::BAD_REQUEST };
    (status, Json(body)).into_response()
}

pub(super) async fn ready(State(state): State<Shared>) -> Response {
    health(state.ready(), json!({}))
}

fn known_model<'a>(state: &'a Shared, name: &str, version: Option<&str>) -> Result<&'a ModelInfo, V2Error> {
    let info = state.info();
    if name != info.name {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!("no model {name:?}; this server serves {:?}", info.name),
        )
        .into());
    }
    match version {
        Some(v) if v != info.version => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "model_version_not_found",
            format!(
                "model {name:?} has no version {v:?}; its one version is {:?}",
                info.version
            ),
        )
        .into()),
        _ => Ok(info),
    }
}

fn metadata(info: &ModelInfo) -> Value {
    json!({
        "name": info.name,
        "versions": [info.version],
        "platform": "onnxruntime_onnx",
        // The one input a request carries. A request may carry encoded images as a `BYTES`
        // input instead (`image_input_name`, documented in the README and the OpenAPI document):
        // listing both here would tell a client that builds its request from this to send both.
        "inputs": [
            {"name": info.input_name, "datatype": "FP32", "shape": [-1, 3, info.input_height, info.input_width]},
        ],
        "outputs": [{"name": info.output_name, "datatype": "FP32", "shape": [-1, info.num_classes()]}],
    })
}

pub(super) async fn model(State(state): State<Shared>, Path(name): Path<String>) -> Result<Json<Value>, V2Error> {
    Ok(Json(metadata(known_model(&state, &name, None)?)))
}

pub(super) async fn model_version(
    State(state): State<Shared>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, V2Error> {
    Ok(Json(metadata(known_model(&state, &name, Some(&version))?)))
}

pub(super) async fn model_ready(State(state): State<Shared>, Path(name): Path<String>) -> Result<Response, V2Error> {
    let info = known_model(&state, &name, None)?;
    Ok(health(state.ready(), json!({"name": info.name})))
}

pub(super) async fn model_version_ready(
    State(state): State<Shared>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, V2Error> {
    let info = known_model(&state, &name, Some(&version))?;
    Ok(health(
        state.ready(),
        json!({"name": info.name, "version": info.version}),
    ))
}

pub(super) async fn infer(
    State(state): State<Shared>,
    id: RequestId,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, V2Error> {
    known_model(&state, &name, None)?;
    Ok(run(&state, &id, req).await?)
}

pub(super) async fn infer_version(
    State(state): State<Shared>,
    id: RequestId,
    Path((name, version)): Path<(String, String)>,
    req: Request,
) -> Result<Response, V2Error> {
    known_model(&state, &name, Some(&version))?;
    Ok(run(&state, &id, req).await?)
}

#[derive(Debug, Deserialize)]
struct InferRequest {
    id: Option<String>,
    #[serde(default)]
    parameters: Parameters,
    inputs: Vec<InputTensor>,
    outputs: Option<Vec<RequestedOutput>>,
}

#[derive(Debug, Deserialize)]
struct RequestedOutput {
    name: String,
    #[serde(default)]
    parameters: Parameters,
}

/// A boolean parameter; `default` when absent.
fn flag(parameters: &Parameters, key: &str, default: bool) -> Result<bool, ApiError> {
    match parameters.get(key) {
        None => Ok(default),
        Some(Param::Bool(b)) => Ok(*b),
        Some(other) => Err(ApiError::unprocessable(format!(
            "parameter {key:?} must be a boolean, got {other}"
        ))),
    }
}

fn unsupported(what: String) -> ApiError {
    ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", what)
}

/// The JSON part and the binary part of the body.
fn split_body(headers: &HeaderMap, body: &Bytes) -> Result<(Bytes, Bytes), ApiError> {
    let Some(raw) = headers.get(HEADER_LENGTH) else {
        return Ok((body.clone(), Bytes::new()));
    };
    let len = raw
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .ok_or_else(|| ApiError::bad_request("bad_header", "Inference-Header-Content-Length is not a byte count"))?;
    if len > body.len() {
        return Err(ApiError::bad_request(
            "bad_header",
            format!(
                "Inference-Header-Content-Length is {len}, but the body has only {} bytes",
                body.len()
            ),
        ));
    }
    Ok((body.slice(..len), body.slice(len..)))
}

async fn run(state: &Shared, id: &RequestId, req: Request) -> Result<Response, ApiError> {
    let info = state.info();
    if let Some(encoding) = req.headers().get(header::CONTENT_ENCODING)
        && !encoding.as_bytes().eq_ignore_ascii_case(b"identity")
    {
        return Err(unsupported(format!(
            "Content-Encoding {:?} is not supported: send the body uncompressed",
            String::from_utf8_lossy(encoding.as_bytes())
        )));
    }
    match media_type(&req).as_deref() {
        None | Some("application/json" | "application/octet-stream") => {}
        Some(other) => {
            return Err(unsupported(format!(
                "Content-Type {other:?} is not accepted: the V2 protocol takes application/json, with binary tensors after it as application/octet-stream"
            )));
        }
    }
    let headers = req.headers().clone();
    let body = read_body(req, state).await?;
    // Parsing a large JSON tensor is CPU work of its own: on a blocking thread, under the
    // decoding limit, so that neither the async workers nor memory see more than a few at once.
    let permit = std::sync::Arc::clone(&state.decoding)
        .acquire_owned()
        .await
        .map_err(|e| ApiError::internal(id, format!("the decoding limit is closed: {e}")))?;
    let parsing = std::sync::Arc::clone(state);
    let (request, input) = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        parse(&parsing, &headers, &body)
    })
    .await
    .map_err(|e| ApiError::internal(id, format!("the parsing task failed: {e}")))??;
    let (input, n) = match input {
        Input::Tensor(input, n) => (input, n),
        Input::Images(images) => {
            let n = images.len();
            (preprocess_images(state, id, images, false).await?.0, n)
        }
    };
    let logits = run_model(state, id, input, n).await?;
    respond(info, &request, &logits)
}

/// What a request's one input tensor holds.
enum Input {
    /// FP32 NCHW floats of this many images.
    Tensor(Vec<f32>, usize),
    /// Encoded images, to be decoded and preprocessed.
    Images(Vec<Bytes>),
}

/// The request and its input from the body (a blocking call: it parses all of the JSON).
fn parse(state: &Shared, headers: &HeaderMap, body: &Bytes) -> Result<(InferRequest, Input), ApiError> {
    let info = state.info();
    let (json_part, binary) = split_body(headers, body)?;
    // No request may carry more numbers than this: keeping more would only waste memory.
    let cap = state.limits.max_images.saturating_mul(info.image_len());
    let mut request: InferRequest = tensors::with_number_cap(cap, || serde_json::from_slice(&json_part))
        .map_err(|e| ApiError::bad_request("bad_json", format!("the inference request is invalid: {e}")))?;
    let image_input = image_input_name(info);
    if request.inputs.len() != 1 {
        return Err(ApiError::unprocessable(format!(
            "expected exactly one input tensor, {:?} (FP32) or {image_input:?} (BYTES), got {}",
            info.input_name,
            request.inputs.len()
        )));
    }
    let tensor = request.inputs.remove(0);
    if tensor.parameters.keys().any(|k| k.starts_with("shared_memory")) {
        return Err(ApiError::unprocessable(
            "shared memory is not supported: send the tensor in JSON or as binary data",
        ));
    }
    let raw = match tensor.parameters.get("binary_data_size") {
        None => {
            if !binary.is_empty() {
                return Err(ApiError::bad_request(
                    "bad_binary",
                    format!(
                        "{} bytes follow the JSON but no input has `binary_data_size`",
                        binary.len()
                    ),
                ));
            }
            None
        }
        Some(size) => {
            let size = size.as_u64().ok_or_else(|| {
                ApiError::unprocessable(format!("`binary_data_size` must be a byte count, got {size}"))
            })?;
            if size != binary.len() as u64 {
                return Err(ApiError::bad_request(
                    "bad_binary",
                    format!(
                        "input {:?} has `binary_data_size` {size}, but {} bytes follow the JSON",
                        tensor.name,
                        binary.len()
                    ),
                ));
            }
            Some(binary)
        }
    };
    let input = if tensor.name == info.input_name {
        let (input, n) = fp32_input(state, info, tensor, raw)?;
        Input::Tensor(input, n)
    } else if tensor.name == image_input {
        Input::Images(bytes_input(state, tensor, raw)?)
    } else {
        return Err(ApiError::unprocessable(format!(
            "unknown input {:?}; the model takes {:?} (FP32 [N, 3, {}, {}]) or {image_input:?} (BYTES [N], encoded images)",
            tensor.name, info.input_name, info.input_height, info.input_width
        )));
    };
    Ok((request, input))
}

/// One output as asked for: in binary or JSON, raw or as classification strings.
struct OutputSpec {
    binary: bool,
    classes: Option<usize>,
}

fn output_specs(info: &ModelInfo, request: &InferRequest) -> Result<Vec<OutputSpec>, ApiError> {
    // The request-wide default, which an output's own `binary_data` overrides.
    let binary_default = flag(&request.parameters, "binary_data_output", false)?;
    let Some(outputs) = request.outputs.as_ref().filter(|o| !o.is_empty()) else {
        return Ok(vec![OutputSpec {
            binary: binary_default,
            classes: None,
        }]);
    };
    outputs
        .iter()
        .map(|output| {
            if output.name != info.output_name {
                return Err(ApiError::unprocessable(format!(
                    "unknown output {:?}; the model's output is {:?}",
                    output.name, info.output_name
                )));
            }
            let classes = match output.parameters.get("classification") {
                None => None,
                Some(k) => match k.as_u64() {
                    Some(0) => None,
                    Some(k) => Some((k as usize).min(info.num_classes())),
                    None => {
                        return Err(ApiError::unprocessable(format!(
                            "`classification` must be a class count, got {k}"
                        )));
                    }
                },
            };
            Ok(OutputSpec {
                binary: flag(&output.parameters, "binary_data", binary_default)?,
                classes,
            })
        })
        .collect()
}

fn respond(info: &ModelInfo, request: &InferRequest, logits: &[Vec<f32>]) -> Result<Response, ApiError> {
    let n = logits.len();
    let mut outputs = Vec::new();
    let mut binary = Vec::new();
    for spec in output_specs(info, request)? {
        let mut tensor = json!({"name": info.output_name});
        let (datatype, shape, json_data, bytes) = match spec.classes {
            None => {
                let flat: Vec<f32> = logits.iter().flatten().copied().collect();
                let bytes: Vec<u8> = flat.iter().flat_map(|v| v.to_le_bytes()).collect();
                ("FP32", json!([n, info.num_classes()]), json!(flat), bytes)
            }
            Some(k) => {
                // The classification extension: "<value>:<index>:<label>", highest value first.
                let strings: Vec<String> = logits
                    .iter()
                    .flat_map(|row| {
                        let mut order: Vec<usize> = (0..row.len()).collect();
                        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
                        order
                            .into_iter()
                            .take(k)
                            .map(|i| {
                                let label = info.class_names.get(i).map_or("", String::as_str);
                                format!("{:.6}:{i}:{label}", row[i])
                            })
                            .collect::<Vec<_>>()
                    })
                    .collect();
                let bytes = bytes_elements_binary(strings.iter().map(String::as_bytes));
                ("BYTES", json!([n, k]), json!(strings), bytes)
            }
        };
        tensor["datatype"] = json!(datatype);
        tensor["shape"] = shape;
        if spec.binary {
            tensor["parameters"] = json!({"binary_data_size": bytes.len()});
            binary.extend(bytes);
        } else {
            tensor["data"] = json_data;
        }
        outputs.push(tensor);
    }
    let mut reply = json!({"model_name": info.name, "model_version": info.version, "outputs": outputs});
    if let Some(id) = &request.id {
        reply["id"] = json!(id);
    }
    if binary.is_empty() {
        return Ok(Json(reply).into_response());
    }
    let mut body = reply.to_string().into_bytes();
    let header_len = body.len();
    body.extend(binary);
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(HEADER_LENGTH, HeaderValue::from(header_len));
    Ok(response)
}
