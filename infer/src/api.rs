//! The HTTP API, one axum router for every host: the prediction routes (`/v1/predict`, and
//! `/predict` for the FastAPI clients), the KServe V2 / Open Inference Protocol subset, health,
//! model metadata, Prometheus metrics and the OpenAPI document. Every error is JSON
//! `{"error": {"code", "message"}}` with the status that names its class.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Multipart, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::batch::Engine;
use crate::metrics::Metrics;
use crate::model::{ModelInfo, Scored, top_k};
use crate::preprocess::{DecodeLimits, Normalisation, PreprocessError, preprocess_into};

/// Lambda's synchronous invocation payload limit (6 MB).
pub const DEFAULT_MAX_BODY: usize = 6 * 1024 * 1024;

/// Request limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes in a request body.
    pub max_body: usize,
    /// Images in one request.
    pub max_images: usize,
    pub decode: DecodeLimits,
    /// Images decoded at once across all requests. Each decode may hold up to
    /// `decode.max_alloc` bytes, so this, not the number of connections, bounds decoding memory;
    /// decoding is CPU-bound, so more than one per CPU adds memory and no throughput.
    pub max_decoding: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body: DEFAULT_MAX_BODY,
            max_images: 32,
            decode: DecodeLimits::default(),
            max_decoding: crate::model::default_threads(),
        }
    }
}

/// Shared by every handler.
#[derive(Debug)]
pub struct AppState {
    pub engine: Engine,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    /// `limits.max_decoding` permits; a request holds one while its images are decoded.
    pub decoding: Arc<Semaphore>,
}

impl AppState {
    fn info(&self) -> &ModelInfo {
        self.engine.classifier().info()
    }
}

type Shared = Arc<AppState>;

/// An error reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_parameter", message)
    }

    fn too_large(max_body: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is over the limit of {max_body} bytes"),
        )
    }

    fn from_preprocess(err: PreprocessError, which: Option<usize>) -> Self {
        let message = match which {
            Some(i) => format!("image {i}: {err}"),
            None => err.to_string(),
        };
        match err {
            PreprocessError::Empty | PreprocessError::Corrupt(_) => Self::bad_request("bad_image", message),
            PreprocessError::UnknownFormat => Self::bad_request("unknown_image_format", message),
            PreprocessError::UnsupportedFormat(_) => {
                Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_image_format", message)
            }
            PreprocessError::TooLarge(_) => Self::new(StatusCode::PAYLOAD_TOO_LARGE, "image_too_large", message),
        }
    }

    fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

/// The router with every route, error class, metrics and request-id logging.
pub fn router(state: Arc<AppState>) -> Router {
    let max_body = state.limits.max_body;
    Router::new()
        .route("/v1/predict", post(predict))
        .route("/predict", post(predict))
        .route("/v1/model", get(model_info))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/v2", get(v2_server))
        .route("/v2/health/live", get(v2_live))
        .route("/v2/health/ready", get(v2_ready))
        .route("/v2/models/{name}", get(v2_model))
        .route("/v2/models/{name}/ready", get(v2_model_ready))
        .route("/v2/models/{name}/infer", post(v2_infer))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(Arc::clone(&state), observe))
        .with_state(state)
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The request id: Lambda's, the client's `x-request-id`, or a new one.
fn request_id(req: &Request) -> String {
    if let Some(ctx) = req.extensions().get::<lambda_http::Context>() {
        return ctx.request_id.clone();
    }
    if let Some(id) = req.headers().get("x-request-id").and_then(|v| v.to_str().ok())
        && !id.is_empty()
        && id.len() <= 128
        && id.bytes().all(|b| b.is_ascii_graphic())
    {
        return id.to_owned();
    }
    format!("{:x}-{}", std::process::id(), NEXT_ID.fetch_add(1, Ordering::Relaxed))
}

