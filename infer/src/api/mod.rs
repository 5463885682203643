//! The HTTP API, one axum router for every host: the prediction routes (`/v1/predict`, and
//! `/predict` for the FastAPI clients; [`v1`]), the KServe V2 / Open Inference Protocol subset
//! ([`v2`]), health, model metadata, Prometheus metrics and the OpenAPI document. Every error is
//! JSON `{"error": {"code", "message"}}` with the status that names its class ([`error`]).

mod error;
mod v1;
mod v2;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::batch::Engine;
use crate::metrics::Metrics;
use crate::model::ModelInfo;
use crate::preprocess::DecodeLimits;

pub use error::ApiError;
pub use v1::{ModelRef, Prediction, PredictResponse, Timing};

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

/// The router with every route, error class, metrics and request-id logging.
pub fn router(state: Arc<AppState>) -> Router {
    let max_body = state.limits.max_body;
    Router::new()
        .route("/v1/predict", post(v1::predict))
        .route("/predict", post(v1::predict))
        .route("/v1/model", get(model_info))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/v2", get(v2::v2_server))
        .route("/v2/health/live", get(v2::v2_live))
        .route("/v2/health/ready", get(v2::v2_ready))
        .route("/v2/models/{name}", get(v2::v2_model))
        .route("/v2/models/{name}/ready", get(v2::v2_model_ready))
        .route("/v2/models/{name}/infer", post(v2::v2_infer))
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


fn too_many_images(state: &Shared) -> ApiError {
    ApiError::unprocessable(format!(
        "too many images: at most {} per request",
        state.limits.max_images
    ))
}


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
                  "channel_order": "RGB", "layout": "NCHW", "mean": info.mean, "std": info.std},
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
