//! Moving [`Tensor4`]s in and out of libtorch, and libtorch's own conv2d.

use anyhow::{Context, Result};
use scratch::{Conv2dParams, Tensor4};

pub fn to_tch(t: &Tensor4) -> tch::Tensor {
    let shape = t.shape().map(|d| d as i64);
    tch::Tensor::from_slice(t.data()).reshape(shape)
}

pub fn from_tch(t: &tch::Tensor) -> Result<Tensor4> {
    let size = t.size();
    let shape: [usize; 4] = size
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<_>, _>>()?
        .try_into()
        .map_err(|_| anyhow::anyhow!("libtorch returned a tensor of rank {} where 4 was expected", size.len()))?;
    let data = Vec::<f32>::try_from(t.flatten(0, -1)).context("reading libtorch's output")?;
    Ok(Tensor4::new(shape, data)?)
}

/// `F.conv2d(input, weight, bias, stride, padding, dilation, groups)`.
pub fn conv2d(
    input: &tch::Tensor,
    weight: &tch::Tensor,
    bias: Option<&tch::Tensor>,
    p: &Conv2dParams,
) -> Result<tch::Tensor> {
    let pair = |v: [usize; 2]| [v[0] as i64, v[1] as i64];
    Ok(input.f_conv2d(
        weight,
        bias,
        pair(p.stride),
        pair(p.padding),
        pair(p.dilation),
        p.groups as i64,
    )?)
}
