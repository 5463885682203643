//! The router in-process under more than it can do: a full model queue answers 503 with
//! `Retry-After`, a slow model hits the deadline (504), requests beyond the concurrency limit are
//! shed (503), dead batch workers flip readiness and make the server return an error, invented
//! methods add no metrics series, and a model with a fixed batch other than 1 is refused at load.
//! The slow model is a real ONNX graph ([`infer::testing::slow`]), not a sleep. Over a loopback
//! socket (hyper, as `infer serve` runs it): a request over the limit waits for a place before it
//! is shed, a shed request keeps its keep-alive connection, and every refusal is the error JSON.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::router::{call, call_raw, get, load, post};
use common::solid;
use image::ImageFormat;
use infer::api::Limits;
use infer::batch::BatchConfig;
use infer::model::{Classifier, ModelError, Overrides};
use infer::testing::TinyModel;
use infer::testing::slow::SlowModel;
use serde_json::{Value, json};

fn slow() -> Result<Arc<Classifier>> {
    Ok(Arc::new(Classifier::load(
        &SlowModel::new().build(),
        "tiny",
        "slow.onnx",
        &Overrides::default(),
        1,
    )?))
}

const ALONE: BatchConfig = BatchConfig {
    max_batch: 1,
    max_wait: Duration::ZERO,
};

fn png() -> Vec<u8> {
    solid([250, 10, 10], 32, 32, ImageFormat::Png)
}

