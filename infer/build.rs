//! Embeds `models/resnet18-cifar10.onnx` (and its `.sha256` sidecar) into the binary when the file
//! exists at build time, so that the binary alone is a working server. Before the model is
//! trained the build still succeeds, and `infer serve` without `--model` says that none is bundled.

use std::path::PathBuf;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(bundled_model)");
    println!("cargo::rustc-check-cfg=cfg(bundled_model_sha256)");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into()));
    let models = manifest.join("..").join("models");
    let model = models.join("resnet18-cifar10.onnx");
    let sidecar = models.join("resnet18-cifar10.onnx.sha256");
    // Watching the folder notices the model appearing; watching the files notices it changing.
    println!("cargo::rerun-if-changed={}", models.display());
    println!("cargo::rerun-if-changed={}", model.display());
    println!("cargo::rerun-if-changed={}", sidecar.display());
    if model.is_file() {
        println!("cargo::rustc-cfg=bundled_model");
        println!("cargo::rustc-env=INFER_BUNDLED_MODEL={}", model.display());
        if sidecar.is_file() {
            println!("cargo::rustc-cfg=bundled_model_sha256");
            println!("cargo::rustc-env=INFER_BUNDLED_MODEL_SHA256={}", sidecar.display());
        }
    }
}
