//! The hosts around the router: AWS Lambda (API Gateway REST and HTTP APIs, Function URLs, ALB;
//! `lambda_http` decodes base64 binary bodies; beside them, Step Functions Distributed Map
//! batches) and a plain HTTP server with graceful shutdown that has a deadline, whose connections
//! close with a lingering close ([`crate::linger`]).

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};

use crate::api::{AppState, DEFAULT_MAX_BODY, Drain, Limits, router};
use crate::batch::{BatchConfig, Engine, Health};
use crate::bulk::map::{MapBatch, Worker as MapWorker};
use crate::graph_cache::{CacheOutcome, GraphCache};
use crate::linger::{self, Linger};
use crate::metrics::Metrics;
use crate::model::{Classifier, LoadOptions, ModelError, Overrides};
use crate::source::{ModelSource, SourceError};

/// Whether this process runs inside Lambda (or `cargo lambda watch`).
pub fn on_lambda() -> bool {
    std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some_and(|v| !v.is_empty())
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("the model-loading task failed: {0}")]
    Task(String),
}

/// Fetches, verifies, loads and warms up the model: all of start-up before the first request.
pub async fn load_classifier(
    source: &ModelSource,
    overrides: &Overrides,
    options: &LoadOptions,
) -> Result<Arc<Classifier>, StartError> {
    // Opening the runtime library overlaps reading and hashing the model (start-up timings:
    // infer/BENCHMARKS.md, "Start-up and memory"); an error
    // here comes back again, with its message, from the load below.
    let runtime = tokio::task::spawn_blocking(|| crate::runtime::environment().map(|_| ()));
    let mut result = load_once(source, overrides, options).await;
    if let Err(StartError::Model(ModelError::BadCacheEntry { entry, reason })) = &result {
        tracing::warn!(%entry, "cached optimised graph does not load ({reason}); rebuilding it");
        result = load_once(source, overrides, options).await;
    }
    let _ = runtime.await;
    result
}

async fn load_once(
    source: &ModelSource,
    overrides: &Overrides,
    options: &LoadOptions,
) -> Result<Arc<Classifier>, StartError> {
    let name = source.name();
    let label = source.to_string();
    let overrides = overrides.clone();
    let options = options.clone();
    let blocking_err = |e: tokio::task::JoinError| StartError::Task(e.to_string());
    let file_cache = match (source, &options.cache) {
        (ModelSource::File(path), Some(cache)) => Some((path.clone(), cache.clone())),
        _ => None,
    };
    // A file can be hashed without reading it into memory; when its optimised graph is cached,
    // that is all start-up does with it, and it does it while ONNX Runtime loads the graph.
    if let Some((path, cache)) = file_cache.clone() {
        let (name, label, overrides, options) = (name.clone(), label.clone(), overrides.clone(), options.clone());
        let cached = tokio::task::spawn_blocking(move || {
            load_file_from_cache(&path, &cache, &name, &label, &overrides, &options)
        })
        .await
        .map_err(blocking_err)??;
        if let Some(classifier) = cached {
            return Ok(Arc::new(classifier));
        }
    }
    let (bytes, sha256) = source.fetch().await?;
    let classifier = tokio::task::spawn_blocking(move || {
        let classifier = Classifier::load_with_options(bytes, Some(sha256), &name, &label, &overrides, &options)?;
        // Noted so that the next start takes the fast path above.
        if let Some((path, cache)) = file_cache
            && matches!(classifier.cache_outcome(), CacheOutcome::Stored | CacheOutcome::Hit)
        {
            cache.remember_digest(&path, &classifier.info().sha256);
        }
        Ok::<_, StartError>(classifier)
    })
    .await
    .map_err(blocking_err)??;
    Ok(Arc::new(classifier))
}

