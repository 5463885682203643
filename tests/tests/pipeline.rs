//! The whole pipeline on a data set the test writes: `train fit` a width-4 ResNet-18 on
//! synthetic CIFAR-binary data whose class is its colour, export ONNX, serve it over HTTP on a
//! loopback port, post images in every input form, and check that the served labels are the
//! `tch` model's argmax on the same images. The served probabilities of images that are not flat
//! colours, not square and not the model's size are checked stage by stage against references
//! written here: the server's view of each image against libtorch's antialiased bilinear resize,
//! and its probabilities against libtorch's on that view normalised with the model's mean and
//! std, within 1e-4: a wrong mean, std or resize in the server fails it. Then the same
//! exported file under `cargo lambda watch`, whose reply to an API Gateway v2 event must equal
//! the server's.

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

/// Largest difference allowed between the served probabilities and libtorch's: both run the same
/// float32 network on the same pixels, in other kernels.
const TOLERANCE: f64 = 1e-4;

/// Largest difference allowed, in 8-bit levels, between the server's resize and libtorch's
/// (float) one: rounding to 8 bits between its two passes and at the end, and its fixed-point
/// weights, make up to one level.
const RESIZE_LEVELS: f64 = 1.5;

/// Images that a flat-colour check would pass whatever the preprocessing: gradients and noise
/// over a class colour, non-square, larger and smaller than the model's 32x32 input.
fn varied_images() -> Vec<RgbImage> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 58) as i32 - 32
    };
    let mut out = Vec::new();
    for (i, &(w, h)) in [(48, 40), (64, 96), (20, 28), (33, 31), (32, 32), (57, 19)]
        .iter()
        .enumerate()
    {
        let base = BASE[i % 3];
        out.push(RgbImage::from_fn(w, h, |x, y| {
            let (fx, fy) = (x as f32 / (w - 1) as f32, y as f32 / (h - 1) as f32);
            let ramp = [fx, fy, 1.0 - fx * fy];
            Rgb(std::array::from_fn(|c| {
                let v = f32::from(base[c]) * 0.6 + 100.0 * ramp[c] + noise() as f32;
                v.clamp(0.0, 255.0) as u8
            }))
        }));
    }
    out
}

/// How [`reference_resize`] resizes.
#[derive(Debug, Clone, Copy)]
enum Resize {
    /// The filter the server documents: a triangle whose support widens with the scale when
    /// downsizing, as Pillow's BILINEAR.
    Antialiased,
    /// Plain bilinear interpolation: wrong when downsizing.
    Bilinear,
    /// Nearest neighbour: wrong.
    Nearest,
}

/// libtorch's resize of `img` to the model's 32x32 input, in floats on the 0-255 scale, NCHW:
/// computed independently of the server's own implementation.
fn reference_resize(img: &RgbImage, how: Resize) -> Tensor {
    let pixels = rgb_tensor(img);
    if img.dimensions() == (32, 32) {
        return pixels;
    }
    match how {
        Resize::Antialiased => pixels.internal_upsample_bilinear2d_aa([32, 32], false, None, None),
        Resize::Bilinear => pixels.upsample_bilinear2d([32, 32], false, None, None),
        Resize::Nearest => pixels.upsample_nearest2d([32, 32], None, None),
    }
}

/// An RGB image as a `[1, 3, H, W]` float tensor of its 8-bit values.
fn rgb_tensor(img: &RgbImage) -> Tensor {
    let (w, h) = img.dimensions();
    Tensor::from_slice(img.as_raw())
        .view([i64::from(h), i64::from(w), 3])
        .permute([2, 0, 1])
        .unsqueeze(0)
        .to_kind(Kind::Float)
}

/// `(pixel / 255 - mean) / std` per channel, written here.
fn reference_normalise(pixels: &Tensor, mean: [f32; 3], std: [f32; 3]) -> Tensor {
    let mean = Tensor::from_slice(&mean).view([1, 3, 1, 1]);
    let std = Tensor::from_slice(&std).view([1, 3, 1, 1]);
    (pixels / 255.0 - mean) / std
}

/// libtorch's softmax of the checkpoint's model on the 32x32 `views`, normalised with `mean`
/// and `std` by [`reference_normalise`].
fn reference_probabilities(
    checkpoint: &Path,
    views: &[RgbImage],
    mean: [f32; 3],
    std: [f32; 3],
) -> Result<Vec<Vec<f64>>> {
    let (_vs, model, _info) = train::checkpoint::load_for_inference(checkpoint, Device::Cpu)?;
    let xs = Tensor::cat(
        &views
            .iter()
            .map(|v| reference_normalise(&rgb_tensor(v), mean, std))
            .collect::<Vec<_>>(),
        0,
    );
    let logits = tch::no_grad(|| model.forward_checked(&xs, false))?;
    let p = logits.to_kind(Kind::Double).softmax(-1, Kind::Double);
    let flat = Vec::<f64>::try_from(p.reshape([-1]))?;
    Ok(flat
        .chunks(flat.len() / views.len().max(1))
        .map(<[f64]>::to_vec)
        .collect())
}

/// Every class's probability of the reply's first prediction, by class id.
fn served_probabilities(reply: &Value, classes: usize) -> Result<Vec<f64>> {
    let top = reply["predictions"][0]["top_k"]
        .as_array()
        .with_context(|| format!("no top_k in {reply}"))?;
    ensure!(top.len() == classes, "{reply}");
    let mut out = vec![f64::NAN; classes];
    for entry in top {
        let id = entry["class_id"].as_u64().context("class_id")? as usize;
        *out.get_mut(id).context("class_id out of range")? = entry["probability"].as_f64().context("probability")?;
    }
    Ok(out)
}

