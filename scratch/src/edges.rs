//! Edge-detection filters for the demo: Sobel x, Sobel y and a Laplacian as one 3-channel conv.

use crate::{ConvError, Tensor4};

/// Names of the output channels of [`filter_bank`], in order.
pub const FILTER_NAMES: [&str; 3] = ["sobel-x", "sobel-y", "laplacian"];

/// The weight `[3, 1, 3, 3]` of Sobel x, Sobel y and the 4-neighbour Laplacian; convolve a
/// one-channel image with it at padding 1 to get three same-sized responses.
#[must_use]
pub fn filter_bank() -> Tensor4 {
    #[rustfmt::skip]
    let data = vec![
        -1.0, 0.0, 1.0,  -2.0, 0.0, 2.0,  -1.0, 0.0, 1.0,
        -1.0, -2.0, -1.0,  0.0, 0.0, 0.0,  1.0, 2.0, 1.0,
        0.0, 1.0, 0.0,  1.0, -4.0, 1.0,  0.0, 1.0, 0.0,
    ];
    Tensor4::new([3, 1, 3, 3], data).expect("27 literal weights fill [3, 1, 3, 3]")
}

/// A `[1, 1, height, width]` tensor of `luma / 255` from 8-bit grey pixels, row-major.
///
/// # Errors
/// [`ConvError::DataLength`] when `luma` does not hold `width * height` pixels.
pub fn luma_tensor(width: usize, height: usize, luma: &[u8]) -> Result<Tensor4, ConvError> {
    Tensor4::new(
        [1, 1, height, width],
        luma.iter().map(|&v| f32::from(v) / 255.0).collect(),
    )
}

/// Renders the responses `[1, 3, H, W]` of [`filter_bank`] as 8-bit grey: the Sobel gradient
/// magnitude, with a fixed gain (not per-image normalisation, so two renders of nearly equal
/// responses are nearly equal images).
#[must_use]
pub fn magnitude_image(responses: &Tensor4) -> Vec<u8> {
    let [_, _, h, w] = responses.shape();
    let d = responses.data();
    let (gx, gy) = (&d[..h * w], &d[h * w..2 * h * w]);
    gx.iter()
        .zip(gy)
        .map(|(x, y)| {
            // A full black-to-white step gives a magnitude of 4; map 2 and above to white.
            let m = x.hypot(*y) / 2.0;
            (m.clamp(0.0, 1.0) * 255.0).round() as u8
        })
        .collect()
}