/// Request id span around every log line, `x-request-id` on the reply, metrics.
async fn observe(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let id = request_id(&req);
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let span = tracing::info_span!("request", id = %id, method = %method, path = %req.uri().path());
    let mut response = next.run(req).instrument(span.clone()).await;
    let elapsed = start.elapsed();
    let status = response.status();
    span.in_scope(|| {
        tracing::info!(status = status.as_u16(), ms = elapsed.as_secs_f64() * 1e3, "done");
    });
    state
        .metrics
        .record_request(method.as_str(), &route, status.as_u16(), elapsed);
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route {} {}; see /openapi.json", req.method(), req.uri().path()),
    )
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

// ---- /v1/predict -------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct PredictQuery {
    top_k: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PredictJson {
    image: Option<String>,
    images: Option<Vec<String>>,
}

#[derive(Debug, Serialize)]
pub struct Prediction {
    pub label: String,
    pub class_id: usize,
    pub probability: f32,
    pub top_k: Vec<Scored>,
}

#[derive(Debug, Serialize)]
pub struct ModelRef {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Serialize)]
pub struct Timing {
    /// Reading the body, decoding and preprocessing.
    pub preprocess_ms: f64,
    /// Queueing for and running the model.
    pub inference_ms: f64,
    pub total_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct PredictResponse {
    pub model: ModelRef,
    pub predictions: Vec<Prediction>,
    pub timing: Timing,
}

const DEFAULT_TOP_K: usize = 5;

fn parse_top_k(raw: Option<&str>, classes: usize) -> Result<usize, ApiError> {
    let Some(raw) = raw else {
        return Ok(DEFAULT_TOP_K.min(classes));
    };
    match raw.trim().parse::<usize>() {
        Ok(0) => Err(ApiError::unprocessable("top_k must be at least 1")),
        // Asking for more classes than exist gives them all.
        Ok(k) => Ok(k.min(classes)),
        Err(_) => Err(ApiError::unprocessable(format!(
            "top_k must be a positive integer, got {raw:?}"
        ))),
    }
}

/// `multipart/form-data` → `"multipart/form-data"`: the media type without parameters, lower case.
fn media_type(req: &Request) -> Option<String> {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
}

async fn read_body(req: Request, state: &Shared) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, &()).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(state.limits.max_body)
        } else {
            ApiError::bad_request("bad_body", format!("reading the request body: {rejection}"))
        }
    })
}

fn base64_engine() -> base64::engine::GeneralPurpose {
    base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    )
}

/// Decodes base64, with or without padding, tolerating a `data:image/...;base64,` prefix.
fn decode_base64(text: &str, which: &str) -> Result<Vec<u8>, ApiError> {
    let payload = match text.split_once(";base64,") {
        Some((prefix, rest)) if prefix.starts_with("data:") => rest,
        _ => text,
    };
    let compact: String = payload.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64_engine()
        .decode(compact.as_bytes())
        .map_err(|e| ApiError::bad_request("bad_base64", format!("{which} is not valid base64: {e}")))
}

