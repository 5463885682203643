//! The HTTP API, one axum router for every host: the page for people at `/` (`page`), the
//! prediction routes (`/v1/predict`, and `/predict` for the FastAPI clients; `v1`), the
//! KServe V2 / Open Inference Protocol (`v2`), health, model metadata, Prometheus metrics and
//! the OpenAPI document. Every error is JSON `{"error": {"code", "message"}}` with the status that
//! names its class, except on `/v2`, which answers its protocol's `{"error": "<message>"}`
//! (`error`). The routes live in one table ([`routes`]).
//!
//! The prediction routes are bounded ([`router`]): at most `max_in_flight` requests at once (one
//! more waits up to `admission_wait` for a place, then is shed with 503 and `Retry-After`;
//! `admission`), each answered within `deadline` (504 after it), whatever part of the work it
//! was in: waiting for a place, reading the body, waiting to decode, decoding, or waiting for the
//! model. The model's queue is bounded too (503 when full, [`crate::batch`]), and when
//! shutdown's grace period runs out every request still in flight is answered 503 ([`Drain`]).

mod admission;
mod error;
mod meta;
pub mod openapi;
mod page;
mod v1;
mod v2;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::BoxError;
use axum::Router;
use axum::body::Bytes;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Request, State};
use axum::handler::Handler;
use axum::http::{HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use image::RgbImage;
use tokio::sync::{Semaphore, watch};
use tower::ServiceBuilder;
use tower::timeout::TimeoutLayer;
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::batch::{Engine, EngineError};
use crate::logging::millis;
use crate::metrics::Metrics;
use crate::model::ModelInfo;
use crate::preprocess::{BoundedError, DecodeLimits, Normalisation, Preprocessed, preprocess_bounded};

pub use error::{ApiError, ErrorBody, ErrorDetail, RequestId, V2Error, V2ErrorBody};
pub use v1::{ModelRef, PredictResponse, Prediction, Timing};
pub use v2::{EXTENSIONS, image_input_name};

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
    /// Prediction requests handled at once; one more waits up to `admission_wait` for a place,
    /// then is answered 503. Each may hold a body of up to `max_body` bytes, so this bounds the
    /// memory that bodies take; a request waiting for a place holds none of its body.
    pub max_in_flight: usize,
    /// How long a request over `max_in_flight` waits for a place before it is shed; part of
    /// its `deadline`. Waiters are served in order until the oldest has waited half of it, then
    /// newest first, so that those admitted under a standing queue have not spent most of their
    /// deadline waiting. A client shed at once comes straight back, so under a flood the 503s
    /// alone can take the CPU; the wait bounds their rate to the waiting clients per wait.
    pub admission_wait: Duration,
    /// Requests waiting for the model at once ([`crate::batch`]); one more is answered 503.
    pub max_queue: usize,
    /// How long a prediction request may take, from its first byte to its answer; 504 after.
    pub deadline: Duration,
}

/// The default `Limits::max_in_flight`: enough to keep the decoders and a batch busy on a small
/// CPU; more only adds waiting (p99) and bodies held in memory (infer/BENCHMARKS.md, "Overload").
pub const DEFAULT_MAX_IN_FLIGHT: usize = 16;

/// The default `Limits::admission_wait` (infer/BENCHMARKS.md, "Overload").
pub const DEFAULT_ADMISSION_WAIT: Duration = Duration::from_millis(6000);

/// The default `Limits::deadline`.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body: DEFAULT_MAX_BODY,
            max_images: 32,
            decode: DecodeLimits::default(),
            max_decoding: crate::model::default_threads(),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            admission_wait: DEFAULT_ADMISSION_WAIT,
            max_queue: crate::batch::DEFAULT_MAX_QUEUE,
            deadline: DEFAULT_DEADLINE,
        }
    }
}

/// Ends the requests still in flight when shutdown's grace period is over: each is answered 503
/// (`shutting_down`) instead of being cut off with its connection.
#[derive(Debug, Clone)]
pub struct Drain(Arc<watch::Sender<bool>>);

impl Default for Drain {
    fn default() -> Self {
        Self(Arc::new(watch::Sender::new(false)))
    }
}

impl Drain {
    /// Answers every request in flight, and every later one, with 503.
    pub fn expire(&self) {
        self.0.send_replace(true);
    }

    async fn expired(&self) {
        let mut rx = self.0.subscribe();
        // `self` holds the sender, so waiting cannot fail.
        let _ = rx.wait_for(|expired| *expired).await;
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
    pub drain: Drain,
}

impl AppState {
    fn info(&self) -> &ModelInfo {
        self.engine.classifier().info()
    }

    /// Whether the model can be run: a batch worker is left.
    fn ready(&self) -> bool {
        self.engine.health().ready()
    }
}

type Shared = Arc<AppState>;

/// An HTTP method a route answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    Post,
}

