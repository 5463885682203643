//! A 2-D convolution written from scratch in pure Rust, and proven equal to libtorch's.
//!
//! The crate holds two implementations of one operation — `conv2d` over NCHW `f32` tensors with
//! bias, stride, padding, dilation and groups — behind one signature:
//!
//! - [`naive`]: the direct loop nest, written to be read. It is the oracle the tests trust and the
//!   teaching version of the operation.
//! - [`fast`]: an implicit-GEMM convolution (weights read in place, input columns packed only for
//!   strided convolutions), a cache-blocked, register-tiled micro-kernel (AVX2+FMA when the CPU
//!   has it, portable code otherwise) and rayon threads over images, groups, output tiles and
//!   channel blocks.
//!
//! The library depends on no ML crate: libtorch is linked only into the `scratch` binary (the
//! benchmark and the edge-detection demo, behind the default `cli` feature) and into the tests.
//!
//! ```
//! use scratch::{Conv2dParams, Tensor4};
//! let input = Tensor4::random([1, 3, 8, 8], 1);
//! let weight = Tensor4::random([4, 3, 3, 3], 2);
//! let params = Conv2dParams::default().padding(1);
//! let a = scratch::naive::conv2d(&input, &weight, None, &params)?;
//! let b = scratch::fast::conv2d(&input, &weight, None, &params)?;
//! assert_eq!(a.shape(), [1, 4, 8, 8]);
//! assert!(a.max_abs_diff(&b)? < 1e-5);
//! # Ok::<(), scratch::ConvError>(())
//! ```

pub mod edges;
mod error;
pub mod fast;
mod geometry;
pub mod naive;
mod tensor;

pub use error::{ConvError, Dim};
pub use geometry::{Conv2dParams, Geometry};
pub use tensor::Tensor4;

/// The convolution the crate recommends: [`fast::conv2d`].
///
/// # Errors
/// See [`ConvError`]: any shape that does not describe a valid convolution.
pub fn conv2d(
    input: &Tensor4,
    weight: &Tensor4,
    bias: Option<&[f32]>,
    params: &Conv2dParams,
) -> Result<Tensor4, ConvError> {
    fast::conv2d(input, weight, bias, params)
}
