//! JPEG decoding, strict, and at reduced scale for large images.
//!
//! Strict: zune-jpeg in its strict mode (which `image` 0.25 leaves off: it fills a short scan
//! with grey), after a walk over the marker segments that finds the end-of-image marker.
//!
//! Reduced scale: an image that will be shrunk a lot is decoded at 1/4 scale in the DCT domain
//! (jpeg-decoder's 4x4 inverse transform; zune-jpeg has none). That skips 15/16 of the inverse
//! transform, chroma upsampling, colour conversion and resizing work and allocates 1/16 of the
//! pixels; what remains is entropy decoding, which no scaled decode avoids. It is used only
//! where the resize that follows still averages at least [`MIN_OVERSAMPLING`] decoded pixels per
//! output pixel on each axis, where the result stays within a grey level of the full decode (the
//! measurements behind both constants are in infer/BENCHMARKS.md, "Reduced-scale JPEG decoding").
//! jpeg-decoder also fails on a Huffman code no table assigns, so the scaled path is as strict.

use image::metadata::Orientation;
use image::{DynamicImage, RgbImage};
use zune_jpeg::zune_core::bytestream::ZCursor;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;

use super::limits::{DecodeLimits, PreprocessError, check_size};

/// The reduced scale, as a denominator. 1/8 (the DC coefficient alone) is faster still but stays
/// 2-5 levels off even at 8x oversampling; jpeg-decoder's 1/2 is slower than zune-jpeg's full
/// decode at the sizes where it would apply.
const DCT_SCALE: u32 = 4;

/// Decoded pixels per output pixel, on each axis, that a reduced-scale decode must still give.
const MIN_OVERSAMPLING: u32 = 8;

/// A JPEG, strictly: every scan complete, up to the end-of-image marker; any colour space
/// (grey, YCbCr, CMYK, YCCK) to RGB; EXIF orientation applied. With a `target` (the size the
/// image will be resized to, after orientation), a large image comes back at 1/4 scale.
pub(super) fn decode(
    bytes: &[u8],
    limits: &DecodeLimits,
    target: Option<(u32, u32)>,
) -> Result<DynamicImage, PreprocessError> {
    check_segments(bytes)?;
    let options = DecoderOptions::default()
        .set_strict_mode(true)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    decoder.decode_headers().map_err(zune_error)?;
    let (width, height) = decoder
        .dimensions()
        .ok_or_else(|| PreprocessError::Corrupt("the JPEG has no frame header".into()))?;
    let (width, height) = (width as u32, height as u32);
    // The full size is checked even when decoding smaller: the limits do not depend on the target.
    check_size(width, height, u64::from(width) * u64::from(height) * 3, limits)?;
    // A broken EXIF block must not reject an otherwise good image.
    let orientation = decoder.exif().and_then(|exif| Orientation::from_exif_chunk(exif));
    let scaled = match target {
        Some(target) if reduced_scale_fits((width, height), orientation, target) => {
            decode_reduced(bytes, (width, height))?
        }
        _ => None,
    };
    let rgb = match scaled {
        Some(rgb) => rgb,
        None => {
            let len = decoder
                .output_buffer_size()
                .filter(|len| *len as u64 == u64::from(width) * u64::from(height) * 3)
                .ok_or_else(size_mismatch)?;
            let mut pixels = vec![0; len];
            decoder.decode_into(&mut pixels).map_err(zune_error)?;
            RgbImage::from_raw(width, height, pixels).ok_or_else(size_mismatch)?
        }
    };
    let mut image = DynamicImage::ImageRgb8(rgb);
    if let Some(orientation) = orientation {
        image.apply_orientation(orientation);
    }
    Ok(image)
}

/// Whether a `size` image, shown with `orientation`, still has [`MIN_OVERSAMPLING`] pixels per
/// `target` pixel on each axis at 1/[`DCT_SCALE`] scale. A quarter turn swaps the axes.
fn reduced_scale_fits(size: (u32, u32), orientation: Option<Orientation>, target: (u32, u32)) -> bool {
    let turned = matches!(
        orientation,
        Some(Orientation::Rotate90 | Orientation::Rotate270 | Orientation::Rotate90FlipH | Orientation::Rotate270FlipH)
    );
    let (target_w, target_h) = if turned { (target.1, target.0) } else { target };
    let enough =
        |side: u32, target: u32| u64::from(side.div_ceil(DCT_SCALE)) >= u64::from(MIN_OVERSAMPLING) * u64::from(target);
    enough(size.0, target_w) && enough(size.1, target_h)
}

