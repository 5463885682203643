//! Image bytes to a normalised NCHW tensor: the format is sniffed from the content (never from
//! the Content-Type), EXIF orientation is applied, every colour type becomes RGB, the image is
//! resized to the model's input and normalised with the model's mean and std.
//!
//! Decoding is strict: a truncated or corrupt file is an error, never a partly grey image that
//! gets classified. JPEG has a module of its own ([`jpeg`]: strict, and reduced-scale for large
//! images); the other formats' decoders already fail on missing data.

mod bounded;
mod jpeg;
mod limits;

use std::io::Cursor;

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits, RgbImage};

pub use bounded::{BoundedError, Preprocessed, preprocess_bounded};
use limits::check_size;
pub use limits::{DecodeLimits, PreprocessError};

/// What the pixels are turned into.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalisation {
    pub height: u32,
    pub width: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalisation {
    pub fn from_info(info: &crate::model::ModelInfo) -> Self {
        Self {
            height: info.input_height,
            width: info.input_width,
            mean: info.mean,
            std: info.std,
        }
    }
}

/// The image formats this server decodes.
pub const FORMATS: [ImageFormat; 5] = [
    ImageFormat::Jpeg,
    ImageFormat::Png,
    ImageFormat::Gif,
    ImageFormat::WebP,
    ImageFormat::Bmp,
];

/// Decodes by content, with limits, and applies the EXIF orientation.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<DynamicImage, PreprocessError> {
    decode_for(bytes, limits, None)
}

/// [`decode`], for an image that will be resized to `target` (width, height): a large JPEG may
/// come back smaller than its full size, never smaller than the resize needs ([`jpeg`]).
fn decode_for(
    bytes: &[u8],
    limits: &DecodeLimits,
    target: Option<(u32, u32)>,
) -> Result<DynamicImage, PreprocessError> {
    if bytes.is_empty() {
        return Err(PreprocessError::Empty);
    }
    let format = image::guess_format(bytes).map_err(|_| PreprocessError::UnknownFormat)?;
    if !FORMATS.contains(&format) {
        return Err(PreprocessError::UnsupportedFormat(format!("{format:?}").to_uppercase()));
    }
    if format == ImageFormat::Jpeg {
        return jpeg::decode(bytes, limits, target);
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut image_limits = Limits::default();
    image_limits.max_image_width = Some(limits.max_width);
    image_limits.max_image_height = Some(limits.max_height);
    image_limits.max_alloc = Some(limits.max_alloc);
    reader.limits(image_limits);
    let classify = |err| classify(err, limits);
    let mut decoder = reader.into_decoder().map_err(classify)?;
    let (width, height) = decoder.dimensions();
    // `from_decoder` does not charge the pixel buffer against `max_alloc`, so check it here.
    check_size(width, height, decoder.total_bytes(), limits)?;
    // A broken EXIF block must not reject an otherwise good image.
    let orientation = decoder.orientation().ok();
    let mut image = DynamicImage::from_decoder(decoder).map_err(classify)?;
    if let Some(orientation) = orientation {
        image.apply_orientation(orientation);
    }
    Ok(image)
}

fn classify(err: ImageError, limits: &DecodeLimits) -> PreprocessError {
    match err {
        ImageError::Limits(e) => PreprocessError::TooLarge(format!(
            "{e} (at most {}x{} pixels, {} bytes decoded)",
            limits.max_width, limits.max_height, limits.max_alloc
        )),
        ImageError::Unsupported(e) => PreprocessError::UnsupportedFormat(e.to_string()),
        other => PreprocessError::Corrupt(other.to_string()),
    }
}

/// Any colour type to 8-bit RGB; transparent pixels are composited over white, as a viewer shows them.
pub fn to_rgb(image: DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.into_rgb8();
    }
    let rgba = image.into_rgba8();
    let (w, h) = rgba.dimensions();
    let mut rgb = RgbImage::new(w, h);
    for (dst, src) in rgb.pixels_mut().zip(rgba.pixels()) {
        let a = u16::from(src[3]);
        for c in 0..3 {
            dst[c] = ((u16::from(src[c]) * a + 255 * (255 - a) + 127) / 255) as u8;
        }
    }
    rgb
}

