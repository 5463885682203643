//! The batches of one pass over a split.

use tch::{Device, Kind, Tensor};

/// The batches of one pass over `n` examples, as index tensors on `device` (where the split's
/// images are): shuffled (from that device's libtorch generator) or in order.
/// Training passes never end with a batch of one, which BatchNorm cannot train on: such a last
/// image is left out of that epoch (it is in a different place in the next shuffle).
pub fn batch_indices(n: i64, batch_size: i64, shuffle: bool, training: bool, device: Device) -> Vec<Tensor> {
    let order = if shuffle {
        Tensor::randperm(n, (Kind::Int64, device))
    } else {
        Tensor::arange(n, (Kind::Int64, device))
    };
    let mut out = Vec::new();
    let mut start = 0;
    while start < n {
        let len = batch_size.min(n - start);
        if training && len < 2 {
            break;
        }
        out.push(order.narrow(0, start, len));
        start += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_batches_never_end_with_one_image() {
        for n in [2, 5, 9, 10, 129] {
            for bs in [2, 4, 8, 128] {
                let batches = batch_indices(n, bs, true, true, Device::Cpu);
                assert!(batches.iter().all(|b| b.size()[0] >= 2), "n={n} bs={bs}");
                let seen: i64 = batches.iter().map(|b| b.size()[0]).sum();
                assert!(seen >= n - 1);
                let eval: i64 = batch_indices(n, bs, false, false, Device::Cpu)
                    .iter()
                    .map(|b| b.size()[0])
                    .sum();
                assert_eq!(eval, n);
            }
        }
    }
}