/// The classifier for the model file at `path` from its cached graph, when the cache remembers
/// the file's digest and holds the entry for it; `None` otherwise (also when the file has changed
/// since), and the caller reads and hashes the file in one pass. A settled file
/// ([`GraphCache::is_settled`]) is not hashed again; any other is, on a second thread while ONNX
/// Runtime loads the entry on this one, and the session is used only if the digests agree.
fn load_file_from_cache(
    path: &std::path::Path,
    cache: &GraphCache,
    name: &str,
    label: &str,
    overrides: &Overrides,
    options: &LoadOptions,
) -> Result<Option<Classifier>, StartError> {
    let Some(guess) = cache.remembered_digest(path) else {
        return Ok(None);
    };
    // The entry's name holds the runtime's build: wait for the library opening meanwhile.
    crate::runtime::environment().map_err(ModelError::from)?;
    let entry = cache.entry(&guess, ort::info());
    if !GraphCache::graph(&entry).is_file() {
        return Ok(None);
    }
    if cache.is_settled(path) {
        // Hashed in full when the note was written, and not written to since: hashing a wide
        // model again is a large share of the start, and competes with the warm-up run for the
        // cores (infer/BENCHMARKS.md, "Start-up and memory"). Its sidecar may have changed, so that is still checked.
        let digest = crate::source::check_sidecar(path, guess)?;
        return Classifier::load_cached(&entry, digest, name, label, overrides, options)
            .map(Some)
            .map_err(StartError::from);
    }
    let hashing = {
        let path = path.to_owned();
        std::thread::Builder::new()
            .name("model-sha256".into())
            .spawn(move || crate::source::file_digest(&path))
            .map_err(|e| StartError::Task(format!("starting the hashing thread: {e}")))?
    };
    let loaded = Classifier::load_cached(&entry, guess.clone(), name, label, overrides, options);
    let actual = hashing
        .join()
        .map_err(|_| StartError::Task("the hashing thread panicked".into()))??;
    if actual == guess {
        return loaded.map(Some).map_err(StartError::from);
    }
    tracing::info!(model = %path.display(), "model file changed since the last start");
    Ok(None)
}

/// The router over a loaded classifier.
pub fn app(classifier: Arc<Classifier>, batching: BatchConfig, limits: Limits) -> Router {
    build(classifier, batching, limits).router
}

/// The router and what a host needs beside it to run it well.
#[derive(Debug, Clone)]
pub struct App {
    pub router: Router,
    /// Whether the model's batch workers are still there.
    pub health: Arc<Health>,
    /// Ends the requests in flight when shutdown's grace period is over.
    pub drain: Drain,
    /// How connections close (sized by the body limit).
    pub linger: Linger,
    /// The router's metrics, where the lingering closes are counted too.
    pub metrics: Arc<Metrics>,
}

/// [`app`], with the batch workers' health and the drain.
pub fn build(classifier: Arc<Classifier>, batching: BatchConfig, limits: Limits) -> App {
    let metrics = Arc::new(Metrics::default());
    let engine = Engine::with_queue(classifier, Arc::clone(&metrics), batching, limits.max_queue);
    let health = Arc::clone(engine.health());
    let drain = Drain::default();
    let router = router(Arc::new(AppState {
        engine,
        metrics: Arc::clone(&metrics),
        limits,
        decoding: Arc::new(Semaphore::new(limits.max_decoding.max(1))),
        drain: drain.clone(),
    }));
    App {
        router,
        health,
        drain,
        linger: Linger::for_body_limit(limits.max_body),
        metrics,
    }
}

/// Serves until `shutdown` resolves, then stops accepting and finishes the requests in flight;
/// connections close as `serve_app`'s do ([`crate::linger`]), for bodies up to the default limit.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = linger::Listener::new(listener, Linger::for_body_limit(DEFAULT_MAX_BODY), None);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

/// How long connections may stay open after the grace period's 503s went out (a client that
/// does not read its answer must not hold the process up).
const LINGER: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("every batch worker has stopped and none could be restarted: the server cannot classify")]
    WorkersLost,
}

