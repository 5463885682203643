//! libtorch as the reference: the same conv through `tch`, and the comparisons the issue asks for.

use anyhow::{Context, Result, anyhow};
use scratch::{Conv2dParams, Tensor4};

pub fn to_tch(t: &Tensor4) -> tch::Tensor {
    tch::Tensor::from_slice(t.data()).reshape(t.shape().map(|d| d as i64))
}

/// `F.conv2d` on libtorch, returned as a [`Tensor4`].
pub fn libtorch_conv2d(input: &Tensor4, weight: &Tensor4, bias: Option<&[f32]>, p: &Conv2dParams) -> Result<Tensor4> {
    let _guard = tch::no_grad_guard();
    let pair = |v: [usize; 2]| [v[0] as i64, v[1] as i64];
    let bias = bias.map(tch::Tensor::from_slice);
    let out = to_tch(input).f_conv2d(
        &to_tch(weight),
        bias.as_ref(),
        pair(p.stride),
        pair(p.padding),
        pair(p.dilation),
        p.groups as i64,
    )?;
    let shape: [usize; 4] = out
        .size()
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<_>, _>>()?
        .try_into()
        .map_err(|_| anyhow!("libtorch output is not 4-D"))?;
    let data = Vec::<f32>::try_from(out.flatten(0, -1)).context("reading libtorch's output")?;
    Ok(Tensor4::new(shape, data)?)
}

/// Fails with both error measures when `ours` is not within `max_abs` and `max_rel` of libtorch.
pub fn check_close(name: &str, ours: &Tensor4, reference: &Tensor4, max_abs: f32, max_rel: f64) -> Result<()> {
    let abs = ours.max_abs_diff(reference)?;
    let rel = ours.relative_error(reference)?;
    if abs <= max_abs && rel <= max_rel {
        Ok(())
    } else {
        Err(anyhow!(
            "{name}: max abs diff {abs:e} (limit {max_abs:e}), relative error {rel:e} (limit {max_rel:e})"
        ))
    }
}