/// A triangle (bilinear) filter whose support widens with the scale when downsizing, so every
/// source pixel counts (Pillow's BILINEAR does the same). fast_image_resize's SIMD version: image's
/// generic one was the server's largest cost after the model for a 640x480 photo.
fn resize(rgb: &RgbImage, width: u32, height: u32) -> RgbImage {
    let fast = || {
        let src = ImageRef::new(rgb.width(), rgb.height(), rgb.as_raw(), PixelType::U8x3).ok()?;
        let mut dst = Image::new(width, height, PixelType::U8x3);
        let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
        Resizer::new().resize(&src, &mut dst, &options).ok()?;
        RgbImage::from_raw(width, height, dst.into_vec())
    };
    // Only a buffer that does not match its dimensions fails, which an RgbImage cannot have;
    // image's own filter is the same maths, so the answer would not change.
    fast().unwrap_or_else(|| image::imageops::resize(rgb, width, height, image::imageops::FilterType::Triangle))
}

/// The image as the model sees it: resized to its input (triangle filter: area-weighted when
/// downsizing), or borrowed when it has that size already.
pub fn model_view<'a>(rgb: &'a RgbImage, norm: &Normalisation) -> std::borrow::Cow<'a, RgbImage> {
    if rgb.dimensions() == (norm.width, norm.height) {
        std::borrow::Cow::Borrowed(rgb)
    } else {
        std::borrow::Cow::Owned(resize(rgb, norm.width, norm.height))
    }
}

/// Resizes to the model's input ([`model_view`]) and writes `(pixel / 255 - mean) / std`
/// channel-major into `out` (`3 * H * W` floats).
pub fn normalise_into(rgb: &RgbImage, norm: &Normalisation, out: &mut Vec<f32>) {
    normalise_pixels(&model_view(rgb, norm), norm, out);
}

/// `(pixel / 255 - mean) / std`, channel-major, of an image already at the model's input size.
fn normalise_pixels(image: &RgbImage, norm: &Normalisation, out: &mut Vec<f32>) {
    let plane = (norm.width * norm.height) as usize;
    let start = out.len();
    out.resize(start + 3 * plane, 0.0);
    onnx::PixelNormalisation::new(norm.mean, norm.std).write_planes(image.as_raw(), &mut out[start..]);
}

/// Bytes to one image's normalised CHW floats, appended to `out`.
pub fn preprocess_into(
    bytes: &[u8],
    limits: &DecodeLimits,
    norm: &Normalisation,
    out: &mut Vec<f32>,
) -> Result<(), PreprocessError> {
    let rgb = to_rgb(decode_for(bytes, limits, Some((norm.width, norm.height)))?);
    normalise_into(&rgb, norm, out);
    Ok(())
}