impl Verb {
    /// Lower case, as OpenAPI's path items name operations.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::Post => "post",
        }
    }

    fn filter(self) -> MethodFilter {
        match self {
            Self::Get => MethodFilter::GET,
            Self::Post => MethodFilter::POST,
        }
    }
}

/// One route of the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub verb: Verb,
    /// In axum's syntax, which is also OpenAPI's: `/v2/models/{name}`.
    pub path: &'static str,
}

fn at<H, T>(verb: Verb, path: &'static str, handler: H) -> (Route, MethodRouter<Shared>)
where
    H: Handler<T, Shared>,
    T: 'static,
{
    (Route { verb, path }, on(verb.filter(), handler))
}

/// The one table of routes: the router is built from it, and the tests hold the OpenAPI document
/// to it in both directions.
fn table() -> Vec<(Route, MethodRouter<Shared>)> {
    use Verb::{Get, Post};
    vec![
        at(Get, "/", page::page),
        at(Post, "/v1/predict", v1::predict),
        at(Post, "/predict", v1::predict),
        at(Get, "/v1/model", meta::model_info),
        at(Get, "/healthz", meta::healthz),
        at(Get, "/readyz", meta::readyz),
        at(Get, "/metrics", meta::metrics),
        at(Get, "/openapi.json", meta::openapi_document),
        at(Get, "/v2", v2::server),
        at(Get, "/v2/health/live", v2::live),
        at(Get, "/v2/health/ready", v2::ready),
        at(Get, "/v2/models/{name}", v2::model),
        at(Get, "/v2/models/{name}/ready", v2::model_ready),
        at(Post, "/v2/models/{name}/infer", v2::infer),
        at(Get, "/v2/models/{name}/versions/{version}", v2::model_version),
        at(
            Get,
            "/v2/models/{name}/versions/{version}/ready",
            v2::model_version_ready,
        ),
        at(Post, "/v2/models/{name}/versions/{version}/infer", v2::infer_version),
    ]
}

/// Every route the router serves.
pub fn routes() -> Vec<Route> {
    table().into_iter().map(|(route, _)| route).collect()
}

/// The router with every route, error class, metrics and request-id logging; the prediction
/// routes (every `POST`) behind the guard: the deadline (tower's timeout, its error the error
/// JSON: [`guard_error`]) around admission, a concurrency limit that all of them share with load
/// shedding after a wait (`admission`).
/// Around every route: the request id (tower-http's, made by [`NextId`] when the client sent
/// none that [`settle_request_id`] kept, and echoed on the reply), a span with it around every
/// log line and one `done` line per request (tower-http's `TraceLayer`), and the metrics.
pub fn router(state: Arc<AppState>) -> Router {
    let max_body = state.limits.max_body;
    let deadline = state.limits.deadline;
    let places = admission::Places::new(state.limits.max_in_flight, state.limits.admission_wait);
    let guard = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(move |uri: Uri, err: BoxError| {
            std::future::ready(guard_error(&uri, &err, deadline))
        }))
        .layer(TimeoutLayer::new(deadline))
        .layer(middleware::from_fn_with_state(places, admission::admit));
    let mut router = Router::new();
    for (route, handler) in table() {
        let handler = match route.verb {
            Verb::Post => handler.layer(guard.clone()),
            Verb::Get => handler,
        };
        router = router.route(route.path, handler);
    }
    let trace = TraceLayer::new_for_http()
        .make_span_with(request_span)
        .on_request(())
        .on_response(|response: &Response, latency: Duration, _: &tracing::Span| {
            tracing::info!(status = response.status().as_u16(), ms = millis(latency), "done");
        })
        .on_body_chunk(())
        .on_eos(())
        // A 5xx is already logged by whoever made it (internal errors under the request id);
        // one more line per shed request would flood the log exactly when the server is busiest.
        .on_failure(());
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(
            ServiceBuilder::new()
                .layer(middleware::map_request(settle_request_id))
                .layer(SetRequestIdLayer::new(X_REQUEST_ID, NextId))
                .layer(PropagateRequestIdLayer::new(X_REQUEST_ID))
                .layer(trace)
                .layer(middleware::from_fn_with_state(Arc::clone(&state), record_metrics))
                .layer(middleware::from_fn_with_state(Arc::clone(&state), drain))
                .layer(DefaultBodyLimit::max(max_body)),
        )
        .with_state(state)
}

/// The error reply for what the guard's layers fail with.
fn guard_error(uri: &Uri, err: &BoxError, deadline: Duration) -> Response {
    let err = if err.is::<tower::timeout::error::Elapsed>() {
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "deadline_exceeded",
            format!(
                "the request was not answered within the server's deadline of {} ms",
                deadline.as_millis()
            ),
        )
    } else {
        tracing::error!("request guard failed: {err}");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
    };
    if is_v2_path(uri.path()) {
        V2Error(err).into_response()
    } else {
        err.into_response()
    }
}

