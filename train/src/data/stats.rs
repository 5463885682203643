//! Per-channel statistics of a split and the normalisation they define.

use onnx::PixelNormalisation;
use tch::{Device, Kind, Tensor};

use super::{DataError, Split};

/// Per-channel mean and standard deviation of a split's pixels scaled to `[0, 1]`. A split
/// whose statistics cannot be read is an error: zeros would make the std 0 and every
/// normalised pixel infinite.
pub fn channel_stats(split: &Split) -> Result<([f32; 3], [f32; 3]), DataError> {
    let shape = split.images.size();
    let [n, 3, h, w] = shape[..] else {
        return Err(DataError::Stats(format!(
            "expected images of shape [N, 3, H, W], got {shape:?}"
        )));
    };
    let mut sum = Tensor::zeros([3], (Kind::Double, Device::Cpu));
    let mut sq = Tensor::zeros([3], (Kind::Double, Device::Cpu));
    // In chunks: the whole training split as doubles would be 1.2 GB.
    let chunk = 4096;
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let x = split.images.narrow(0, start, len).to_kind(Kind::Double) / 255.0;
        sum += x.sum_dim_intlist(&[0i64, 2, 3][..], false, Kind::Double);
        sq += (&x * &x).sum_dim_intlist(&[0i64, 2, 3][..], false, Kind::Double);
        start += len;
    }
    let count = (n * h * w).max(1) as f64;
    let mean = &sum / count;
    let var = (&sq / count - &mean * &mean).clamp_min(1e-12);
    let to3 = |t: &Tensor| -> Result<[f32; 3], DataError> {
        let v = Vec::<f64>::try_from(t).map_err(|e| DataError::Stats(e.to_string()))?;
        match v[..] {
            [r, g, b] => Ok([r as f32, g as f32, b as f32]),
            _ => Err(DataError::Stats(format!("expected 3 channel values, read {}", v.len()))),
        }
    };
    Ok((to3(&mean)?, to3(&var.sqrt())?))
}

/// Scaling to `[0, 1]` and `(x - mean) / std` for a `u8` batch, as the one multiply-add of
/// [`PixelNormalisation`] (the serving side's too), on the batch's device.
#[derive(Debug)]
pub struct Normalizer {
    scale: Tensor,
    shift: Tensor,
}

impl Normalizer {
    pub fn new(mean: [f32; 3], std: [f32; 3], device: Device) -> Self {
        let PixelNormalisation { scale, shift } = PixelNormalisation::new(mean, std);
        Self {
            scale: Tensor::from_slice(&scale).view([1, 3, 1, 1]).to_device(device),
            shift: Tensor::from_slice(&shift).view([1, 3, 1, 1]).to_device(device),
        }
    }

    /// `u8 [B, 3, H, W]` to normalised `f32`.
    pub fn apply(&self, images: &Tensor) -> Tensor {
        images.to_kind(Kind::Float) * &self.scale + &self.shift
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_of_a_split_that_is_not_rgb_planes_are_an_error() {
        for shape in [vec![2, 32, 32], vec![2, 4, 32, 32]] {
            let split = Split {
                images: Tensor::zeros(shape.as_slice(), (Kind::Uint8, Device::Cpu)),
                labels: Tensor::zeros([2], (Kind::Int64, Device::Cpu)),
            };
            let err = channel_stats(&split).err().map(|e| e.to_string());
            assert!(
                err.as_deref()
                    .is_some_and(|e| e.contains("[N, 3, H, W]") && e.contains(&format!("{shape:?}"))),
                "{shape:?}: {err:?}"
            );
        }
    }

    #[test]
    fn stats_and_normalisation_agree() -> Result<(), Box<dyn std::error::Error>> {
        let images = Tensor::randint(256, [10, 3, 32, 32], (Kind::Uint8, Device::Cpu));
        let split = Split {
            labels: Tensor::zeros([10], (Kind::Int64, Device::Cpu)),
            images,
        };
        let (mean, std) = channel_stats(&split)?;
        let x = Normalizer::new(mean, std, Device::Cpu).apply(&split.images);
        let m = Vec::<f64>::try_from(x.mean_dim(&[0i64, 2, 3][..], false, Kind::Double))?;
        let s = Vec::<f64>::try_from(x.std_dim(&[0i64, 2, 3][..], false, false))?;
        for c in 0..3 {
            assert!(m[c].abs() < 1e-4, "{m:?}");
            assert!((s[c] - 1.0).abs() < 1e-3, "{s:?}");
        }
        Ok(())
    }
}