/// Sends `n` predictions at once; their statuses, `Retry-After` headers and bodies.
async fn burst(app: &axum::Router, n: usize) -> Result<Vec<(StatusCode, Option<String>, Value)>> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { call_raw(&app, post("/v1/predict", "image/png", png())?).await })
        })
        .collect();
    let mut out = Vec::new();
    for task in tasks {
        let (status, headers, body) = task.await??;
        let retry = headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        out.push((status, retry, serde_json::from_slice(&body)?));
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503_with_retry_after() -> Result<()> {
    // One worker runs one request at a time and one more may wait: of six at once, at least
    // three find the queue full while the first runs.
    let limits = Limits {
        max_queue: 1,
        deadline: Duration::from_secs(120),
        ..Limits::default()
    };
    let app = infer::host::app(slow()?, ALONE, limits);
    let replies = burst(&app, 6).await?;
    let full: Vec<_> = replies
        .iter()
        .filter(|(status, _, _)| *status == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert!(full.len() >= 3, "{replies:?}");
    for (_, retry, body) in &full {
        assert_eq!(retry.as_deref(), Some("1"), "{body}");
        assert_eq!(body["error"]["code"], "queue_full", "{body}");
    }
    for (status, _, body) in &replies {
        assert!(
            *status == StatusCode::OK || *status == StatusCode::SERVICE_UNAVAILABLE,
            "{status} {body}"
        );
    }
    assert!(replies.iter().any(|(status, _, _)| *status == StatusCode::OK));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_model_hits_the_deadline_in_the_error_json() -> Result<()> {
    let limits = Limits {
        deadline: Duration::from_millis(10),
        ..Limits::default()
    };
    let app = infer::host::app(slow()?, ALONE, limits);
    let (status, reply) = call(&app, post("/v1/predict", "image/png", png())?).await?;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{reply}");
    assert_eq!(reply["error"]["code"], "deadline_exceeded", "{reply}");
    assert!(
        reply["error"]["message"].as_str().is_some_and(|m| m.contains("10 ms")),
        "{reply}"
    );
    // The V2 route answers in its own shape.
    let request = json!({"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32",
                                     "data": vec![0.0f32; 3 * 32 * 32]}]});
    let (status, reply) = call(
        &app,
        post("/v2/models/tiny/infer", "application/json", request.to_string())?,
    )
    .await?;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{reply}");
    assert!(
        reply["error"].as_str().is_some_and(|m| m.contains("deadline")),
        "{reply}"
    );
    // Health is not behind the deadline.
    let (status, _) = call(&app, get("/readyz")?).await?;
    assert_eq!(status, StatusCode::OK);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_concurrency_limit_are_shed_at_once() -> Result<()> {
    let limits = Limits {
        max_in_flight: 1,
        admission_wait: Duration::ZERO,
        deadline: Duration::from_secs(120),
        ..Limits::default()
    };
    let app = infer::host::app(slow()?, ALONE, limits);
    let replies = burst(&app, 4).await?;
    let shed: Vec<_> = replies
        .iter()
        .filter(|(status, _, _)| *status == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert!(!shed.is_empty(), "{replies:?}");
    for (_, retry, body) in &shed {
        assert_eq!(retry.as_deref(), Some("1"), "{body}");
        assert_eq!(body["error"]["code"], "overloaded", "{body}");
    }
    assert!(replies.iter().any(|(status, _, _)| *status == StatusCode::OK));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_batch_workers_flip_readiness_and_stop_the_server() -> Result<()> {
    let classifier = load(&TinyModel::rgb(32))?;
    let app = infer::host::build(Arc::clone(&classifier), BatchConfig::default(), Limits::default());
    let router = app.router.clone();
    let predict = || post("/v1/predict", "image/png", png());

    // One panic: the worker is restarted and the next request is served.
    classifier.panic_on_next_runs(1);
    let (status, reply) = call(&router, predict()?).await?;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{reply}");
    let (status, reply) = call(&router, predict()?).await?;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(call(&router, get("/readyz")?).await?.0, StatusCode::OK);

    // Panicking again and again: the worker is given up.
    classifier.panic_on_next_runs(usize::MAX);
    for _ in 0..10 {
        if !app.health.ready() {
            break;
        }
        call(&router, predict()?).await?;
    }
    let (status, reply) = call(&router, get("/readyz")?).await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{reply}");
    assert_eq!(reply["error"]["code"], "not_ready", "{reply}");
    let (status, reply) = call(&router, get("/v2/health/ready")?).await?;
    assert_eq!(
        (status, &reply["ready"]),
        (StatusCode::BAD_REQUEST, &json!(false)),
        "{reply}"
    );
    let (status, reply) = call(&router, predict()?).await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{reply}");
    assert_eq!(reply["error"]["code"], "not_ready", "{reply}");

    // The server ends with an error (the binary exits non-zero with it), without a signal.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let served = tokio::time::timeout(
        Duration::from_secs(10),
        infer::host::serve_app(listener, app, std::future::pending(), Duration::from_millis(100)),
    )
    .await
    .context("the server kept running without batch workers")?;
    assert!(
        matches!(served, Err(infer::host::ServeError::WorkersLost)),
        "{served:?}"
    );
    Ok(())
}

#[tokio::test]
async fn invented_methods_add_no_metrics_series() -> Result<()> {
    let app = common::router::app()?;
    for method in ["BREW", "PROPFIND", "X-SERIES-42"] {
        let request = Request::builder()
            .method(Method::from_bytes(method.as_bytes())?)
            .uri("/v1/predict")
            .body(Body::empty())?;
        call(&app, request).await?;
    }
    let response = tower::ServiceExt::oneshot(app.clone(), get("/metrics")?).await?;
    let text = String::from_utf8(axum::body::to_bytes(response.into_body(), usize::MAX).await?.to_vec())?;
    assert!(
        text.contains(r#"infer_http_requests_total{method="other",route="/v1/predict",status="405"} 3"#),
        "{text}"
    );
    for method in ["BREW", "PROPFIND", "X-SERIES-42"] {
        assert!(!text.contains(method), "{method} became a label:\n{text}");
    }
    Ok(())
}

#[test]
fn a_model_with_a_fixed_batch_other_than_one_is_refused_at_load() -> Result<()> {
    let model = TinyModel {
        fixed_batch: Some(2),
        ..TinyModel::rgb(32)
    };
    let err = match load(&model) {
        Ok(_) => anyhow::bail!("a graph fixed to batch 2 loaded"),
        Err(e) => e.downcast::<ModelError>()?,
    };
    let text = err.to_string();
    assert!(
        matches!(err, ModelError::Incompatible { .. }) && text.contains("fixed to 2") && text.contains("symbolic"),
        "{text}"
    );
    Ok(())
}

#[tokio::test]
async fn a_model_fixed_to_batch_one_serves_several_images() -> Result<()> {
    let model = TinyModel {
        fixed_batch: Some(1),
        ..TinyModel::rgb(32)
    };
    let app = infer::host::app(load(&model)?, BatchConfig::default(), Limits::default());
    let images: Vec<String> = [[250, 0, 0], [0, 0, 250]]
        .iter()
        .map(|c| common::router::b64(&solid(*c, 32, 32, ImageFormat::Png)))
        .collect();
    let (status, reply) = call(
        &app,
        post("/v1/predict", "application/json", json!({"images": images}).to_string())?,
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["predictions"][0]["label"], "red", "{reply}");
    assert_eq!(reply["predictions"][1]["label"], "blue", "{reply}");
    Ok(())
}

/// The router behind hyper on a loopback port, as `infer serve` runs it, on a runtime of its own
/// so that the tests can speak plain blocking HTTP/1.1 to it; stopped when dropped.
struct Served {
    _runtime: tokio::runtime::Runtime,
    addr: SocketAddr,
}

fn serve(limits: Limits) -> Result<Served> {
    serve_lingering(limits, infer::linger::DEFAULT_PLACES)
}

/// [`serve`], with `places` connections lingering at once.
fn serve_lingering(limits: Limits, places: usize) -> Result<Served> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let addr = runtime.block_on(async {
        let mut app = infer::host::build(load(&TinyModel::rgb(32))?, BatchConfig::default(), limits);
        app.linger.places = places;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let grace = Duration::from_secs(1);
        tokio::spawn(infer::host::serve_app(listener, app, std::future::pending(), grace));
        anyhow::Ok(addr)
    })?;
    Ok(Served {
        _runtime: runtime,
        addr,
    })
}

/// One keep-alive HTTP/1.1 connection.
struct Conn(BufReader<TcpStream>);

#[derive(Debug)]
struct Answer {
    status: u16,
    /// Lower-case names.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body).with_context(|| format!("not JSON: {self:?}"))
    }
}

impl Conn {
    fn open(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(Self(BufReader::new(stream)))
    }

    /// Sends a request's head, saying `length` bytes of body follow, and the first of them.
    fn start(&mut self, line: &str, content_type: &str, length: usize, first: &[u8]) -> Result<()> {
        let stream = self.0.get_mut();
        write!(
            stream,
            "{line} HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n"
        )?;
        stream.write_all(first)?;
        stream.flush()?;
        Ok(())
    }

    fn send(&mut self, line: &str, content_type: &str, body: &[u8]) -> Result<()> {
        self.start(line, content_type, body.len(), body)
    }

    fn rest(&mut self, rest: &[u8]) -> Result<()> {
        self.0.get_mut().write_all(rest)?;
        Ok(())
    }

    fn answer(&mut self) -> Result<Answer> {
        let mut line = String::new();
        self.0.read_line(&mut line)?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("no status line: {line:?} (the connection was closed)"))?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.0.read_line(&mut line)?;
            let Some((name, value)) = line.trim_end().split_once(':') else {
                break;
            };
            headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
        }
        let length = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .context("no content-length")?;
        let mut body = vec![0; length];
        self.0.read_exact(&mut body)?;
        Ok(Answer { status, headers, body })
    }
}

