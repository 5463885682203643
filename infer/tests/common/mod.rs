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

/// The probabilities the tiny RGB model must give for a solid colour, computed independently
/// of the server: mean 0.5, std 0.25, logits = 4 * normalised channel, softmax.
pub fn expected_probabilities(rgb: [u8; 3]) -> Vec<f32> {
    let logits: Vec<f32> = rgb
        .iter()
        .map(|&c| 4.0 * ((f32::from(c) / 255.0 - 0.5) / 0.25))
        .collect();
    let max = logits.iter().copied().fold(f32::MIN, f32::max);
    let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.iter().map(|e| e / sum).collect()
}

/// Path of the built `infer` binary.
pub fn infer_bin() -> &'static str {
    env!("CARGO_BIN_EXE_infer")
}
