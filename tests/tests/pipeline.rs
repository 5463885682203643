//! The whole pipeline on a data set the test writes: `train fit` a width-4 ResNet-18 on
//! synthetic CIFAR-binary data whose class is its colour, export ONNX, serve it over HTTP on a
//! loopback port, post images in every input form, and check that the served labels are the
//! `tch` model's argmax on the same images. Then the same exported file under
//! `cargo lambda watch`, whose reply to an API Gateway v2 event must equal the server's.

use std::fs;
use std::io::Write;
use std::net::TcpListener as StdListener;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use base64::Engine as _;
use image::{ImageFormat, Rgb, RgbImage};
use infer::testing::lambda::{LambdaWatch, api_gateway_v2_event};
use serde_json::{Value, json};
use tch::{Device, Kind, Tensor};

const CLASSES: [&str; 3] = ["crimson", "lime", "navy"];
const BASE: [[u8; 3]; 3] = [[200, 40, 40], [40, 200, 40], [40, 40, 200]];

/// A 32x32 image of class `class`: its base colour with per-pixel noise from `seed`.
fn image(class: usize, seed: u64) -> RgbImage {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    RgbImage::from_fn(32, 32, |_, _| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let noise = |shift: u32| ((state >> shift) & 0x3f) as i16 - 32;
        let px = |c: usize, shift| (i16::from(BASE[class][c]) + noise(shift)).clamp(0, 255) as u8;
        Rgb([px(0, 20), px(1, 30), px(2, 40)])
    })
}

/// One CIFAR binary record: the label byte, then the red, green and blue planes.
fn record(class: usize, img: &RgbImage) -> Vec<u8> {
    let mut out = vec![class as u8];
    for c in 0..3 {
        out.extend(img.pixels().map(|p| p.0[c]));
    }
    out
}

fn write_dataset(root: &Path) -> Result<()> {
    fs::write(root.join("batches.meta.txt"), CLASSES.join("\n") + "\n")?;
    let mut seed = 0;
    let mut batch = |n: usize| {
        (0..n)
            .flat_map(|i| {
                seed += 1;
                record(i % 3, &image(i % 3, seed))
            })
            .collect::<Vec<u8>>()
    };
    for i in 1..=5 {
        fs::write(root.join(format!("data_batch_{i}.bin")), batch(60))?;
    }
    fs::write(root.join("test_batch.bin"), batch(60))?;
    Ok(())
}

fn png(img: &RgbImage) -> Result<Vec<u8>> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, ImageFormat::Png)?;
    Ok(out.into_inner())
}

/// The labels the trained `tch` model gives, normalised exactly as training did.
fn tch_labels(checkpoint: &Path, images: &[RgbImage]) -> Result<Vec<String>> {
    let (_vs, model, info) = train::checkpoint::load_for_inference(checkpoint, Device::Cpu)?;
    let mut data = Vec::new();
    for img in images {
        for c in 0..3 {
            data.extend(
                img.pixels()
                    .map(|p| (f32::from(p.0[c]) / 255.0 - info.mean[c]) / info.std[c]),
            );
        }
    }
    let xs = Tensor::from_slice(&data).view([images.len() as i64, 3, 32, 32]);
    let logits = tch::no_grad(|| model.forward_checked(&xs, false))?;
    let ids = Vec::<i64>::try_from(logits.argmax(-1, false).to_kind(Kind::Int64))?;
    Ok(ids.into_iter().map(|i| info.class_names[i as usize].clone()).collect())
}

fn top_labels(reply: &Value) -> Result<Vec<String>> {
    reply["predictions"]
        .as_array()
        .with_context(|| format!("no predictions in {reply}"))?
        .iter()
        .map(|p| p["label"].as_str().map(str::to_owned).context("label"))
        .collect()
}

/// The reply without what differs between two identical requests (timings, request ids).
fn comparable(mut reply: Value) -> Value {
    if let Some(obj) = reply.as_object_mut() {
        obj.remove("timing");
        obj.remove("request_id");
    }
    reply
}

fn post(url: &str, content_type: &str, body: &[u8]) -> Result<Value> {
    let mut resp = ureq::post(url).header("content-type", content_type).send(body)?;
    Ok(serde_json::from_reader(resp.body_mut().as_reader())?)
}