/// A prediction request that takes a place and keeps it: its head and half its body are sent,
/// the rest is held back until [`Holder::finish`].
struct Holder {
    conn: Conn,
    png: Vec<u8>,
}

impl Holder {
    fn start(addr: SocketAddr) -> Result<Self> {
        let png = png();
        let mut conn = Conn::open(addr)?;
        conn.start("POST /v1/predict", "image/png", png.len(), &png[..png.len() / 2])?;
        Ok(Self { conn, png })
    }

    /// Sends the rest of the body; the answer.
    fn finish(mut self) -> Result<Answer> {
        self.conn.rest(&self.png[self.png.len() / 2..])?;
        self.conn.answer()
    }
}

/// Sends `body` as a prediction on new connections until one is shed: until the holder has
/// its place, a request may take it instead (and is answered 400: not an image). That
/// connection and its 503.
fn first_shed(addr: SocketAddr, body: &[u8]) -> Result<(Conn, Answer)> {
    for _ in 0..100 {
        let mut conn = Conn::open(addr)?;
        conn.send("POST /v1/predict", "image/png", body)?;
        let answer = conn.answer()?;
        if answer.status == 503 {
            return Ok((conn, answer));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!("no request was shed while the only place was taken")
}

#[test]
fn a_request_over_the_limit_waits_for_a_place_before_it_is_shed() -> Result<()> {
    let served = serve(Limits {
        max_in_flight: 1,
        admission_wait: Duration::from_secs(60),
        deadline: Duration::from_secs(120),
        ..Limits::default()
    })?;
    // The holder takes the only place and keeps it while the rest of its body is not sent.
    let holder = Holder::start(served.addr)?;
    std::thread::sleep(Duration::from_millis(300));
    let mut waiter = Conn::open(served.addr)?;
    waiter.send("POST /v1/predict", "image/png", &png())?;
    // Shed at once, the waiter would have its 503 by now; it waits for the holder's place.
    std::thread::sleep(Duration::from_millis(300));
    let answer = holder.finish()?;
    assert_eq!(answer.status, 200, "{answer:?}");
    let answer = waiter.answer()?;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()?["predictions"][0]["label"], "red", "{answer:?}");
    Ok(())
}

#[test]
fn a_large_upload_that_expects_100_continue_is_shed_before_it_sends_its_body() -> Result<()> {
    let served = serve(Limits {
        max_in_flight: 1,
        admission_wait: Duration::from_millis(100),
        deadline: Duration::from_secs(120),
        ..Limits::default()
    })?;
    let holder = Holder::start(served.addr)?;
    // Once a small request is shed, the holder has the only place.
    first_shed(served.addr, b"x")?;

    // A body that is not read is never asked for: the client learns it is shed without sending
    // its 5 MB (a body read before shedding would make hyper answer 100 Continue first).
    let mut conn = Conn::open(served.addr)?;
    let stream = conn.0.get_mut();
    write!(
        stream,
        "POST /v1/predict HTTP/1.1\r\nHost: test\r\nContent-Type: image/jpeg\r\n\
         Content-Length: 5000000\r\nExpect: 100-continue\r\n\r\n"
    )?;
    stream.flush()?;
    let answer = conn.answer()?;
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(answer.json()?["error"]["code"], "overloaded", "{answer:?}");

    assert_eq!(holder.finish()?.status, 200);
    Ok(())
}

/// The lingering closes that /metrics counts, by outcome.
fn lingering(addr: SocketAddr) -> Result<BTreeMap<String, u64>> {
    let mut conn = Conn::open(addr)?;
    conn.send("GET /metrics", "text/plain", b"")?;
    Ok(infer::metrics::lingering_closes(&String::from_utf8(
        conn.answer()?.body,
    )?)?)
}

/// Waits until /metrics counts exactly `expected` lingering closes (the tasks that count them
/// end after the client's last read); the counts seen otherwise.
fn await_lingering(addr: SocketAddr, expected: &[(&str, u64)]) -> Result<()> {
    let expected: BTreeMap<String, u64> = expected.iter().map(|(o, n)| ((*o).to_owned(), *n)).collect();
    let mut seen = BTreeMap::new();
    for _ in 0..200 {
        seen = lingering(addr)?;
        if seen == expected {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    anyhow::bail!("lingering closes: expected {expected:?}, /metrics counts {seen:?}")
}

/// The limits of the lingering-close tests: one place, and a client over it shed soon.
fn one_place(max_body: usize) -> Limits {
    Limits {
        max_in_flight: 1,
        admission_wait: Duration::from_millis(100),
        max_body,
        deadline: Duration::from_secs(120),
        ..Limits::default()
    }
}

#[test]
fn a_shed_upload_too_long_to_read_first_gets_its_503_after_sending_its_body() -> Result<()> {
    // More than the socket buffers of both ends hold, so that the body must be read for the
    // client to finish writing it.
    let length = 16 * 1024 * 1024;
    let served = serve(one_place(length))?;
    let holder = Holder::start(served.addr)?;
    first_shed(served.addr, b"x")?;

    // A client that writes its whole body before it reads, as many do: the server answers 503
    // once the head is in, and must not close the connection under the body still coming (the
    // client's writes would fail with a reset, and its unread 503 be lost).
    let mut conn = Conn::open(served.addr)?;
    conn.start("POST /v1/predict", "image/jpeg", length, &[])?;
    conn.rest(&vec![0; length])
        .context("the upload was cut off after it was shed")?;
    let answer = conn.answer().context("the 503 was lost")?;
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(answer.json()?["error"]["code"], "overloaded", "{answer:?}");
    assert_eq!(answer.header("connection"), Some("close"), "{answer:?}");
    drop(conn);
    await_lingering(served.addr, &[("drained", 1)])?;

    assert_eq!(holder.finish()?.status, 200);
    Ok(())
}

#[test]
fn with_no_lingering_place_free_a_shed_upload_is_cut_off_and_counted() -> Result<()> {
    let length = 16 * 1024 * 1024;
    let served = serve_lingering(one_place(length), 0)?;
    let holder = Holder::start(served.addr)?;
    first_shed(served.addr, b"x")?;

    // The bound on places is what cuts clients off when too many linger at once: the test above
    // with none free.
    let mut conn = Conn::open(served.addr)?;
    conn.start("POST /v1/predict", "image/jpeg", length, &[])?;
    assert!(
        conn.rest(&vec![0; length]).is_err(),
        "a {length}-byte upload was read after its 503 with no lingering place"
    );
    await_lingering(served.addr, &[("refused", 1)])?;

    assert_eq!(holder.finish()?.status, 200);
    Ok(())
}

#[test]
fn a_shed_client_that_goes_on_sending_or_stops_is_closed_within_the_lingering_bounds() -> Result<()> {
    let max_body = 1024 * 1024;
    let served = serve(one_place(max_body))?;
    let holder = Holder::start(served.addr)?;
    first_shed(served.addr, b"x")?;

    // Past the body limit, what still comes is not read: a client that sends far more is closed.
    let mut conn = Conn::open(served.addr)?;
    let length = 64 * max_body;
    conn.start("POST /v1/predict", "image/jpeg", length, &[])?;
    assert!(
        conn.rest(&vec![0; length]).is_err(),
        "{length} bytes were read after a 503, with a body limit of {max_body}"
    );

    // A client that stops sending half way is closed after the idle time, its 503 first.
    let mut conn = Conn::open(served.addr)?;
    conn.start("POST /v1/predict", "image/jpeg", 100_000, &[0; 50_000])?;
    let answer = conn.answer()?;
    assert_eq!(answer.status, 503, "{answer:?}");
    conn.0.get_ref().set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut rest = Vec::new();
    conn.0
        .read_to_end(&mut rest)
        .context("a lingering connection that sent nothing was not closed")?;
    assert!(rest.is_empty(), "{rest:?}");
    await_lingering(served.addr, &[("idle", 1), ("over_bytes", 1)])?;

    assert_eq!(holder.finish()?.status, 200);
    Ok(())
}

#[test]
fn a_shed_request_keeps_its_connection_and_every_refusal_is_the_error_json() -> Result<()> {
    let served = serve(Limits {
        max_in_flight: 1,
        admission_wait: Duration::from_millis(100),
        max_body: 100_000,
        deadline: Duration::from_secs(120),
        ..Limits::default()
    })?;
    let holder = Holder::start(served.addr)?;
    // More than hyper reads with the head, less than a shed body that is read and dropped.
    let (mut conn, answer) = first_shed(served.addr, &[b'x'; 40_000])?;
    assert_eq!(answer.header("retry-after"), Some("1"), "{answer:?}");
    assert_eq!(answer.header("connection"), None, "{answer:?}");
    let reply = answer.json()?;
    assert_eq!(reply["error"]["code"], "overloaded", "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("limit of 1")),
        "{reply}"
    );

    // The same connection: a V2 request is shed in its protocol's shape, then health answers.
    let v2 = json!({"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32",
                                "data": vec![0.0f32; 3 * 32 * 32]}]})
    .to_string();
    conn.send("POST /v2/models/tiny/infer", "application/json", v2.as_bytes())
        .context("the connection of the shed request was closed")?;
    let answer = conn.answer().context("the connection of the shed request was closed")?;
    assert_eq!(answer.status, 503, "{answer:?}");
    assert!(
        answer.json()?["error"]
            .as_str()
            .is_some_and(|m| m.contains("limit of 1")),
        "{answer:?}"
    );
    conn.send("GET /healthz", "text/plain", b"")?;
    let answer = conn.answer()?;
    assert_eq!(answer.status, 200, "{answer:?}");

    // The place is free again: the holder is answered, and a body over the limit is refused in
    // the error JSON.
    assert_eq!(holder.finish()?.status, 200);
    conn.send("POST /v1/predict", "image/png", &vec![0; 100_001])?;
    let answer = conn.answer()?;
    assert_eq!(answer.status, 413, "{answer:?}");
    assert_eq!(answer.json()?["error"]["code"], "payload_too_large", "{answer:?}");
    Ok(())
}