/// Serves `app` until `shutdown` resolves or its batch workers are lost; then stops accepting,
/// gives the requests in flight `grace` to finish, answers those still running 503
/// (`shutting_down`), and returns. Losing the workers is an error, so that the process exits
/// non-zero and its supervisor starts a new one.
pub async fn serve_app(
    listener: TcpListener,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> Result<(), ServeError> {
    let App {
        router,
        health,
        drain,
        linger,
        metrics,
    } = app;
    let lost = Arc::new(AtomicBool::new(false));
    let (stopping, stopped) = oneshot::channel::<()>();
    let signal = {
        let lost = Arc::clone(&lost);
        async move {
            tokio::select! {
                () = shutdown => {}
                () = health.lost() => {
                    tracing::error!("no batch worker is left; shutting down");
                    lost.store(true, Ordering::SeqCst);
                }
            }
            let _ = stopping.send(());
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                drain.expire();
            });
        }
    };
    let serving = axum::serve(linger::Listener::new(listener, linger, Some(metrics)), router)
        .with_graceful_shutdown(signal)
        .into_future();
    tokio::pin!(serving);
    let mut stopped = std::pin::pin!(stopped);
    let mut stopping_since = false;
    let result = loop {
        tokio::select! {
            result = &mut serving => break result,
            // An error means the signal future was dropped: the server has ended.
            _ = &mut stopped, if !stopping_since => stopping_since = true,
            () = tokio::time::sleep(grace + LINGER), if stopping_since => {
                tracing::warn!("connections still open {:?} after shutdown began; closing them", grace + LINGER);
                break Ok(());
            }
        }
    };
    result?;
    if lost.load(Ordering::SeqCst) {
        return Err(ServeError::WorkersLost);
    }
    Ok(())
}

/// Resolves on SIGTERM (what container runtimes send) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT: finishing requests in flight"),
        () = term => tracing::info!("SIGTERM: finishing requests in flight"),
    }
}

/// The variable with which `lambda_http` leaves an API Gateway REST API's stage out of the
/// request path: the routes carry none, and the template's stage is `v1`, which `lambda_http`
/// would otherwise leave in (`/v1/predict` looks as if it already starts with the stage).
pub const IGNORE_STAGE_VARIABLE: &str = "AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH";

/// Sets [`IGNORE_STAGE_VARIABLE`] (`lambda_http` reads it for every request; any value counts).
/// An HTTP API on a named stage is not covered: it puts the stage into `rawPath` itself
/// (aws-lambda-rust-runtime#919); the template deploys a REST API and a function URL.
///
/// # Safety
/// Sets an environment variable: call it before any other thread exists.
pub unsafe fn ignore_stage_in_path() {
    // SAFETY: the caller guarantees no other thread reads the environment meanwhile.
    unsafe { std::env::set_var(IGNORE_STAGE_VARIABLE, "true") };
}

/// Runs the function until the runtime stops the process, with both kinds of event it answers:
/// a Step Functions Distributed Map batch goes to `worker` ([`crate::bulk::map`]); every other
/// event is handed to `lambda_http`'s adapter and the router. Call [`ignore_stage_in_path`] first.
pub async fn run_lambda_with_map(app: Router, worker: Arc<MapWorker>) -> Result<(), lambda_http::Error> {
    use lambda_http::{LambdaEvent, request::LambdaRequest};
    let http = lambda_http::Adapter::from(app);
    let handler = lambda_http::service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let http = http.clone();
        let worker = Arc::clone(&worker);
        async move {
            let LambdaEvent { payload, context } = event;
            if let Some(batch) = MapBatch::recognise(&payload) {
                let reply = worker.handle(batch?).await?;
                return Ok::<_, lambda_http::Error>(serde_json::to_value(reply)?);
            }
            let request: LambdaRequest = serde_json::from_value(payload).map_err(|e| {
                format!("unrecognised event: neither HTTP (API Gateway, function URL, ALB) nor a Distributed Map batch ({e})")
            })?;
            let response = tower::ServiceExt::oneshot(http, LambdaEvent::new(request, context)).await?;
            Ok(serde_json::to_value(response)?)
        }
    });
    lambda_http::lambda_runtime::run(handler).await
}