/// The images of a prediction request, by its Content-Type.
async fn images_from_request(req: Request, state: &Shared) -> Result<Vec<Bytes>, ApiError> {
    let media = media_type(&req);
    let images = match media.as_deref() {
        Some("multipart/form-data") => {
            let mut form = Multipart::from_request(req, &())
                .await
                .map_err(|e| ApiError::bad_request("bad_multipart", e.body_text()))?;
            let mut files = Vec::new();
            loop {
                let field = form.next_field().await.map_err(|e| multipart_error(&e, state))?;
                let Some(field) = field else { break };
                if field.name() == Some("file") || field.name() == Some("files") {
                    files.push(field.bytes().await.map_err(|e| multipart_error(&e, state))?);
                    if files.len() > state.limits.max_images {
                        return Err(too_many_images(state));
                    }
                }
            }
            if files.is_empty() {
                return Err(ApiError::unprocessable("the multipart form has no `file` field"));
            }
            files
        }
        Some(m) if m == "application/json" || m.ends_with("+json") => {
            let body = read_body(req, state).await?;
            let parsed: PredictJson = serde_json::from_slice(&body)
                .map_err(|e| ApiError::bad_request("bad_json", format!("the JSON body is invalid: {e}")))?;
            match (parsed.image, parsed.images) {
                (Some(one), None) => vec![Bytes::from(decode_base64(&one, "`image`")?)],
                (None, Some(many)) => {
                    if many.is_empty() {
                        return Err(ApiError::unprocessable("`images` is empty"));
                    }
                    if many.len() > state.limits.max_images {
                        return Err(too_many_images(state));
                    }
                    many.iter()
                        .enumerate()
                        .map(|(i, text)| decode_base64(text, &format!("`images[{i}]`")).map(Bytes::from))
                        .collect::<Result<_, _>>()?
                }
                (Some(_), Some(_)) => return Err(ApiError::unprocessable("give `image` or `images`, not both")),
                (None, None) => {
                    return Err(ApiError::unprocessable(
                        "the JSON body needs `image` (base64) or `images` (a list of base64)",
                    ));
                }
            }
        }
        Some(m) if m == "application/octet-stream" || m.starts_with("image/") => vec![read_body(req, state).await?],
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "Content-Type {other:?} is not accepted: send the image as image/* or application/octet-stream, multipart/form-data field `file`, or JSON {{\"image\": \"<base64>\"}}"
                ),
            ));
        }
        None => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the request has no Content-Type: use image/*, application/octet-stream, multipart/form-data or application/json",
            ));
        }
    };
    Ok(images)
}

fn multipart_error(err: &axum::extract::multipart::MultipartError, state: &Shared) -> ApiError {
    if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(state.limits.max_body)
    } else {
        ApiError::bad_request(
            "bad_multipart",
            format!("reading the multipart form: {}", err.body_text()),
        )
    }
}

fn too_many_images(state: &Shared) -> ApiError {
    ApiError::unprocessable(format!(
        "too many images: at most {} per request",
        state.limits.max_images
    ))
}

async fn predict(State(state): State<Shared>, req: Request) -> Result<Json<PredictResponse>, ApiError> {
    let start = Instant::now();
    let info = state.info();
    let query = Query::<PredictQuery>::try_from_uri(req.uri())
        .map_err(|e| ApiError::unprocessable(format!("bad query string: {}", e.body_text())))?;
    let k = parse_top_k(query.top_k.as_deref(), info.num_classes())?;
    let images = images_from_request(req, &state).await?;
    let count = images.len();
    let norm = Normalisation::from_info(info);
    let decode_limits = state.limits.decode;
    let batch = images.len() > 1;
    // Owned and moved into the task: a client that hangs up must not free the slot while the
    // decode it started still holds its memory.
    let permit = Arc::clone(&state.decoding)
        .acquire_owned()
        .await
        .map_err(|e| ApiError::internal(format!("the decoding limit is closed: {e}")))?;
    let input = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut input = Vec::with_capacity(images.len() * 3 * (norm.height * norm.width) as usize);
        for (i, bytes) in images.iter().enumerate() {
            preprocess_into(bytes, &decode_limits, &norm, &mut input)
                .map_err(|e| ApiError::from_preprocess(e, batch.then_some(i)))?;
        }
        Ok::<_, ApiError>(input)
    })
    .await
    .map_err(|e| ApiError::internal(format!("the preprocessing task failed: {e}")))??;
    let preprocessed = Instant::now();
    let logits = state.engine.infer(input, count).await.map_err(|e| {
        tracing::error!("inference failed: {e}");
        ApiError::internal(e.to_string())
    })?;
    let inferred = Instant::now();
    let predictions = logits
        .iter()
        .map(|l| {
            let top = top_k(l, &info.class_names, k);
            let best = top.first().cloned().unwrap_or(Scored {
                label: String::new(),
                class_id: 0,
                probability: 0.0,
            });
            Prediction {
                label: best.label,
                class_id: best.class_id,
                probability: best.probability,
                top_k: top,
            }
        })
        .collect();
    let ms = |d: std::time::Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    Ok(Json(PredictResponse {
        model: ModelRef {
            name: info.name.clone(),
            version: info.version.clone(),
        },
        predictions,
        timing: Timing {
            preprocess_ms: ms(preprocessed - start),
            inference_ms: ms(inferred - preprocessed),
            total_ms: ms(start.elapsed()),
        },
    }))
}

// ---- health, model, metrics, openapi ------------------------------------------------------------

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The model is loaded and warmed up before the router exists, so a router that answers is ready.
async fn readyz(State(state): State<Shared>) -> Json<Value> {
    let info = state.info();
    Json(json!({"status": "ready", "model": info.name, "version": info.version}))
}

async fn model_info(State(state): State<Shared>) -> Json<Value> {
    let info = state.info();
    Json(json!({
        "name": info.name,
        "version": info.version,
        "sha256": info.sha256,
        "source": info.source,
        "class_names": info.class_names,
        "input": {"name": info.input_name, "height": info.input_height, "width": info.input_width,
                  "channel_order": info.channel_order, "layout": info.layout, "mean": info.mean, "std": info.std},
        "output": {"name": info.output_name, "classes": info.num_classes()},
        "batching": state.engine.batching(),
        "metadata": info.metadata,
    }))
}

async fn metrics(State(state): State<Shared>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(),
    )
        .into_response()
}

async fn openapi(State(state): State<Shared>) -> Json<Value> {
    Json(crate::openapi::document(state.info()))
}

// ---- KServe V2 / Open Inference Protocol --------------------------------------------------------

async fn v2_server() -> Json<Value> {
    Json(json!({"name": "infer", "version": env!("CARGO_PKG_VERSION"), "extensions": []}))
}

async fn v2_live() -> Json<Value> {
    Json(json!({"live": true}))
}

async fn v2_ready() -> Json<Value> {
    Json(json!({"ready": true}))
}

fn known_model<'a>(state: &'a Shared, name: &str) -> Result<&'a ModelInfo, ApiError> {
    let info = state.info();
    if name == info.name {
        Ok(info)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!("no model {name:?}; this server serves {:?}", info.name),
        ))
    }
}

async fn v2_model(State(state): State<Shared>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let info = known_model(&state, &name)?;
    Ok(Json(json!({
        "name": info.name,
        "versions": [info.version],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": info.input_name, "datatype": "FP32",
                    "shape": [-1, 3, info.input_height, info.input_width]}],
        "outputs": [{"name": info.output_name, "datatype": "FP32", "shape": [-1, info.num_classes()]}],
    })))
}

async fn v2_model_ready(State(state): State<Shared>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let info = known_model(&state, &name)?;
    Ok(Json(json!({"name": info.name, "ready": true})))
}

#[derive(Debug, Deserialize)]
struct V2Request {
    id: Option<String>,
    inputs: Vec<V2Tensor>,
}

#[derive(Debug, Deserialize)]
struct V2Tensor {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    data: Value,
}

/// Flattens `data` (flat or nested, row-major) into `out`.
fn flatten_numbers(value: &Value, out: &mut Vec<f32>, limit: usize) -> Result<(), ApiError> {
    match value {
        Value::Array(items) => {
            for item in items {
                flatten_numbers(item, out, limit)?;
            }
            Ok(())
        }
        Value::Number(n) => {
            if out.len() >= limit {
                return Err(ApiError::unprocessable("`data` has more elements than `shape` says"));
            }
            let v = n.as_f64().unwrap_or(f64::NAN) as f32;
            if !v.is_finite() {
                return Err(ApiError::unprocessable(format!(
                    "`data` element {n} is not a finite FP32"
                )));
            }
            out.push(v);
            Ok(())
        }
        other => Err(ApiError::unprocessable(format!(
            "`data` holds {}, expected numbers",
            match other {
                Value::Null => "null",
                Value::Bool(_) => "a boolean",
                Value::String(_) => "a string",
                _ => "an object",
            }
        ))),
    }
}

async fn v2_infer(
    State(state): State<Shared>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    let info = known_model(&state, &name)?;
    match media_type(&req).as_deref() {
        None | Some("application/json") => {}
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("Content-Type {other:?} is not accepted: the V2 protocol takes application/json"),
            ));
        }
    }
    let body = read_body(req, &state).await?;
    let request: V2Request = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("bad_json", format!("the inference request is invalid: {e}")))?;
    let [tensor] = request.inputs.as_slice() else {
        return Err(ApiError::unprocessable(format!(
            "expected exactly one input tensor, got {}",
            request.inputs.len()
        )));
    };
    if tensor.name != info.input_name {
        return Err(ApiError::unprocessable(format!(
            "unknown input {:?}; the model's input is {:?}",
            tensor.name, info.input_name
        )));
    }
    if tensor.datatype != "FP32" {
        return Err(ApiError::unprocessable(format!(
            "datatype {:?} is not supported; send FP32",
            tensor.datatype
        )));
    }
    let expected = [3, i64::from(info.input_height), i64::from(info.input_width)];
    let n = match tensor.shape.as_slice() {
        [n, rest @ ..] if rest == expected && *n >= 1 => *n as usize,
        _ => {
            return Err(ApiError::unprocessable(format!(
                "shape {:?} does not match [N, 3, {}, {}] with N >= 1",
                tensor.shape, info.input_height, info.input_width
            )));
        }
    };
    if n > state.limits.max_images {
        return Err(too_many_images(&state));
    }
    let len = n * info.image_len();
    let mut data = Vec::with_capacity(len);
    flatten_numbers(&tensor.data, &mut data, len)?;
    if data.len() != len {
        return Err(ApiError::unprocessable(format!(
            "`data` has {} elements; shape {:?} needs {len}",
            data.len(),
            tensor.shape
        )));
    }
    let logits = state.engine.infer(data, n).await.map_err(|e| {
        tracing::error!("inference failed: {e}");
        ApiError::internal(e.to_string())
    })?;
    let flat: Vec<f32> = logits.into_iter().flatten().collect();
    let mut reply = json!({
        "model_name": info.name,
        "model_version": info.version,
        "outputs": [{"name": info.output_name, "datatype": "FP32", "shape": [n, info.num_classes()], "data": flat}],
    });
    if let (Some(id), Some(obj)) = (request.id, reply.as_object_mut()) {
        obj.insert("id".into(), Value::String(id));
    }
    Ok(Json(reply))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_defaults_clamps_and_rejects() {
        assert_eq!(parse_top_k(None, 10), Ok(5));
        assert_eq!(parse_top_k(None, 3), Ok(3));
        assert_eq!(parse_top_k(Some("20"), 10), Ok(10));
        assert_eq!(parse_top_k(Some("1"), 10), Ok(1));
        assert!(parse_top_k(Some("0"), 10).is_err());
        assert!(parse_top_k(Some("-1"), 10).is_err());
        assert!(parse_top_k(Some("x"), 10).is_err());
    }

    #[test]
    fn base64_with_or_without_padding_and_data_url() -> Result<(), ApiError> {
        assert_eq!(decode_base64("aGk=", "x")?, b"hi");
        assert_eq!(decode_base64("aGk", "x")?, b"hi");
        assert_eq!(decode_base64("data:image/png;base64,aGk=", "x")?, b"hi");
        assert_eq!(decode_base64("aG\nk=", "x")?, b"hi");
        assert_eq!(decode_base64("a$b", "x").map_err(|e| e.code), Err("bad_base64"));
        Ok(())
    }
}