/// [`preprocess_into`], also returning the image as the model saw it ([`model_view`]).
pub fn preprocess_seen(
    bytes: &[u8],
    limits: &DecodeLimits,
    norm: &Normalisation,
    out: &mut Vec<f32>,
) -> Result<RgbImage, PreprocessError> {
    let rgb = to_rgb(decode_for(bytes, limits, Some((norm.width, norm.height)))?);
    let seen = model_view(&rgb, norm).into_owned();
    normalise_pixels(&seen, norm, out);
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GenericImageView, GrayImage, ImageBuffer, Luma, Rgb, Rgba, RgbaImage};

    fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, format).expect("encoding an in-memory image");
        out.into_inner()
    }

    fn norm(size: u32) -> Normalisation {
        Normalisation {
            height: size,
            width: size,
            mean: [0.5; 3],
            std: [0.25; 3],
        }
    }

    #[test]
    fn every_format_decodes_by_content_to_the_same_colour() -> Result<(), PreprocessError> {
        let image = DynamicImage::ImageRgb8(RgbImage::from_pixel(40, 20, Rgb([255, 0, 0])));
        for format in [
            ImageFormat::Png,
            ImageFormat::Jpeg,
            ImageFormat::Gif,
            ImageFormat::Bmp,
            ImageFormat::WebP,
        ] {
            let bytes = encode(&image, format);
            let mut out = Vec::new();
            preprocess_into(&bytes, &DecodeLimits::default(), &norm(8), &mut out)?;
            assert_eq!(out.len(), 3 * 64);
            // Red: (1 - 0.5) / 0.25 = 2, green and blue: -2 (JPEG is lossy, hence the tolerance).
            assert!((out[0] - 2.0).abs() < 0.1, "{format:?}: {}", out[0]);
            assert!((out[64] + 2.0).abs() < 0.1, "{format:?}: {}", out[64]);
            assert!((out[128] + 2.0).abs() < 0.1, "{format:?}: {}", out[128]);
        }
        Ok(())
    }

    #[test]
    fn grayscale_sixteen_bit_and_alpha_become_rgb() -> Result<(), PreprocessError> {
        let gray = DynamicImage::ImageLuma8(GrayImage::from_pixel(4, 4, Luma([128])));
        let rgb = to_rgb(decode(&encode(&gray, ImageFormat::Png), &DecodeLimits::default())?);
        assert_eq!(rgb.get_pixel(0, 0).0, [128, 128, 128]);

        let deep: ImageBuffer<Rgb<u16>, Vec<u16>> = ImageBuffer::from_pixel(4, 4, Rgb([65535, 0, 32896]));
        let rgb = to_rgb(decode(
            &encode(&DynamicImage::ImageRgb16(deep), ImageFormat::Png),
            &DecodeLimits::default(),
        )?);
        assert_eq!(rgb.get_pixel(1, 1).0, [255, 0, 128]);

        // Fully transparent black shows as white; opaque blue stays blue.
        let mut rgba = RgbaImage::from_pixel(2, 1, Rgba([0, 0, 0, 0]));
        rgba.put_pixel(1, 0, Rgba([0, 0, 255, 255]));
        let rgb = to_rgb(decode(
            &encode(&DynamicImage::ImageRgba8(rgba), ImageFormat::Png),
            &DecodeLimits::default(),
        )?);
        assert_eq!(rgb.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(rgb.get_pixel(1, 0).0, [0, 0, 255]);
        Ok(())
    }

    #[test]
    fn rejects_empty_unknown_unsupported_corrupt_and_oversized() {
        let limits = DecodeLimits::default();
        assert_eq!(decode(b"", &limits).err(), Some(PreprocessError::Empty));
        assert_eq!(
            decode(b"hello world", &limits).err(),
            Some(PreprocessError::UnknownFormat)
        );
        assert!(matches!(
            decode(b"II*\0\x08\0\0\0", &limits),
            Err(PreprocessError::UnsupportedFormat(_))
        ));
        let png = encode(
            &DynamicImage::ImageRgb8(RgbImage::from_pixel(64, 64, Rgb([1, 2, 3]))),
            ImageFormat::Png,
        );
        assert!(matches!(
            decode(&png[..png.len() / 2], &limits),
            Err(PreprocessError::Corrupt(_))
        ));
        let small = DecodeLimits {
            max_width: 32,
            ..limits
        };
        assert!(matches!(decode(&png, &small), Err(PreprocessError::TooLarge(_))));
        let tight = DecodeLimits {
            max_alloc: 1000,
            ..limits
        };
        assert!(matches!(decode(&png, &tight), Err(PreprocessError::TooLarge(_))));
    }

    #[test]
    fn downsizing_averages_the_area() {
        // A fine checkerboard averages to mid-grey, which a nearest-neighbour resize would not give.
        let board = RgbImage::from_fn(64, 64, |x, y| {
            if (x + y) % 2 == 0 {
                Rgb([255, 255, 255])
            } else {
                Rgb([0, 0, 0])
            }
        });
        let mut out = Vec::new();
        normalise_into(&board, &norm(8), &mut out);
        for v in out {
            assert!(v.abs() < 0.1, "{v}");
        }
    }

    #[test]
    fn the_fast_resize_matches_image_s_triangle_filter() {
        // Odd sizes and uneven scales, down and up; smooth content plus per-pixel noise.
        for (w, h, to_w, to_h) in [(97, 61, 32, 32), (640, 480, 32, 32), (20, 12, 32, 32)] {
            let src = RgbImage::from_fn(w, h, |x, y| {
                let noise = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)) % 64;
                Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, (noise * 4) as u8])
            });
            let fast = resize(&src, to_w, to_h);
            let reference = image::imageops::resize(&src, to_w, to_h, image::imageops::FilterType::Triangle);
            let worst = fast
                .as_raw()
                .iter()
                .zip(reference.as_raw())
                .map(|(a, b)| a.abs_diff(*b))
                .max();
            assert!(
                worst.is_some_and(|d| d <= 2),
                "{w}x{h} -> {to_w}x{to_h}: max difference {worst:?}"
            );
        }
    }

    /// Files the `image` crate cannot write (see `tests/images/README.md`): a red gradient.
    const FIXTURES: [(&str, &[u8]); 5] = [
        ("progressive.jpg", include_bytes!("../../tests/images/progressive.jpg")),
        ("cmyk.jpg", include_bytes!("../../tests/images/cmyk.jpg")),
        (
            "cmyk-progressive.jpg",
            include_bytes!("../../tests/images/cmyk-progressive.jpg"),
        ),
        ("restarts.jpg", include_bytes!("../../tests/images/restarts.jpg")),
        ("palette.png", include_bytes!("../../tests/images/palette.png")),
    ];

    #[test]
    fn valid_encodings_decode_to_their_colour() -> Result<(), PreprocessError> {
        let grey = DynamicImage::ImageLuma8(GrayImage::from_pixel(16, 8, Luma([200])));
        let grey_jpeg = encode(&grey, ImageFormat::Jpeg);
        let mut files: Vec<(&str, &[u8])> = FIXTURES.to_vec();
        files.push(("grey.jpg", &grey_jpeg));
        for (name, bytes) in files {
            let rgb = to_rgb(decode(bytes, &DecodeLimits::default())?);
            let px = rgb.get_pixel(rgb.width() / 2, rgb.height() / 2).0;
            if name == "grey.jpg" {
                assert!(px.iter().all(|c| c.abs_diff(200) < 6), "{name}: {px:?}");
            } else {
                // Between #f03020 and #c02010: red well above green and blue.
                assert!(px[0] > 170 && px[1] < 90 && px[2] < 70, "{name}: {px:?}");
            }
        }
        Ok(())
    }

    #[test]
    fn every_format_cut_short_is_corrupt_never_a_partial_image() {
        let noise = DynamicImage::ImageRgb8(RgbImage::from_fn(48, 40, |x, y| {
            let n = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)) % 251;
            Rgb([n as u8, (x * 5) as u8, (y * 6) as u8])
        }));
        let mut files: Vec<(String, Vec<u8>)> = [
            ImageFormat::Jpeg,
            ImageFormat::Png,
            ImageFormat::Gif,
            ImageFormat::WebP,
            ImageFormat::Bmp,
        ]
        .into_iter()
        .map(|format| (format!("{format:?}"), encode(&noise, format)))
        .collect();
        files.extend(
            FIXTURES
                .iter()
                .map(|(name, bytes)| ((*name).to_owned(), bytes.to_vec())),
        );
        for (name, bytes) in files {
            // Cut inside the pixel data (a PNG missing only the end of its IEND chunk is whole).
            for cut in [bytes.len() / 3, bytes.len() * 2 / 3] {
                match decode(&bytes[..cut], &DecodeLimits::default()).map(|image| image.dimensions()) {
                    Err(PreprocessError::Corrupt(_)) => {}
                    other => panic!("{name} cut to {cut} of {} bytes: {other:?}", bytes.len()),
                }
            }
        }
    }
}
