//! Property tests over the decode + preprocess path: no input bytes make it panic, and every
//! success yields exactly `3 * H * W` finite floats.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, RgbImage};
use infer::preprocess::{DecodeLimits, Normalisation, preprocess_into};
use proptest::prelude::*;

fn norm() -> Normalisation {
    Normalisation {
        height: 8,
        width: 8,
        mean: [0.5; 3],
        std: [0.25; 3],
    }
}

fn check(bytes: &[u8]) {
    let limits = DecodeLimits {
        max_width: 512,
        max_height: 512,
        max_alloc: 4 << 20,
    };
    let mut out = Vec::new();
    if preprocess_into(bytes, &limits, &norm(), &mut out).is_ok() {
        assert_eq!(out.len(), 3 * 64);
        assert!(out.iter().all(|v| v.is_finite()));
    }
}

fn valid_image(format: ImageFormat, w: u32, h: u32, seed: u8) -> Vec<u8> {
    let image = RgbImage::from_fn(w, h, |x, y| image::Rgb([seed ^ x as u8, y as u8, seed.wrapping_mul(3)]));
    let mut out = Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(image)
        .write_to(&mut out, format)
        .expect("encoding an in-memory image");
    out.into_inner()
}

const FORMATS: [ImageFormat; 5] = [
    ImageFormat::Png,
    ImageFormat::Jpeg,
    ImageFormat::Gif,
    ImageFormat::WebP,
    ImageFormat::Bmp,
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        check(&bytes);
    }

    /// Real images with bytes flipped, cut short or overwritten: the decoders' hard cases.
    #[test]
    fn mutated_images_never_panic(
        format in 0..FORMATS.len(),
        w in 1u32..40,
        h in 1u32..40,
        seed: u8,
        cut in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
    ) {
        let mut bytes = valid_image(FORMATS[format], w, h, seed);
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        check(&bytes);
        let end = cut.index(bytes.len() + 1);
        check(&bytes[..end]);
    }

    #[test]
    fn valid_images_of_any_size_preprocess(format in 0..FORMATS.len(), w in 1u32..80, h in 1u32..80, seed: u8) {
        let bytes = valid_image(FORMATS[format], w, h, seed);
        let mut out = Vec::new();
        prop_assert!(preprocess_into(&bytes, &DecodeLimits::default(), &norm(), &mut out).is_ok());
        prop_assert_eq!(out.len(), 3 * 64);
    }
}