/// The JPEG at 1/[`DCT_SCALE`] scale, or `None` for what only the full decoder handles (CMYK,
/// 16-bit, anything jpeg-decoder does not support): those go the full-size way.
fn decode_reduced(bytes: &[u8], size: (u32, u32)) -> Result<Option<RgbImage>, PreprocessError> {
    let mut decoder = jpeg_decoder::Decoder::new(bytes);
    let requested = |side: u32| u16::try_from(side.div_ceil(DCT_SCALE)).unwrap_or(u16::MAX);
    let scaled = match decoder.scale(requested(size.0), requested(size.1)) {
        Err(jpeg_decoder::Error::Unsupported(_)) => return Ok(None),
        other => other.map_err(reduced_error)?,
    };
    let grey = match decoder.info().map(|info| info.pixel_format) {
        Some(jpeg_decoder::PixelFormat::RGB24) => false,
        Some(jpeg_decoder::PixelFormat::L8) => true,
        _ => return Ok(None),
    };
    let pixels = match decoder.decode() {
        Err(jpeg_decoder::Error::Unsupported(_)) => return Ok(None),
        other => other.map_err(reduced_error)?,
    };
    let (width, height) = (u32::from(scaled.0), u32::from(scaled.1));
    let pixels = if grey {
        pixels.iter().flat_map(|&v| [v, v, v]).collect()
    } else {
        pixels
    };
    RgbImage::from_raw(width, height, pixels)
        .map(Some)
        .ok_or_else(size_mismatch)
}

/// A decoder whose output is not the size its header says: its bug, or a file it misread.
fn size_mismatch() -> PreprocessError {
    PreprocessError::Corrupt("the JPEG decoder's output does not match its size".into())
}

fn reduced_error(err: jpeg_decoder::Error) -> PreprocessError {
    PreprocessError::Corrupt(format!("JPEG: {err}"))
}

fn zune_error(err: zune_jpeg::errors::DecodeErrors) -> PreprocessError {
    use zune_jpeg::errors::DecodeErrors;
    let reason = match err {
        DecodeErrors::Unsupported(scheme) => {
            return PreprocessError::UnsupportedFormat(format!("JPEG ({scheme:?})"));
        }
        DecodeErrors::LargeDimensions(_) => return PreprocessError::TooLarge(format!("JPEG: {err:?}")),
        DecodeErrors::Format(reason) => reason,
        DecodeErrors::FormatStatic(reason) => reason.to_owned(),
        other => format!("{other:?}"),
    };
    PreprocessError::Corrupt(format!("JPEG: {reason}"))
}