/// Serves `model` with infer's router on a free loopback port until the returned sender drops.
fn serve(
    model: &Path,
) -> Result<(
    String,
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<Result<()>>,
)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let source = infer::source::ModelSource::File(model.to_owned());
    let classifier = runtime.block_on(infer::host::load_classifier(
        &source,
        &Default::default(),
        &infer::model::LoadOptions::uncached(1),
    ))?;
    let app = infer::host::app(Arc::clone(&classifier), Default::default(), Default::default());
    let std_listener = StdListener::bind("127.0.0.1:0")?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = std::thread::spawn(move || -> Result<()> {
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener)?;
            infer::host::serve(listener, app, async move {
                let _ = stopped.await;
            })
            .await?;
            Ok(())
        })
    });
    Ok((format!("http://{addr}"), stop, handle))
}

#[test]
fn train_export_serve_and_lambda_agree() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    fs::create_dir_all(&data)?;
    write_dataset(&data)?;

    // Train: two epochs of a width-4 network, seconds on a CPU.
    let run = dir.path().join("run");
    let settings = train::fit::RunSettings {
        data: data.clone(),
        out: run.clone(),
        device: Device::Cpu,
        resume: false,
        channels_last: false,
        amp: false,
        progress: false,
        export: true,
        stop_after: None,
    };
    let opts = train::options::FitOptions {
        epochs: 3,
        batch_size: 30,
        width: 4,
        lr: 0.05,
        ..Default::default()
    };
    let report = train::fit::fit(&settings, &opts)?;
    let accuracy = report.final_eval.accuracy;
    ensure!(
        accuracy > 0.8,
        "test accuracy {accuracy} is not well above chance (0.33)"
    );
    let onnx = report.onnx.clone().context("fit exported no model.onnx")?;

    // Fresh images, none seen in training: a few of each class.
    let images: Vec<RgbImage> = (0..9).map(|i| image(i % 3, 10_000 + i as u64)).collect();
    let expected = tch_labels(&report.checkpoint, &images)?;
    let truth: Vec<String> = (0..9).map(|i| CLASSES[i % 3].to_owned()).collect();
    ensure!(expected == truth, "the trained model itself is wrong: {expected:?}");

    let (base, stop, server) = serve(&onnx)?;
    let url = format!("{base}/v1/predict?top_k=2");
    let pngs = images.iter().map(png).collect::<Result<Vec<_>>>()?;
    let b64 = base64::engine::general_purpose::STANDARD;

    // Raw body, one request per image.
    let mut raw_replies = Vec::new();
    for (png, want) in pngs.iter().zip(&expected) {
        let reply = post(&url, "image/png", png)?;
        ensure!(top_labels(&reply)? == [want.clone()], "raw: {reply}");
        raw_replies.push(reply);
    }
    // Multipart form data in field `file`, as the student's FastAPI clients send.
    let boundary = "e2e-boundary-7f3a";
    let mut form = Vec::new();
    write!(
        form,
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n"
    )?;
    write!(form, "Content-Type: image/png\r\n\r\n")?;
    form.extend_from_slice(&pngs[1]);
    write!(form, "\r\n--{boundary}--\r\n")?;
    let reply = post(&url, &format!("multipart/form-data; boundary={boundary}"), &form)?;
    ensure!(top_labels(&reply)? == [expected[1].clone()], "multipart: {reply}");
    // JSON, one image and a batch.
    let one = json!({ "image": b64.encode(&pngs[2]) }).to_string();
    let reply = post(&url, "application/json", one.as_bytes())?;
    ensure!(top_labels(&reply)? == [expected[2].clone()], "json: {reply}");
    let batch = json!({ "images": pngs.iter().map(|p| b64.encode(p)).collect::<Vec<_>>() }).to_string();
    let reply = post(&url, "application/json", batch.as_bytes())?;
    ensure!(top_labels(&reply)? == expected, "batch: {reply}");

    // The Lambda path, same file, same image: the same reply.
    let lambda = lambda_reply(&onnx, &pngs[0])?;
    ensure!(lambda["statusCode"] == 200, "{lambda}");
    let body: Value = serde_json::from_str(lambda["body"].as_str().context("lambda body")?)?;
    assert_eq!(comparable(body), comparable(raw_replies[0].clone()));

    drop(stop);
    server.join().map_err(|_| anyhow::anyhow!("server thread panicked"))??;
    Ok(())
}

/// `cargo lambda watch` serving `model`, and one `cargo lambda invoke` with an API Gateway v2
/// event carrying `png` base64-encoded, as API Gateway delivers binary bodies.
fn lambda_reply(model: &Path, png: &[u8]) -> Result<Value> {
    let watch = LambdaWatch::start(model)?;
    let event = api_gateway_v2_event("/v1/predict", "top_k=2", "image/png", png)?;
    // The first call also waits for the emulator to start.
    Ok(watch.invoke(&event, Duration::from_secs(600))?)
}
