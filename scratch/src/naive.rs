//! The direct loop nest: the oracle, and the version to read to learn what a convolution is.
//!
//! Every output element is a dot product between one filter and the input window under it. The
//! sum is accumulated in `f64` so that the oracle's own rounding stays far below the tolerances
//! the parity tests put on the fast implementation and on libtorch.

use crate::{Conv2dParams, ConvError, Geometry, Tensor4};

/// Direct 2-D convolution, see the [crate] docs for the shapes.
///
/// # Errors
/// A [`ConvError`] naming the dimension that does not describe a valid convolution.
pub fn conv2d(
    input: &Tensor4,
    weight: &Tensor4,
    bias: Option<&[f32]>,
    params: &Conv2dParams,
) -> Result<Tensor4, ConvError> {
    let g = Geometry::new(input.shape(), weight.shape(), bias.map(<[f32]>::len), params)?;
    let [stride_h, stride_w] = params.stride;
    let [pad_h, pad_w] = params.padding;
    let [dil_h, dil_w] = params.dilation;
    let mut output = Tensor4::zeros(g.output_shape());

    for n in 0..g.batch {
        for oc in 0..g.out_channels {
            // Output channel `oc` belongs to one group and sees only that group's input channels.
            let group = oc / g.out_per_group;
            for oh in 0..g.out_height {
                for ow in 0..g.out_width {
                    let mut acc = bias.map_or(0.0, |b| f64::from(b[oc]));
                    for ic in 0..g.in_per_group {
                        let c = group * g.in_per_group + ic;
                        for kh in 0..g.kernel[0] {
                            // Padding is implicit: taps that fall outside the input add zero.
                            let Some(ih) = (oh * stride_h + kh * dil_h).checked_sub(pad_h) else {
                                continue;
                            };
                            if ih >= g.height {
                                continue;
                            }
                            for kw in 0..g.kernel[1] {
                                let Some(iw) = (ow * stride_w + kw * dil_w).checked_sub(pad_w) else {
                                    continue;
                                };
                                if iw >= g.width {
                                    continue;
                                }
                                acc += f64::from(input.at(n, c, ih, iw)) * f64::from(weight.at(oc, ic, kh, kw));
                            }
                        }
                    }
                    let i = output.index(n, oc, oh, ow);
                    output.data_mut()[i] = acc as f32;
                }
            }
        }
    }
    Ok(output)
}
