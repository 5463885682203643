//! The page at `GET /` in a real browser: headless Chromium (Debian's `chromium`, installed by
//! `cargo xtask setup` where apt-get exists), driven over the DevTools protocol by
//! `tests/page/browser.py`, loads the page from a real `infer serve`, uploads a photo through the
//! file input, and the class it renders first must be `/v1/predict`'s for the same file; the
//! same under an API Gateway-like stage prefix; a cut file shows the server's message. The
//! screenshots land in the test's output folder (`target/tmp/page*.png`).

mod common;

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};
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

fn browse(url: &str, image: &Path, screenshot: &Path) -> Result<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/page/browser.py");
    let output = Command::new("python3")
        .arg(&script)
        .arg(url)
        .arg(image)
        .arg(screenshot)
        .output()
        .context("running python3")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "browser.py failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).with_context(|| format!("browser.py printed {stdout:?}"))
}

/// `tests/page/stage_proxy.py`: the server under `/STAGE`, as API Gateway serves it.
struct StageProxy {
    child: std::process::Child,
    addr: String,
}

impl StageProxy {
    fn start(upstream: &str, stage: &str) -> Result<Self> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/page/stage_proxy.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .args([upstream, stage])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting stage_proxy.py")?;
        let mut line = String::new();
        let stdout = child.stdout.take().context("stdout")?;
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .with_context(|| format!("stage_proxy.py printed {line:?}"))?
            .to_owned();
        Ok(Self { child, addr })
    }
}

impl Drop for StageProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
