//! The router's log: one `done` line per request inside the request's span. A test binary of
//! its own: the log is captured by a subscriber set for this thread only, and tracing caches per
//! call site whether any subscriber wants it, a cache that other tests' threads (with none)
//! would race with.

mod common;

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use axum::body::Body;
use axum::http::Request;
use common::router::{app, post};
use common::solid;
use image::ImageFormat;
use tower::ServiceExt;

/// Log lines written to memory.
#[derive(Debug, Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("log buffer poisoned"))?
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Self;

    fn make_writer(&'a self) -> Self {
        self.clone()
    }
}

/// One `done` line per request, with its status and duration, inside the request's span (its
/// id, method and path); nothing else at INFO for a request, not even for a 503.
#[test]
fn each_request_logs_one_done_line_in_its_span() -> Result<()> {
    let log = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(log.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let made = tracing::subscriber::with_default(subscriber, || -> Result<String> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async {
            let app = app()?;
            let request = Request::get("/healthz")
                .header("x-request-id", "log-me-7")
                .body(Body::empty())?;
            app.clone().oneshot(request).await?;
            let png = solid([250, 10, 10], 32, 32, ImageFormat::Png);
            let response = app.clone().oneshot(post("/v1/predict", "image/png", png)?).await?;
            let made = response
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .context("x-request-id")?
                .to_owned();
            Ok(made)
        })
    })?;
    let text = String::from_utf8(log.0.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone())?;
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("request{")).collect();
    assert_eq!(lines.len(), 2, "{text}");
    for (line, id, method, path, status) in [
        (lines[0], "log-me-7", "GET", "/healthz", 200),
        (lines[1], made.as_str(), "POST", "/v1/predict", 200),
    ] {
        assert!(
            line.contains(&format!("request{{id={id} method={method} path={path}}}")),
            "{line}"
        );
        assert!(line.contains(&format!(" done status={status} ms=")), "{line}");
    }
    Ok(())
}
