//! Test-set accuracy of ONNX classifiers as the service computes it: every image goes through
//! the serving path (decode by content, RGB, resize, normalise from the model's metadata) and
//! one shared session, so the figure includes everything `infer serve` does to a request.
//! With two or more models it also counts how often their top-1 labels agree, which is how
//! the float16 export's accuracy change is measured (`train/EXPORT.md`).
//!
//! ```text
//! cargo run --release -p infer --example accuracy -- DIR MODEL.onnx [MODEL.onnx ...]
//! ```
//!
//! `DIR` holds one folder of images per class (`DIR/<class>/*`), as the CIFAR-10 image-folder
//! test split does; folder names must be the model's class names.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use infer::model::{Classifier, Overrides, default_threads};
use infer::preprocess::{DecodeLimits, Normalisation, preprocess_into};

const BATCH: usize = 250;

fn main() -> Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [dir, models @ ..] = args.as_slice() else {
        bail!("usage: accuracy DIR MODEL.onnx [MODEL.onnx ...]");
    };
    ensure!(!models.is_empty(), "usage: accuracy DIR MODEL.onnx [MODEL.onnx ...]");
    let classifiers = models.iter().map(|m| load(m)).collect::<Result<Vec<_>>>()?;
    let class_names = classifiers[0].info().class_names.clone();
    for (c, path) in classifiers.iter().zip(models) {
        ensure!(
            c.info().class_names == class_names,
            "{} has other class names than {}",
            path.display(),
            models[0].display()
        );
    }
    let images = list(dir, &class_names)?;
    println!(
        "{} images in {} classes from {}",
        images.len(),
        class_names.len(),
        dir.display()
    );

    let limits = DecodeLimits::default();
    // predictions[model][image]
    let mut predictions = vec![Vec::with_capacity(images.len()); classifiers.len()];
    let norms: Vec<Normalisation> = classifiers.iter().map(|c| Normalisation::from_info(c.info())).collect();
    for chunk in images.chunks(BATCH) {
        // Read each file once; every model preprocesses it with its own size and normalisation.
        let files = chunk
            .iter()
            .map(|(path, _)| std::fs::read(path).with_context(|| format!("reading {}", path.display())))
            .collect::<Result<Vec<_>>>()?;
        for ((c, norm), predicted) in classifiers.iter().zip(&norms).zip(&mut predictions) {
            let mut input = Vec::with_capacity(chunk.len() * c.info().image_len());
            for ((path, _), bytes) in chunk.iter().zip(&files) {
                preprocess_into(bytes, &limits, norm, &mut input).with_context(|| format!("{}", path.display()))?;
            }
            for logits in c.run(input, chunk.len())? {
                predicted.push(argmax(&logits));
            }
        }
    }

    println!();
    print!("| class | images |");
    for m in models {
        print!(" {} |", file_name(m));
    }
    println!();
    println!("|---|---:|{}", "---:|".repeat(models.len()));
    for (label, name) in class_names.iter().enumerate() {
        let of_class: Vec<usize> = (0..images.len()).filter(|&i| images[i].1 == label).collect();
        print!("| {name} | {} |", of_class.len());
        for predicted in &predictions {
            let right = of_class.iter().filter(|&&i| predicted[i] == label).count();
            print!(" {} |", percent(right, of_class.len()));
        }
        println!();
    }
    print!("| **all** | {} |", images.len());
    for predicted in &predictions {
        let right = (0..images.len()).filter(|&i| predicted[i] == images[i].1).count();
        print!(" **{}** |", percent(right, images.len()));
    }
    println!();
    for (m, predicted) in models.iter().zip(&predictions).skip(1) {
        let same = predicted.iter().zip(&predictions[0]).filter(|(a, b)| a == b).count();
        println!(
            "\ntop-1 agreement of {} with {}: {same}/{} ({})",
            file_name(m),
            file_name(&models[0]),
            images.len(),
            percent(same, images.len())
        );
    }
    Ok(())
}

fn load(path: &Path) -> Result<Classifier> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let name = file_name(path);
    Ok(Classifier::load(
        &bytes,
        &name,
        &path.display().to_string(),
        &Overrides::default(),
        default_threads(),
    )?)
}

/// `(file, label)` for every file under `dir/<class>/`, in a stable order.
fn list(dir: &Path, class_names: &[String]) -> Result<Vec<(PathBuf, usize)>> {
    let mut images = Vec::new();
    for (label, name) in class_names.iter().enumerate() {
        let folder = dir.join(name);
        let entries = std::fs::read_dir(&folder)
            .with_context(|| format!("reading {} (one folder per class name of the model)", folder.display()))?;
        let mut files = entries
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<Vec<_>>>()
            .with_context(|| format!("listing {}", folder.display()))?;
        files.sort();
        images.extend(files.into_iter().map(|f| (f, label)));
    }
    ensure!(!images.is_empty(), "no images under {}", dir.display());
    Ok(images)
}

fn argmax(logits: &[f32]) -> usize {
    logits
        .iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |best, (i, &v)| if v > best.1 { (i, v) } else { best },
        )
        .0
}

fn percent(part: usize, whole: usize) -> String {
    if whole == 0 {
        return "-".into();
    }
    format!("{:.2}%", 100.0 * part as f64 / whole as f64)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}
