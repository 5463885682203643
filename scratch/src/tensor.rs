use crate::ConvError;

/// The number of elements of `shape`, or [`ConvError::ShapeOverflow`] naming `tensor`.
pub(crate) fn elements(tensor: &'static str, shape: [usize; 4]) -> Result<usize, ConvError> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or(ConvError::ShapeOverflow { tensor, shape })
}

fn checked_len(shape: [usize; 4]) -> usize {
    match elements("tensor", shape) {
        Ok(n) => n,
        Err(e) => panic!("{e}"),
    }
}

/// An owned, contiguous NCHW tensor of `f32`: `[batch, channels, height, width]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor4 {
    shape: [usize; 4],
    data: Vec<f32>,
}

impl Tensor4 {
    /// Wraps `data` laid out row-major in `shape`.
    ///
    /// # Errors
    /// [`ConvError::ShapeOverflow`] when the product of `shape` does not fit in `usize`, and
    /// [`ConvError::DataLength`] when `data` does not hold exactly that many values.
    pub fn new(shape: [usize; 4], data: Vec<f32>) -> Result<Self, ConvError> {
        let expected = elements("tensor", shape)?;
        if data.len() != expected {
            return Err(ConvError::DataLength {
                shape,
                expected,
                got: data.len(),
            });
        }
        Ok(Self { shape, data })
    }

    /// A tensor of zeros.
    ///
    /// # Panics
    /// When the product of `shape` overflows `usize` (like `Vec::with_capacity`): a wrapped
    /// length would break the invariant `data.len() == product(shape)` that the kernels rely on.
    #[must_use]
    pub fn zeros(shape: [usize; 4]) -> Self {
        Self {
            shape,
            data: vec![0.0; checked_len(shape)],
        }
    }

    /// Uniform values in `[-1, 1)` from a fixed seed (SplitMix64), so that benchmarks, demos and
    /// tests can make reproducible inputs without an RNG dependency.
    ///
    /// # Panics
    /// As [`Tensor4::zeros`].
    #[must_use]
    pub fn random(shape: [usize; 4], seed: u64) -> Self {
        let mut state = seed;
        let data = (0..checked_len(shape))
            .map(|_| {
                state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                // The top 24 bits are exactly representable in an f32 mantissa, and so is their
                // double, so a plain multiply and add round once, as `mul_add` would, without
                // its call to a software `fmaf` on targets without an FMA instruction.
                ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        Self { shape, data }
    }

    #[must_use]
    pub fn shape(&self) -> [usize; 4] {
        self.shape
    }

    #[must_use]
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    #[must_use]
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// The flat index of element `[n, c, h, w]`.
    #[must_use]
    pub fn index(&self, n: usize, c: usize, h: usize, w: usize) -> usize {
        ((n * self.shape[1] + c) * self.shape[2] + h) * self.shape[3] + w
    }

    /// Element `[n, c, h, w]`; panics when out of bounds, like slice indexing.
    #[must_use]
    pub fn at(&self, n: usize, c: usize, h: usize, w: usize) -> f32 {
        self.data[self.index(n, c, h, w)]
    }

    /// The largest `|a - b|` over all elements.
    ///
    /// # Errors
    /// [`ConvError::ShapeMismatch`] when the shapes differ.
    pub fn max_abs_diff(&self, other: &Self) -> Result<f32, ConvError> {
        self.check_same_shape(other)?;
        Ok(self
            .data
            .iter()
            .zip(&other.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max))
    }

    /// `||self - other|| / ||other||` (Frobenius norms, computed in f64); 0 when both are zero.
    ///
    /// # Errors
    /// [`ConvError::ShapeMismatch`] when the shapes differ.
    pub fn relative_error(&self, other: &Self) -> Result<f64, ConvError> {
        self.check_same_shape(other)?;
        let (mut diff, mut norm) = (0.0f64, 0.0f64);
        for (a, b) in self.data.iter().zip(&other.data) {
            let d = f64::from(*a) - f64::from(*b);
            diff += d * d;
            norm += f64::from(*b) * f64::from(*b);
        }
        Ok(if norm == 0.0 { diff.sqrt() } else { (diff / norm).sqrt() })
    }

    fn check_same_shape(&self, other: &Self) -> Result<(), ConvError> {
        if self.shape == other.shape {
            Ok(())
        } else {
            Err(ConvError::ShapeMismatch {
                left: self.shape,
                right: other.shape,
            })
        }
    }
}
