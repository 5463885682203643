//! What reduced-scale JPEG decoding (`preprocess::jpeg`) costs and changes: for each photo, at
//! its own size and enlarged 2x and 4x, the time of the serving path's preprocessing and of a
//! full decode + resize, and how far apart the two model views are (grey levels); for every
//! JPEG under a folder (the CIFAR-10 test split), the model's top-1 label through both paths,
//! on the file itself and on it enlarged to 1024x1024 (a size the reduced path takes).
//!
//! ```text
//! cargo run --release -p infer --example reduced_decode -- MODEL.onnx CIFAR_TEST_DIR PHOTO.jpg...
//! ```
//!
//! Figures in infer/BENCHMARKS.md ("Reduced-scale JPEG decoding").

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use image::codecs::jpeg::JpegEncoder;
use image::imageops::FilterType;
use image::{DynamicImage, RgbImage};
use infer::model::{Classifier, Overrides, default_threads};
use infer::preprocess::{DecodeLimits, Normalisation, decode, model_view, normalise_into, preprocess_seen, to_rgb};
use infer::scores::top_k;

/// CIFAR images are enlarged to this side: 1/4 of it still has 8 pixels per model pixel.
const ENLARGED: u32 = 1024;
const BATCH: usize = 200;

fn main() -> Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [model, dir, photos @ ..] = args.as_slice() else {
        bail!("usage: reduced_decode MODEL.onnx CIFAR_TEST_DIR PHOTO.jpg...");
    };
    let bytes = std::fs::read(model).with_context(|| format!("reading {}", model.display()))?;
    let name = model.display().to_string();
    let classifier = Classifier::load(&bytes, &name, &name, &Overrides::default(), default_threads())?;
    let norm = Normalisation::from_info(classifier.info());
    photo_table(photos, &norm)?;
    agreement(&classifier, &norm, &jpegs_under(dir)?)
}

/// The two ways to the model's view of one file.
struct Views {
    served: RgbImage,
    served_input: Vec<f32>,
    full: RgbImage,
    full_input: Vec<f32>,
}

fn views(bytes: &[u8], norm: &Normalisation) -> Result<Views> {
    let limits = DecodeLimits::default();
    let mut served_input = Vec::new();
    let served = preprocess_seen(bytes, &limits, norm, &mut served_input)?;
    let rgb = to_rgb(decode(bytes, &limits)?);
    let full = model_view(&rgb, norm).into_owned();
    let mut full_input = Vec::new();
    normalise_into(&rgb, norm, &mut full_input);
    Ok(Views {
        served,
        served_input,
        full,
        full_input,
    })
}

/// Largest and mean absolute difference, in grey levels, over every channel of every pixel.
fn difference(a: &RgbImage, b: &RgbImage) -> (u8, f64) {
    let diffs: Vec<u8> = a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| x.abs_diff(*y)).collect();
    let sum: u64 = diffs.iter().map(|&d| u64::from(d)).sum();
    (
        diffs.iter().copied().max().unwrap_or(0),
        sum as f64 / diffs.len().max(1) as f64,
    )
}

fn jpeg(image: &DynamicImage) -> Result<Vec<u8>> {
    let mut out = Cursor::new(Vec::new());
    image.write_with_encoder(JpegEncoder::new_with_quality(&mut out, 90))?;
    Ok(out.into_inner())
}

