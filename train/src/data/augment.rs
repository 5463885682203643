//! Training-time augmentation of a whole batch at once, on the batch's device.

use tch::{Kind, Tensor};

/// Random crop after zero-padding by `pad`, and a horizontal flip with probability 1/2, for
/// every image of a `[B, C, H, W]` batch at once: one gather with per-image row and column
/// indices (the flip reverses the column indices). Draws from libtorch's generator.
pub fn random_crop_flip(images: &Tensor, pad: i64) -> Tensor {
    let size = images.size();
    let (b, c, h, w) = (size[0], size[1], size[2], size[3]);
    let device = images.device();
    let opts = (Kind::Int64, device);
    let padded = images.constant_pad_nd([pad, pad, pad, pad]);
    let dy = Tensor::randint(2 * pad + 1, [b, 1], opts);
    let dx = Tensor::randint(2 * pad + 1, [b, 1], opts);
    let flip = Tensor::randint(2, [b, 1], opts).to_kind(Kind::Bool);
    let rows = dy + Tensor::arange(h, opts).view([1, h]);
    let cols_fwd = Tensor::arange(w, opts).view([1, w]);
    let cols = cols_fwd.where_self(&flip.logical_not(), &cols_fwd.flip([1])) + dx;
    let bi = Tensor::arange(b, opts).view([b, 1, 1, 1]);
    let ci = Tensor::arange(c, opts).view([1, c, 1, 1]);
    padded.index(&[
        Some(bi),
        Some(ci),
        Some(rows.view([b, 1, h, 1])),
        Some(cols.view([b, 1, 1, w])),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn crop_and_flip_are_shifts_and_mirrors_of_the_input() -> TestResult {
        tch::manual_seed(3);
        let b = 64;
        // Distinct values everywhere, so every output pixel tells where it came from.
        let x = Tensor::arange(b * 3 * 8 * 8, (Kind::Int64, Device::Cpu)).view([b, 3, 8, 8]) + 1;
        let y = random_crop_flip(&x, 2);
        assert_eq!(y.size(), x.size());
        let (mut flipped, mut shifted) = (0, 0);
        for n in 0..b {
            let (xi, yi) = (x.get(n), y.get(n));
            // Find the offset and flip that map x to y on the pixels that stay inside.
            let mut found = false;
            for flip in [false, true] {
                let src = if flip { xi.flip([2]) } else { xi.shallow_clone() };
                for dy in -2i64..=2 {
                    for dx in -2i64..=2 {
                        let padded = src.constant_pad_nd([2, 2, 2, 2]);
                        let cand = padded
                            .narrow(1, 2 + dy, 8)
                            .narrow(2, 2 + if flip { -dx } else { dx }, 8);
                        if cand.equal(&yi) {
                            found = true;
                            flipped += i32::from(flip);
                            shifted += i32::from(dx != 0 || dy != 0);
                        }
                    }
                }
            }
            assert!(found, "image {n} is not a crop/flip of its input");
        }
        // Both happen, and neither always (probability of failure ~ 2^-60).
        assert!(flipped > 10 && flipped < 54, "{flipped} flips");
        assert!(shifted > 40, "{shifted} shifts");
        Ok(())
    }
}