/// The image the server fed the model (`?input_image=true`: a PNG data URL).
fn served_view(reply: &Value) -> Result<RgbImage> {
    let url = reply["predictions"][0]["input_image"]
        .as_str()
        .with_context(|| format!("no input_image in {reply}"))?;
    let b64 = url
        .strip_prefix("data:image/png;base64,")
        .context("not a PNG data URL")?;
    let png = base64::engine::general_purpose::STANDARD.decode(b64)?;
    Ok(image::load_from_memory_with_format(&png, ImageFormat::Png)?.into_rgb8())
}

fn largest_difference(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Largest difference, in 8-bit levels, between a served 32x32 view and a reference resize.
fn largest_level_difference(view: &RgbImage, reference: &Tensor) -> Result<f64> {
    let diff = (rgb_tensor(view) - reference).abs().max();
    Ok(diff.double_value(&[]))
}

/// The served mean and std, read from the model's metadata as the server reports it.
fn served_normalisation(base: &str) -> Result<([f32; 3], [f32; 3])> {
    let mut resp = ureq::get(&format!("{base}/v1/model")).call()?;
    let info: Value = serde_json::from_reader(resp.body_mut().as_reader())?;
    let triple = |key: &str| -> Result<[f32; 3]> {
        let v: Vec<f32> = info["metadata"][key]
            .as_array()
            .with_context(|| format!("no metadata.{key} in {info}"))?
            .iter()
            .map(|x| x.as_f64().map(|x| x as f32).context("a number"))
            .collect::<Result<_>>()?;
        v.try_into().map_err(|v| anyhow::anyhow!("metadata.{key} is {v:?}"))
    };
    Ok((triple("mean")?, triple("std")?))
}

/// The server's path (decode, resize, normalise, ONNX Runtime) against references written here,
/// stage by stage, on [`varied_images`]:
/// - its 32x32 view of each image is libtorch's antialiased bilinear resize of the original
///   within [`RESIZE_LEVELS`] (it resizes in 8 bits, in two passes, with fixed-point weights);
/// - its probabilities are libtorch's softmax of the trained network on that view, normalised
///   here with the model metadata's mean and std (which must be training's), within [`TOLERANCE`].
///
/// And the comparisons' power: a wrong mean or std, or a resize without antialiasing, would fail.
fn served_path_matches_libtorch(base: &str, checkpoint: &Path) -> Result<()> {
    let (_vs, _model, info) = train::checkpoint::load_for_inference(checkpoint, Device::Cpu)?;
    let (mean, std) = served_normalisation(base)?;
    ensure!(
        (mean, std) == (info.mean, info.std),
        "the served model's metadata says mean {mean:?} std {std:?}; training used {:?} {:?}",
        info.mean,
        info.std
    );
    let images = varied_images();
    let (mut served, mut views) = (Vec::new(), Vec::new());
    for img in &images {
        let reply = post(
            &format!("{base}/v1/predict?top_k=3&input_image=true"),
            "image/png",
            &png(img)?,
        )?;
        served.push(served_probabilities(&reply, CLASSES.len())?);
        views.push(served_view(&reply)?);
    }

    let mut caught = [0.0f64; 2];
    for (img, view) in images.iter().zip(&views) {
        ensure!(view.dimensions() == (32, 32), "the model saw {:?}", view.dimensions());
        let (w, h) = img.dimensions();
        let off = largest_level_difference(view, &reference_resize(img, Resize::Antialiased))?;
        ensure!(
            off <= RESIZE_LEVELS,
            "{w}x{h}: the served view is {off} levels from libtorch's resize"
        );
        if (w, h) == (32, 32) {
            ensure!(view == img, "an image of the model's size was changed");
        }
        for (i, wrong) in [Resize::Bilinear, Resize::Nearest].into_iter().enumerate() {
            caught[i] = caught[i].max(largest_level_difference(view, &reference_resize(img, wrong))?);
        }
    }
    ensure!(
        caught.iter().all(|&c| c > 4.0 * RESIZE_LEVELS),
        "a resize without antialiasing / nearest-neighbour is only {caught:?} levels off: the check could not catch it"
    );

    let want = reference_probabilities(checkpoint, &views, mean, std)?;
    let diff = largest_difference(&served, &want);
    ensure!(
        diff < TOLERANCE,
        "served probabilities differ from libtorch's by {diff:e}:\nserved {served:?}\nlibtorch {want:?}"
    );
    // Probabilities pinned near 0 and 1 would hide a difference: these images are not.
    let spread = want.iter().flatten().filter(|p| (0.01..0.99).contains(*p)).count();
    ensure!(
        spread >= images.len(),
        "libtorch's probabilities are saturated: {want:?}"
    );

    let wrong = [
        ("ImageNet's mean", [0.485, 0.456, 0.406], std),
        ("a red mean off by 0.01", [mean[0] + 0.01, mean[1], mean[2]], std),
        ("a blue std off by 0.01", mean, [std[0], std[1], std[2] + 0.01]),
        ("mean and std swapped", std, mean),
    ];
    for (what, mean, std) in wrong {
        let off = largest_difference(&served, &reference_probabilities(checkpoint, &views, mean, std)?);
        ensure!(
            off > 10.0 * TOLERANCE,
            "{what} moves the probabilities by only {off:e}: the comparison could not catch it"
        );
    }
    Ok(())
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

    served_path_matches_libtorch(&base, &report.checkpoint)?;

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
