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
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ApiError, RequestId, Shared, V2Error, V2ErrorBody, media_type, preprocess_images, read_body, run_model};
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

/// A tensor's element type: the model's input and output are `FP32`; encoded images and
/// classification strings are `BYTES`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub(super) enum Datatype {
    #[serde(rename = "FP32")]
    Fp32,
    #[serde(rename = "BYTES")]
    Bytes,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ServerMetadata {
    name: &'static str,
    version: &'static str,
    /// The protocol extensions this server implements.
    extensions: Vec<&'static str>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Live {
    live: bool,
}

/// The server's or a model's readiness.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct V2Readiness {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    ready: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ModelMetadata {
    name: String,
    versions: Vec<String>,
    platform: &'static str,
    inputs: Vec<TensorMetadata>,
    outputs: Vec<TensorMetadata>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct TensorMetadata {
    name: String,
    datatype: Datatype,
    /// -1 where any size is taken (the batch).
    shape: Vec<i64>,
}

/// `{name}` in a model's routes.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct ModelPath {
    /// The served model's name.
    name: String,
}

/// `{name}` and `{version}` in a model version's routes.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct VersionPath {
    /// The served model's name.
    name: String,
    /// Its one version.
    version: String,
}

/// Server metadata
#[utoipa::path(get, path = "/v2", responses(
    (status = 200, description = "The server and the protocol extensions it implements", body = ServerMetadata),
))]
pub(super) async fn server() -> Json<ServerMetadata> {
    Json(ServerMetadata {
        name: "infer",
        version: env!("CARGO_PKG_VERSION"),
        extensions: EXTENSIONS.to_vec(),
    })
}

/// Liveness
#[utoipa::path(get, path = "/v2/health/live", responses(
    (status = 200, description = "The process answers", body = Live),
))]
pub(super) async fn live() -> Json<Live> {
    Json(Live { live: true })
}

/// The protocol answers health with the status: 200 for true, a 4xx for false.
fn health(ready: bool, name: Option<String>, version: Option<String>) -> Response {
    let status = if ready { StatusCode::OK } else { StatusCode::BAD_REQUEST };
    (status, Json(V2Readiness { name, version, ready })).into_response()
}

/// Readiness
#[utoipa::path(get, path = "/v2/health/ready", responses(
    (status = 200, description = "The model can be run", body = V2Readiness),
    (status = 400, description = "The model's batch workers have stopped: `ready` is false", body = V2Readiness),
))]
pub(super) async fn ready(State(state): State<Shared>) -> Response {
    health(state.ready(), None, None)
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

fn metadata(info: &ModelInfo) -> ModelMetadata {
    let (height, width) = (i64::from(info.input_height), i64::from(info.input_width));
    ModelMetadata {
        name: info.name.clone(),
        versions: vec![info.version.clone()],
        platform: "onnxruntime_onnx",
        // The one input a request carries. A request may carry encoded images as a `BYTES`
        // input instead (`image_input_name`, documented in the README and the OpenAPI document):
        // listing both here would tell a client that builds its request from this to send both.
        inputs: vec![TensorMetadata {
            name: info.input_name.clone(),
            datatype: Datatype::Fp32,
            shape: vec![-1, 3, height, width],
        }],
        outputs: vec![TensorMetadata {
            name: info.output_name.clone(),
            datatype: Datatype::Fp32,
            shape: vec![-1, i64::try_from(info.num_classes()).unwrap_or(i64::MAX)],
        }],
    }
}

/// Model metadata
#[utoipa::path(get, path = "/v2/models/{name}", params(ModelPath), responses(
    (status = 200, description = "The model's input and output tensors", body = ModelMetadata),
    (status = 404, description = "No such model", body = V2ErrorBody),
))]
pub(super) async fn model(
    State(state): State<Shared>,
    Path(ModelPath { name }): Path<ModelPath>,
) -> Result<Json<ModelMetadata>, V2Error> {
    Ok(Json(metadata(known_model(&state, &name, None)?)))
}