/// Median milliseconds of `f` over about half a second.
fn median_ms(mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 5 || (start.elapsed().as_secs_f64() < 0.5 && times.len() < 500) {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn photo_table(photos: &[PathBuf], norm: &Normalisation) -> Result<()> {
    let limits = DecodeLimits::default();
    println!("| photo | size | JPEG bytes | served path ms | full decode + resize ms | ratio | max diff | mean diff |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for path in photos {
        let original = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let image = decode(&original, &limits)?;
        for factor in [1, 2, 4] {
            let bytes = if factor == 1 {
                original.clone()
            } else {
                let (w, h) = (image.width() * factor, image.height() * factor);
                jpeg(&image.resize_exact(w, h, FilterType::Lanczos3))?
            };
            let v = views(&bytes, norm)?;
            let served = median_ms(|| {
                let mut input = Vec::new();
                preprocess_seen(&bytes, &limits, norm, &mut input)?;
                Ok(())
            })?;
            let full = median_ms(|| {
                let rgb = to_rgb(decode(&bytes, &limits)?);
                let mut input = Vec::new();
                normalise_into(&rgb, norm, &mut input);
                Ok(())
            })?;
            let (max, mean) = difference(&v.served, &v.full);
            println!(
                "| {} | {}x{} | {} | {served:.2} | {full:.2} | {:.2} | {max} | {mean:.3} |",
                path.file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                image.width() * factor,
                image.height() * factor,
                bytes.len(),
                full / served
            );
        }
    }
    Ok(())
}

fn jpegs_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).with_context(|| format!("reading {}", folder.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("jpg")) {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// One file's top-1 labels: as is (served, full) and enlarged (served, full), and the
/// enlarged views' difference.
struct Outcome {
    labels: [usize; 4],
    max_diff: u8,
    mean_diff: f64,
}

fn agreement(classifier: &Classifier, norm: &Normalisation, files: &[PathBuf]) -> Result<()> {
    let started = Instant::now();
    let mut outcomes = Vec::with_capacity(files.len());
    for chunk in files.chunks(BATCH) {
        // Enlarging and encoding dominate: two threads, one per core.
        let halves: Vec<&[PathBuf]> = chunk.chunks(chunk.len().div_ceil(2)).collect();
        let prepared = std::thread::scope(|s| {
            let handles: Vec<_> = halves
                .iter()
                .map(|half| s.spawn(|| half.iter().map(|p| prepare(p, norm)).collect::<Result<Vec<_>>>()))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .map_err(|_| anyhow::anyhow!("a preprocessing thread panicked"))?
                })
                .collect::<Result<Vec<_>>>()
        })?;
        let prepared: Vec<(Views, Views)> = prepared.into_iter().flatten().collect();
        let mut labels = Vec::new();
        for pick in [
            |p: &(Views, Views)| p.0.served_input.clone(),
            |p: &(Views, Views)| p.0.full_input.clone(),
            |p: &(Views, Views)| p.1.served_input.clone(),
            |p: &(Views, Views)| p.1.full_input.clone(),
        ] {
            let input: Vec<f32> = prepared.iter().flat_map(pick).collect();
            labels.push(
                classifier
                    .run(input, prepared.len())?
                    .iter()
                    .map(|l| top1(l))
                    .collect::<Vec<_>>(),
            );
        }
        for (i, (_, enlarged)) in prepared.iter().enumerate() {
            let (max_diff, mean_diff) = difference(&enlarged.served, &enlarged.full);
            outcomes.push(Outcome {
                labels: [labels[0][i], labels[1][i], labels[2][i], labels[3][i]],
                max_diff,
                mean_diff,
            });
        }
        eprint!("\r{} / {} files", outcomes.len(), files.len());
    }
    eprintln!(" in {:.0} s", started.elapsed().as_secs_f64());
    let n = outcomes.len();
    let same = |a: usize, b: usize| outcomes.iter().filter(|o| o.labels[a] == o.labels[b]).count();
    println!("\n{n} JPEGs under the folder, top-1 labels:");
    println!("- as they are, served path vs full decode: {}/{n} agree", same(0, 1));
    println!(
        "- enlarged to {ENLARGED}x{ENLARGED} (JPEG q90), served (reduced-scale) vs full decode: {}/{n} agree",
        same(2, 3)
    );
    println!("- enlarged, served vs the original file: {}/{n} agree", same(2, 0));
    println!("- enlarged, full decode vs the original file: {}/{n} agree", same(3, 0));
    let worst = outcomes.iter().map(|o| o.max_diff).max().unwrap_or(0);
    let over_one = outcomes.iter().filter(|o| o.max_diff > 1).count();
    let mean = outcomes.iter().map(|o| o.mean_diff).sum::<f64>() / n.max(1) as f64;
    println!(
        "- enlarged model views, served vs full: largest difference {worst} grey levels; {over_one}/{n} files differ by more than 1 anywhere; mean {mean:.3}"
    );
    Ok(())
}

fn top1(logits: &[f32]) -> usize {
    top_k(logits, &[], 1).first().map_or(0, |best| best.class_id)
}

fn prepare(path: &Path, norm: &Normalisation) -> Result<(Views, Views)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let original = views(&bytes, norm).with_context(|| path.display().to_string())?;
    let image = decode(&bytes, &DecodeLimits::default())?;
    let enlarged = jpeg(&image.resize_exact(ENLARGED, ENLARGED, FilterType::CatmullRom))?;
    let enlarged = views(&enlarged, norm).with_context(|| format!("{} enlarged", path.display()))?;
    Ok((original, enlarged))
}