/// Answers 503 once shutdown's grace period is over ([`Drain`]).
async fn drain(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let v2 = is_v2(&req);
    tokio::select! {
        biased;
        response = next.run(req) => response,
        () = state.drain.expired() => {
            let err = ApiError::unavailable("shutting_down", "the server is shutting down; try again elsewhere");
            if v2 { V2Error(err).into_response() } else { err.into_response() }
        }
    }
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Under Lambda, its request id, which its own log lines carry too; elsewhere the client's
/// `x-request-id` if it is fit for a log line (1 to 128 visible ASCII characters), or none, so
/// that [`NextId`] makes one.
async fn settle_request_id(mut req: Request) -> Request {
    let lambda = req
        .extensions()
        .get::<lambda_http::Context>()
        .and_then(|ctx| HeaderValue::from_str(&ctx.request_id).ok());
    let headers = req.headers_mut();
    if let Some(id) = lambda {
        headers.insert(X_REQUEST_ID, id);
    } else if headers
        .get(X_REQUEST_ID)
        .is_some_and(|id| id.is_empty() || id.len() > 128 || !id.as_bytes().iter().all(u8::is_ascii_graphic))
    {
        headers.remove(X_REQUEST_ID);
    }
    req
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A new request id: the process id and a counter, unique among the processes of a host and
/// short in a log line.
#[derive(Debug, Clone, Copy)]
struct NextId;

impl MakeRequestId for NextId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<tower_http::request_id::RequestId> {
        let id = format!("{:x}-{}", std::process::id(), NEXT_ID.fetch_add(1, Ordering::Relaxed));
        HeaderValue::from_str(&id)
            .ok()
            .map(tower_http::request_id::RequestId::new)
    }
}

/// The span around every log line of a request.
fn request_span(req: &Request) -> tracing::Span {
    let id = RequestId::of(req.extensions());
    tracing::info_span!("request", id = %id.0, method = %req.method(), path = %req.uri().path())
}

async fn record_metrics(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(req).await;
    state
        .metrics
        .record_request(method.as_str(), &route, response.status().as_u16(), start.elapsed());
    response
}

/// The Open Inference Protocol's clients parse its own error shape on every `/v2` path.
fn is_v2(req: &Request) -> bool {
    is_v2_path(req.uri().path())
}

fn is_v2_path(path: &str) -> bool {
    path == "/v2" || path.starts_with("/v2/")
}

fn error_reply(req: &Request, err: ApiError) -> Response {
    if is_v2(req) {
        V2Error(err).into_response()
    } else {
        err.into_response()
    }
}

async fn not_found(req: Request) -> Response {
    let err = ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route {} {}; see /openapi.json", req.method(), req.uri().path()),
    );
    error_reply(&req, err)
}

async fn method_not_allowed(req: Request) -> Response {
    let err = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    );
    error_reply(&req, err)
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

/// Decodes and normalises encoded images on a blocking thread, under the decoding limit; with
/// `keep_input`, also returns each image as the model sees it (resized RGB). Errors name the
/// image by its index when there is more than one.
async fn preprocess_images(
    state: &Shared,
    id: &RequestId,
    images: Vec<Bytes>,
    keep_input: bool,
) -> Result<(Vec<f32>, Vec<RgbImage>), ApiError> {
    let norm = Normalisation::from_info(state.info());
    let batch = images.len() > 1;
    let done = preprocess_bounded(&state.decoding, images, state.limits.decode, norm, keep_input).await;
    match done {
        Ok(Preprocessed { input, seen }) => Ok((input, seen)),
        Err(BoundedError::Image { index, source }) => Err(ApiError::from_preprocess(source, batch.then_some(index))),
        Err(e @ BoundedError::Closed) => Err(ApiError::internal(id, e.to_string())),
        Err(e @ BoundedError::Task(_)) => Err(ApiError::internal(id, e.to_string())),
    }
}

/// Logits for `n` preprocessed images; a full queue or no worker left is 503, any other failure
/// an internal error.
async fn run_model(state: &Shared, id: &RequestId, input: Vec<f32>, n: usize) -> Result<Vec<Vec<f32>>, ApiError> {
    state.engine.try_infer(input, n).await.map_err(|e| match e {
        EngineError::Busy { capacity } => ApiError::unavailable(
            "queue_full",
            format!("the model's queue is full ({capacity} requests are waiting); try again shortly"),
        ),
        EngineError::Stopped => not_ready(),
        other => ApiError::internal(id, format!("inference failed: {other}")),
    })
}

fn not_ready() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_ready",
        "the model's batch workers have stopped; the server cannot classify",
    )
}
