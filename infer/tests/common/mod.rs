//! Shared by the integration tests: images made in the test, and the tiny colour classifier.
#![allow(dead_code)]

pub mod router;
pub mod server;

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, Rgb, RgbImage};

/// A solid-colour image encoded as `format`.
pub fn solid(rgb: [u8; 3], width: u32, height: u32, format: ImageFormat) -> Vec<u8> {
    let image = DynamicImage::ImageRgb8(RgbImage::from_pixel(width, height, Rgb(rgb)));
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).expect("encoding an in-memory image");
    out.into_inner()
}

/// The logits the tiny RGB model must give for a solid image whose normalised channels are `x`,
/// computed without ONNX Runtime from the model's known weights (the pooled mean of a solid
/// image is its value): the weights times `x`, plus the bias.
pub fn tiny_logits(x: [f32; 3]) -> Vec<f32> {
    let model = infer::testing::TinyModel::rgb(1);
    model
        .weights
        .iter()
        .zip(&model.bias)
        .map(|(w, b)| w.iter().zip(&x).map(|(w, x)| w * x).sum::<f32>() + b)
        .collect()
}

/// [`tiny_logits`] of a solid colour, normalised with the model's metadata.
pub fn expected_logits(rgb: [u8; 3]) -> Vec<f32> {
    let meta = infer::testing::TinyModel::rgb(1).metadata();
    tiny_logits(std::array::from_fn(|c| {
        (f32::from(rgb[c]) / 255.0 - meta.mean[c]) / meta.std[c]
    }))
}

/// The probabilities the tiny RGB model must give for a solid colour: the softmax of
/// [`expected_logits`], computed here, independently of the server.
pub fn expected_probabilities(rgb: [u8; 3]) -> Vec<f32> {
    let logits = expected_logits(rgb);
    let max = logits.iter().copied().fold(f32::MIN, f32::max);
    let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.iter().map(|e| e / sum).collect()
}

/// Path of the built `infer` binary.
pub fn infer_bin() -> &'static str {
    env!("CARGO_BIN_EXE_infer")
}
