//! What an image may be before it is decoded, and how preprocessing fails.

/// Guards against decompression bombs; checked before pixels are allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    pub max_width: u32,
    pub max_height: u32,
    /// Bytes the decoder may allocate for one image.
    pub max_alloc: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        // 8192 a side covers any camera; 64 MiB is about 22 megapixels of RGB.
        Self {
            max_width: 8192,
            max_height: 8192,
            max_alloc: 64 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PreprocessError {
    #[error("the body is empty")]
    Empty,
    #[error("not a recognised image: JPEG, PNG, GIF, WebP and BMP are accepted")]
    UnknownFormat,
    #[error("{0} images are not accepted: JPEG, PNG, GIF, WebP and BMP are")]
    UnsupportedFormat(String),
    #[error("the image could not be decoded: {0}")]
    Corrupt(String),
    #[error("the image is too large: {0}")]
    TooLarge(String),
}

/// An image's size and its decoded bytes against the limits, before any pixel is allocated.
pub(super) fn check_size(
    width: u32,
    height: u32,
    bytes_needed: u64,
    limits: &DecodeLimits,
) -> Result<(), PreprocessError> {
    if width == 0 || height == 0 {
        return Err(PreprocessError::Corrupt(format!(
            "{width}x{height} image has no pixels"
        )));
    }
    if width > limits.max_width || height > limits.max_height {
        return Err(PreprocessError::TooLarge(format!(
            "{width}x{height} is over the limit of {}x{} pixels",
            limits.max_width, limits.max_height
        )));
    }
    if bytes_needed > limits.max_alloc {
        return Err(PreprocessError::TooLarge(format!(
            "{width}x{height} needs {bytes_needed} bytes decoded, over the limit of {}",
            limits.max_alloc
        )));
    }
    Ok(())
}
