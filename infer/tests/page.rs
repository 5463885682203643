//! The page at `GET /` in a real browser: headless Chromium (Debian's `chromium`, installed by
//! `cargo xtask setup` where apt-get exists), driven over the DevTools protocol by
//! `tests/page/browser.rs`, loads the page from a real `infer serve`, uploads a photo through the
//! file input, and the class it renders first must be `/v1/predict`'s for the same file; the
//! same under an API Gateway-like stage prefix (a proxy in this file); a cut file shows the server's message. The
//! screenshots land in the test's output folder (`target/tmp/page*.png`).

#[path = "page/browser.rs"]
mod browser;
mod common;

use std::path::Path;

use anyhow::{Context, Result};
use browser::browse;
use common::server::start;
use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
use infer::testing::{TinyModel, write_with_sidecar};
use serde_json::Value;
use sha2::Digest as _;

/// A photo-like JPEG: smooth shading and grain, mostly blue.
fn photo() -> Result<Vec<u8>> {
    let image = RgbImage::from_fn(160, 120, |x, y| {
        let grain = ((x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)) % 41) as u8;
        Rgb([
            20 + (x / 4) as u8 + grain,
            60 + (y / 3) as u8,
            170 + (x / 8) as u8 + grain,
        ])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(image).write_to(&mut out, ImageFormat::Jpeg)?;
    Ok(out.into_inner())
}

/// What an API Gateway stage does to paths: the upstream server under `/STAGE`, the prefix taken
/// off before forwarding; anything else is a 404, as API Gateway answers it.
struct StageProxy {
    addr: String,
    // Serves until the proxy is dropped.
    _runtime: tokio::runtime::Runtime,
}

impl StageProxy {
    fn start(upstream: &str, stage: &str) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?.to_string();
        let (upstream, prefix) = (upstream.to_owned(), format!("/{}", stage.trim_matches('/')));
        let app = axum::Router::new()
            .fallback(move |req: axum::extract::Request| forward(upstream.clone(), prefix.clone(), req));
        runtime.spawn(async move { axum::serve(listener, app).await });
        Ok(Self {
            addr,
            _runtime: runtime,
        })
    }
}

async fn forward(upstream: String, prefix: String, req: axum::extract::Request) -> axum::response::Response {
    use axum::response::IntoResponse;
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let rest = match target.strip_prefix(&prefix) {
        Some(rest) if rest.is_empty() || rest.starts_with(['/', '?']) => rest,
        _ => {
            return (
                axum::http::StatusCode::NOT_FOUND,
                format!("not under the stage {prefix}"),
            )
                .into_response();
        }
    };
    let url = format!("http://{upstream}/{}", rest.trim_start_matches('/'));
    let (parts, body) = req.into_parts();
    let reply = async {
        let body = axum::body::to_bytes(body, usize::MAX).await?;
        tokio::task::spawn_blocking(move || -> Result<axum::response::Response> {
            let mut request = axum::http::Request::builder().method(parts.method).uri(url);
            for (name, value) in &parts.headers {
                if name != "host" && name != "connection" {
                    request = request.header(name, value);
                }
            }
            let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
            let mut upstream_reply = agent.run(request.body(body.to_vec())?)?;
            let mut reply = axum::response::Response::builder().status(upstream_reply.status());
            for (name, value) in upstream_reply.headers() {
                if !["transfer-encoding", "connection", "content-length"].contains(&name.as_str()) {
                    reply = reply.header(name, value);
                }
            }
            let data = upstream_reply.body_mut().with_config().limit(u64::MAX).read_to_vec()?;
            Ok(reply.body(axum::body::Body::from(data))?)
        })
        .await?
    };
    match reply.await {
        Ok(reply) => reply,
        Err(err) => (axum::http::StatusCode::BAD_GATEWAY, format!("{err:#}")).into_response(),
    }
}

#[test]
fn the_page_in_chromium_shows_what_v1_predict_answers() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let model_bytes = TinyModel::rgb(32).build();
    let model = write_with_sidecar(dir.path(), "tiny.onnx", &model_bytes)?;
    let server = start(&model, &[])?;
    let url = format!("http://{}/", server.addr);

    let photo = photo()?;
    let file = dir.path().join("photo.jpg");
    std::fs::write(&file, &photo)?;
    let predicted: Value = ureq::post(&format!("{url}v1/predict"))
        .header("Content-Type", "image/jpeg")
        .send(&photo[..])?
        .body_mut()
        .read_json()?;
    let want = predicted["predictions"][0]["label"].as_str().context("label")?;

    let out = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let screenshot = out.join("page.png");
    let page = browse(&url, &file, &screenshot)?;
    assert_eq!(page["state"], "done", "{page}");
    assert_eq!(page["top_label"], want, "{page}");
    assert_eq!(want, "blue");
    // Every class of the tiny model as a bar, with its probability.
    assert_eq!(page["labels"].as_array().map(Vec::len), Some(3), "{page}");
    // The model's 32x32 view, its identity and the server's timings.
    assert_eq!(page["seen"], serde_json::json!([32, 32]), "{page}");
    let shown = page["model"].as_str().unwrap_or_default();
    assert!(
        shown.contains("tiny") && shown.contains(&hex::encode(sha2::Sha256::digest(&model_bytes))),
        "{shown}"
    );
    assert!(page["timing"].as_str().is_some_and(|t| t.contains(" ms")), "{page}");
    let png = image::open(&screenshot)?;
    assert!(
        png.width() >= 600 && png.height() >= 400,
        "{}x{}",
        png.width(),
        png.height()
    );

    // Under an API Gateway stage prefix, opened without a trailing slash, the page still finds
    // the API: every URL in it is relative to where it was loaded.
    let proxy = StageProxy::start(&server.addr, "prod")?;
    let page = browse(
        &format!("http://{}/prod", proxy.addr),
        &file,
        &out.join("page-stage.png"),
    )?;
    assert_eq!(
        (&page["state"], &page["top_label"]),
        (&"done".into(), &want.into()),
        "{page}"
    );
    assert_eq!(page["seen"], serde_json::json!([32, 32]), "{page}");

    // A cut upload shows the server's message instead of classes.
    let cut = dir.path().join("cut.jpg");
    std::fs::write(&cut, &photo[..photo.len() * 2 / 3])?;
    let page = browse(&url, &cut, &out.join("page-error.png"))?;
    assert_eq!(page["state"], "error", "{page}");
    assert!(
        page["error"]
            .as_str()
            .is_some_and(|e| e.contains("end-of-image marker")),
        "{page}"
    );
    Ok(())
}