/// Walks a JPEG's marker segments and entropy-coded scans and fails unless an end-of-image
/// marker (EOI) follows the first scan: zune-jpeg's strict mode catches a scan cut short, but
/// not a file cut between or just after the scans. Thumbnails in EXIF blocks carry their own
/// EOI, so this follows segment lengths rather than searching for the bytes.
fn check_segments(bytes: &[u8]) -> Result<(), PreprocessError> {
    let cut = |what: &str| PreprocessError::Corrupt(format!("JPEG data ends {what}"));
    let mut at = 2; // after SOI, which sniffing already saw
    let mut in_scan = false;
    loop {
        // Entropy-coded data, or fill bytes, up to the next marker.
        let Some(ff) = bytes.get(at..).and_then(|rest| rest.iter().position(|&b| b == 0xFF)) else {
            return Err(cut("before the end-of-image marker"));
        };
        if !in_scan && ff > 0 {
            return Err(PreprocessError::Corrupt(format!(
                "JPEG: {ff} stray bytes before a marker at offset {at}"
            )));
        }
        at += ff + 1;
        let Some(&marker) = bytes.get(at) else {
            return Err(cut("before the end-of-image marker"));
        };
        at += 1;
        match marker {
            // Stuffed 0xFF inside a scan, fill bytes, restart markers: the scan goes on.
            0x00 | 0xD0..=0xD7 if in_scan => {}
            0xFF => at -= 1,
            0xD9 => {
                return if in_scan {
                    Ok(())
                } else {
                    Err(PreprocessError::Corrupt(
                        "JPEG: end-of-image marker before any scan".into(),
                    ))
                };
            }
            _ => {
                let len = bytes
                    .get(at..at + 2)
                    .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
                    .ok_or_else(|| cut(&format!("inside the header of segment 0xFF{marker:02X}")))?;
                if len < 2 || at + len > bytes.len() {
                    return Err(cut(&format!("inside segment 0xFF{marker:02X}")));
                }
                at += len;
                in_scan = marker == 0xDA;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use image::codecs::jpeg::JpegEncoder;
    use image::{GenericImageView, GrayImage, Luma, Rgb};

    use super::*;
    use crate::preprocess::{decode, to_rgb};

    fn encode(image: &DynamicImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image
            .write_with_encoder(JpegEncoder::new_with_quality(&mut out, 90))
            .expect("encoding an in-memory image");
        out.into_inner()
    }

    /// A photo-like 512x384 picture: smooth shading, edges and fine texture.
    fn photo() -> DynamicImage {
        DynamicImage::ImageRgb8(RgbImage::from_fn(512, 384, |x, y| {
            let (fx, fy) = (x as f32, y as f32);
            let shade = 128.0 + 60.0 * (fx / 37.0).sin() * (fy / 23.0).cos();
            let edge = if (x / 64 + y / 48) % 2 == 0 { 40.0 } else { -40.0 };
            let grain = ((x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)) % 17) as f32;
            let v = |offset: f32| (shade + edge + grain + offset).clamp(0.0, 255.0) as u8;
            Rgb([v(0.0), v(-30.0), v(25.0)])
        }))
    }

    fn resized(image: &DynamicImage, (width, height): (u32, u32)) -> RgbImage {
        super::super::resize(&image.to_rgb8(), width, height)
    }

    #[test]
    fn a_quarter_scale_needs_eight_decoded_pixels_per_output_pixel_on_each_axis() {
        assert!(reduced_scale_fits((1024, 1024), None, (32, 32)));
        assert!(!reduced_scale_fits((1020, 1024), None, (32, 32)));
        assert!(!reduced_scale_fits((640, 480), None, (32, 32)));
        assert!(reduced_scale_fits((640, 480), None, (20, 15)));
        // Turned a quarter, the picture's width is the file's height.
        assert!(!reduced_scale_fits((2048, 1024), None, (16, 48)));
        assert!(reduced_scale_fits((2048, 1024), Some(Orientation::Rotate90), (16, 48)));
        assert!(!reduced_scale_fits(
            (2048, 1024),
            Some(Orientation::Rotate180),
            (16, 48)
        ));
    }

    #[test]
    fn a_large_jpeg_for_a_small_target_is_decoded_at_a_quarter_within_a_grey_level() -> Result<(), PreprocessError> {
        let bytes = encode(&photo());
        let target = (16, 12);
        let full = decode(&bytes, &DecodeLimits::default())?;
        let reduced = jpeg_decode(&bytes, Some(target))?;
        assert_eq!((full.width(), full.height()), (512, 384));
        assert_eq!((reduced.width(), reduced.height()), (128, 96));
        let (full, reduced) = (resized(&full, target), resized(&reduced, target));
        let worst = full
            .as_raw()
            .iter()
            .zip(reduced.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max();
        assert!(worst <= Some(1), "largest difference {worst:?}");
        // Too little to spare for a quarter: the full size.
        let near = jpeg_decode(&bytes, Some((32, 24)))?;
        assert_eq!((near.width(), near.height()), (512, 384));
        Ok(())
    }

    fn jpeg_decode(bytes: &[u8], target: Option<(u32, u32)>) -> Result<DynamicImage, PreprocessError> {
        super::decode(bytes, &DecodeLimits::default(), target)
    }

    #[test]
    fn a_grey_jpeg_at_a_quarter_becomes_rgb() -> Result<(), PreprocessError> {
        let grey = DynamicImage::ImageLuma8(GrayImage::from_fn(256, 256, |x, _| Luma([(x / 2) as u8])));
        let reduced = jpeg_decode(&encode(&grey), Some((8, 8)))?.to_rgb8();
        assert_eq!(reduced.dimensions(), (64, 64));
        let px = reduced.get_pixel(40, 7).0;
        assert!(px[0] == px[1] && px[1] == px[2] && px[0].abs_diff(80) <= 2, "{px:?}");
        Ok(())
    }

    #[test]
    fn a_corrupt_scan_is_refused_at_a_quarter_too() {
        let mut bytes = encode(&photo());
        let middle = bytes.len() / 2;
        // Stuffed 0xFF bytes: all-ones bits, which no Huffman table assigns.
        for pair in bytes[middle..middle + 64].chunks_exact_mut(2) {
            pair.copy_from_slice(&[0xFF, 0x00]);
        }
        for target in [Some((16, 12)), None] {
            assert!(
                matches!(jpeg_decode(&bytes, target), Err(PreprocessError::Corrupt(ref m)) if m.starts_with("JPEG: ")),
                "{target:?}: {:?}",
                jpeg_decode(&bytes, target).map(|i| i.dimensions())
            );
        }
    }

    #[test]
    fn a_quarter_turned_jpeg_is_scaled_by_its_picture_axes() -> Result<(), PreprocessError> {
        let wide = DynamicImage::ImageRgb8(RgbImage::from_pixel(512, 256, Rgb([200, 10, 10])));
        let bytes = with_orientation(&encode(&wide), 6);
        // Viewed 256 wide and 512 tall: 64x128 at a quarter, eight times (8, 16).
        let reduced = jpeg_decode(&bytes, Some((8, 16)))?;
        assert_eq!((reduced.width(), reduced.height()), (64, 128));
        Ok(())
    }

    /// A JPEG with an APP1 EXIF block holding only the Orientation tag.
    fn with_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
        let mut tiff = b"II*\0\x08\0\0\0".to_vec();
        tiff.extend(1u16.to_le_bytes()); // one IFD entry
        tiff.extend(0x0112u16.to_le_bytes()); // Orientation
        tiff.extend(3u16.to_le_bytes()); // SHORT
        tiff.extend(1u32.to_le_bytes());
        tiff.extend(orientation.to_le_bytes());
        tiff.extend([0, 0]);
        tiff.extend(0u32.to_le_bytes()); // no next IFD
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend(tiff);
        let mut out = jpeg[..2].to_vec(); // SOI
        out.extend([0xFF, 0xE1]);
        out.extend(u16::try_from(app1.len() + 2).expect("small segment").to_be_bytes());
        out.extend(app1);
        out.extend(&jpeg[2..]);
        out
    }

    #[test]
    fn exif_orientation_is_applied() -> Result<(), PreprocessError> {
        // Left half red, right half blue, 16x8; orientation 6 means "rotate 90 degrees clockwise to view".
        let image = DynamicImage::ImageRgb8(RgbImage::from_fn(16, 8, |x, _| {
            if x < 8 { Rgb([255, 0, 0]) } else { Rgb([0, 0, 255]) }
        }));
        let plain = to_rgb(decode(&with_orientation(&encode(&image), 1), &DecodeLimits::default())?);
        assert_eq!(plain.dimensions(), (16, 8));
        let rotated = to_rgb(decode(&with_orientation(&encode(&image), 6), &DecodeLimits::default())?);
        assert_eq!(rotated.dimensions(), (8, 16));
        // After a clockwise turn the left (red) half is on top.
        assert!(rotated.get_pixel(4, 2)[0] > 200 && rotated.get_pixel(4, 2)[2] < 60);
        assert!(rotated.get_pixel(4, 13)[2] > 200 && rotated.get_pixel(4, 13)[0] < 60);
        Ok(())
    }

    #[test]
    fn jpeg_segments_walk_finds_the_end_or_says_where_it_stops() {
        let jpeg = encode(&DynamicImage::ImageRgb8(RgbImage::from_pixel(16, 16, Rgb([9, 9, 9]))));
        assert_eq!(check_segments(&jpeg), Ok(()));
        // Bytes after the end-of-image marker (camera trailers, multi-picture files) are fine.
        let mut trailer = jpeg.clone();
        trailer.extend(b"trailing data");
        assert_eq!(check_segments(&trailer), Ok(()));
        let message = |bytes: &[u8]| match check_segments(bytes) {
            Err(PreprocessError::Corrupt(m)) => m,
            other => format!("{other:?}"),
        };
        assert_eq!(
            message(&jpeg[..jpeg.len() - 2]),
            "JPEG data ends before the end-of-image marker"
        );
        // A thumbnail inside an APP1 block has its own end-of-image marker, which does not count:
        // with the main image's marker cut off, the file is still incomplete.
        let mut with_thumbnail = jpeg[..2].to_vec();
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend(&jpeg);
        with_thumbnail.extend([0xFF, 0xE1]);
        with_thumbnail.extend(u16::try_from(app1.len() + 2).expect("small segment").to_be_bytes());
        with_thumbnail.extend(app1);
        with_thumbnail.extend(&jpeg[2..]);
        assert_eq!(check_segments(&with_thumbnail), Ok(()));
        assert!(decode(&with_thumbnail, &DecodeLimits::default()).is_ok());
        assert_eq!(
            message(&with_thumbnail[..with_thumbnail.len() - 2]),
            "JPEG data ends before the end-of-image marker"
        );
        assert!(
            message(&jpeg[..30]).starts_with("JPEG data ends inside segment"),
            "{}",
            message(&jpeg[..30])
        );
    }
}