/// Model metadata of one version
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}", params(VersionPath), responses(
    (status = 200, description = "The model's input and output tensors", body = ModelMetadata),
    (status = 404, description = "No such model or version", body = V2ErrorBody),
))]
pub(super) async fn model_version(
    State(state): State<Shared>,
    Path(VersionPath { name, version }): Path<VersionPath>,
) -> Result<Json<ModelMetadata>, V2Error> {
    Ok(Json(metadata(known_model(&state, &name, Some(&version))?)))
}

/// Model readiness
#[utoipa::path(get, path = "/v2/models/{name}/ready", params(ModelPath), responses(
    (status = 200, description = "The model can be run", body = V2Readiness),
    (status = 400, description = "The model's batch workers have stopped: `ready` is false", body = V2Readiness),
    (status = 404, description = "No such model", body = V2ErrorBody),
))]
pub(super) async fn model_ready(
    State(state): State<Shared>,
    Path(ModelPath { name }): Path<ModelPath>,
) -> Result<Response, V2Error> {
    let info = known_model(&state, &name, None)?;
    Ok(health(state.ready(), Some(info.name.clone()), None))
}

/// Readiness of one model version
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}/ready", params(VersionPath), responses(
    (status = 200, description = "The model can be run", body = V2Readiness),
    (status = 400, description = "The model's batch workers have stopped: `ready` is false", body = V2Readiness),
    (status = 404, description = "No such model or version", body = V2ErrorBody),
))]
pub(super) async fn model_version_ready(
    State(state): State<Shared>,
    Path(VersionPath { name, version }): Path<VersionPath>,
) -> Result<Response, V2Error> {
    let info = known_model(&state, &name, Some(&version))?;
    Ok(health(
        state.ready(),
        Some(info.name.clone()),
        Some(info.version.clone()),
    ))
}

/// Inference
///
/// The model takes one input: its own FP32 NCHW tensor, or a `BYTES` tensor of encoded images
/// (decoded as `/v1/predict` decodes them); the document's description names both for the
/// served model. An output may ask for the classification extension's
/// `"<logit>:<index>:<label>"` strings. With the binary tensor data extension the body is
/// `application/octet-stream`: the JSON request (its length in the
/// `Inference-Header-Content-Length` header), then each binary input's bytes; binary outputs
/// are answered the same way.
#[utoipa::path(post, path = "/v2/models/{name}/infer", params(ModelPath),
    request_body(content((InferRequest = "application/json"), ("application/octet-stream"))),
    responses(
        (status = 200, description = "The outputs", content((InferResponse = "application/json"), ("application/octet-stream")),
            headers(("Inference-Header-Content-Length" = usize, description = "With binary outputs: the length of the JSON before them"))),
        (status = 400, description = "The JSON, a header or the binary part is malformed", body = V2ErrorBody),
        (status = 404, description = "No such model", body = V2ErrorBody),
        (status = 413, description = "The body or an image's pixels are over the limit", body = V2ErrorBody),
        (status = 415, description = "A Content-Type, Content-Encoding or image format that is not accepted", body = V2ErrorBody),
        (status = 422, description = "A tensor that the model cannot take, or an unknown input, output or parameter", body = V2ErrorBody),
    ),
)]
pub(super) async fn infer(
    State(state): State<Shared>,
    id: RequestId,
    Path(ModelPath { name }): Path<ModelPath>,
    req: Request,
) -> Result<Response, V2Error> {
    known_model(&state, &name, None)?;
    Ok(run(&state, &id, req).await?)
}

