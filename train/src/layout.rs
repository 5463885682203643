//! The channels-last memory layout (PyTorch's `channels_last`): the rule for when training may
//! use it, and the conversion, in one place for the trainer, the optimiser's tests and the CLI.

use tch::{Device, Tensor};

/// Rewrites NCHW-shaped 4-D tensors with NHWC strides (PyTorch's `channels_last`), which
/// libtorch's convolutions pick up from the strides.
pub fn to_channels_last(t: &Tensor) -> Tensor {
    if t.dim() == 4 {
        t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
    } else {
        t.shallow_clone()
    }
}

/// Whether channels-last training is safe for this width (what `--channels-last auto` picks).
/// On the CPU, libtorch 2.11's oneDNN backward-weights kernel for 1x1 convolutions corrupts the
/// heap (double free, or a spin that never ends with two threads) when a channels-last layer
/// has 4 channels; AVX2 kernels block channels by 8, so channels-last is used on a CPU only when
/// every layer's count is a multiple.
pub fn channels_last_supported(width: i64, device: Device) -> bool {
    device.is_cuda() || width % 8 == 0
}