/// Inference with one model version
///
/// As `/v2/models/{name}/infer`.
#[utoipa::path(post, path = "/v2/models/{name}/versions/{version}/infer", params(VersionPath),
    request_body(content((InferRequest = "application/json"), ("application/octet-stream"))),
    responses(
        (status = 200, description = "The outputs", content((InferResponse = "application/json"), ("application/octet-stream")),
            headers(("Inference-Header-Content-Length" = usize, description = "With binary outputs: the length of the JSON before them"))),
        (status = 400, description = "The JSON, a header or the binary part is malformed", body = V2ErrorBody),
        (status = 404, description = "No such model or version", body = V2ErrorBody),
        (status = 413, description = "The body or an image's pixels are over the limit", body = V2ErrorBody),
        (status = 415, description = "A Content-Type, Content-Encoding or image format that is not accepted", body = V2ErrorBody),
        (status = 422, description = "A tensor that the model cannot take, or an unknown input, output or parameter", body = V2ErrorBody),
    ),
)]
pub(super) async fn infer_version(
    State(state): State<Shared>,
    id: RequestId,
    Path(VersionPath { name, version }): Path<VersionPath>,
    req: Request,
) -> Result<Response, V2Error> {
    known_model(&state, &name, Some(&version))?;
    Ok(run(&state, &id, req).await?)
}

#[derive(Debug, Deserialize, ToSchema)]
struct InferRequest {
    /// Echoed in the response.
    id: Option<String>,
    /// `binary_data_output` (boolean): every output in binary unless the output says otherwise.
    #[serde(default)]
    #[schema(value_type = Object)]
    parameters: Parameters,
    /// Exactly one.
    inputs: Vec<InputTensor>,
    /// The model's one output, as the default answers it when none is asked for.
    outputs: Option<Vec<RequestedOutput>>,
}

#[derive(Debug, Deserialize, ToSchema)]
struct RequestedOutput {
    name: String,
    /// `binary_data` (boolean): this output in binary; `classification` (integer): the top
    /// classes as `"<logit>:<index>:<label>"` strings instead of the logits.
    #[serde(default)]
    #[schema(value_type = Object)]
    parameters: Parameters,
}

#[derive(Debug, Serialize, ToSchema)]
struct InferResponse {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    model_name: String,
    model_version: String,
    outputs: Vec<OutputTensor>,
}

#[derive(Debug, Serialize, ToSchema)]
struct OutputTensor {
    /// Row-major; absent when the output is answered in binary.
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<OutputData>,
    datatype: Datatype,
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinaryData>,
    shape: Vec<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
enum OutputData {
    /// `FP32` logits.
    Numbers(Vec<f64>),
    /// `BYTES` classification strings.
    Strings(Vec<String>),
}

/// Where the output's bytes are in the binary part of the reply.
#[derive(Debug, Serialize, ToSchema)]
struct BinaryData {
    binary_data_size: usize,
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
    respond(id, info, &request, &logits)
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

fn respond(
    id: &RequestId,
    info: &ModelInfo,
    request: &InferRequest,
    logits: &[Vec<f32>],
) -> Result<Response, ApiError> {
    let n = logits.len();
    let mut outputs = Vec::new();
    let mut binary = Vec::new();
    for spec in output_specs(info, request)? {
        let (datatype, shape, data, bytes) = match spec.classes {
            None => {
                let flat: Vec<f32> = logits.iter().flatten().copied().collect();
                let bytes: Vec<u8> = flat.iter().flat_map(|v| v.to_le_bytes()).collect();
                // As f64, each f32's exact value, which is what JSON has always carried.
                let numbers = flat.into_iter().map(f64::from).collect();
                (
                    Datatype::Fp32,
                    vec![n, info.num_classes()],
                    OutputData::Numbers(numbers),
                    bytes,
                )
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
                (Datatype::Bytes, vec![n, k], OutputData::Strings(strings), bytes)
            }
        };
        let (data, parameters) = if spec.binary {
            let size = bytes.len();
            binary.extend(bytes);
            (None, Some(BinaryData { binary_data_size: size }))
        } else {
            (Some(data), None)
        };
        outputs.push(OutputTensor {
            data,
            datatype,
            name: info.output_name.clone(),
            parameters,
            shape,
        });
    }
    let reply = InferResponse {
        id: request.id.clone(),
        model_name: info.name.clone(),
        model_version: info.version.clone(),
        outputs,
    };
    if binary.is_empty() {
        return Ok(Json(reply).into_response());
    }
    let mut body = serde_json::to_vec(&reply).map_err(|e| ApiError::internal(id, format!("writing the reply: {e}")))?;
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
