//! The register-tiled micro-kernels: `C[MR x NR] (+)= A[MR x kc] * B[kc x NR]`.
//!
//! `A` rows are read straight from the weight tensor (row stride `lda`), so weights are never
//! repacked. `B` row `k` starts at `b + boff[k]` and holds `NR` contiguous values: for a stride-1
//! convolution that is a slice of the zero-padded input itself (no im2col at all), otherwise a
//! row of a packed panel. 6x16 keeps 12 AVX accumulators, two `B` vectors and one broadcast in
//! the 16 `ymm` registers, enough independent FMAs to hide their latency on two FMA ports.

/// Rows of the micro-tile (output channels).
pub const MR: usize = 6;
/// Columns of the micro-tile (output pixels).
pub const NR: usize = 16;

/// The arguments shared by every micro-kernel.
///
/// Safety contract for whoever builds one: `a + r*lda + k` is readable for `r < MR, k < kc`;
/// `b + boff[k] + j` is readable for `k < kc, j < NR` (`boff` has `kc` entries); `c + r*ldc + j`
/// is writable (and readable unless `first`) for `r < MR, j < NR`; `bias` has `MR` values.
#[derive(Debug, Clone, Copy)]
pub struct Tile {
    pub kc: usize,
    pub a: *const f32,
    pub lda: usize,
    pub b: *const f32,
    pub boff: *const usize,
    pub c: *mut f32,
    pub ldc: usize,
    /// On the first `k` block the tile is `bias + A*B`; on later ones it is added to `C`.
    pub first: bool,
    pub bias: *const f32,
}

/// Which micro-kernel a convolution runs: the best the CPU supports, or the portable one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernel(Isa);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
}

impl Kernel {
    /// The fastest kernel this CPU runs, detected at run time.
    #[must_use]
    pub fn best() -> Self {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Self(Isa::Avx2Fma);
        }
        Self(Isa::Portable)
    }

    /// Plain Rust, for any CPU (the compiler vectorises it for the baseline target).
    #[must_use]
    pub fn portable() -> Self {
        Self(Isa::Portable)
    }

    #[must_use]
    pub fn name(self) -> &'static str {
        match self.0 {
            Isa::Portable => "portable",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => "avx2+fma",
        }
    }

    /// Runs the micro-kernel on one tile.
    ///
    /// # Safety
    /// `tile` must satisfy the contract documented on [`Tile`].
    #[inline]
    pub(crate) unsafe fn run(self, tile: &Tile) {
        match self.0 {
            // SAFETY: the caller upholds the tile contract.
            Isa::Portable => unsafe { portable(tile) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Avx2Fma` is only built by `best()` after detecting both features.
            Isa::Avx2Fma => unsafe { avx2_fma(tile) },
        }
    }
}

/// `a * b + c`, fused only where the target has a fused multiply-add instruction: elsewhere
/// (x86-64 without the `fma` feature, the default target) `f32::mul_add` is a call to a software
/// `fmaf` for every element, which no compiler vectorises, while a multiply and an add vectorise
/// on any SIMD baseline (SSE2, NEON).
#[inline(always)]
fn madd(a: f32, b: f32, c: f32) -> f32 {
    if cfg!(any(target_feature = "fma", target_arch = "aarch64")) {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// # Safety
/// See [`Tile`].
unsafe fn portable(t: &Tile) {
    let mut acc = [[0.0f32; NR]; MR];
    for k in 0..t.kc {
        // SAFETY: in bounds by the tile contract.
        let brow = unsafe { std::slice::from_raw_parts(t.b.add(*t.boff.add(k)), NR) };
        for (r, acc_row) in acc.iter_mut().enumerate() {
            // SAFETY: in bounds by the tile contract.
            let a = unsafe { *t.a.add(r * t.lda + k) };
            for (c, b) in acc_row.iter_mut().zip(brow) {
                *c = madd(a, *b, *c);
            }
        }
    }
    for (r, acc_row) in acc.iter().enumerate() {
        // SAFETY: in bounds by the tile contract.
        let (crow, bias) = unsafe { (std::slice::from_raw_parts_mut(t.c.add(r * t.ldc), NR), *t.bias.add(r)) };
        for (c, v) in crow.iter_mut().zip(acc_row) {
            *c = if t.first { v + bias } else { *c + v };
        }
    }
}

/// # Safety
/// See [`Tile`]; the CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_fma(t: &Tile) {
    use std::arch::x86_64::{
        __m256, _mm256_add_ps, _mm256_broadcast_ss, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_setzero_ps,
        _mm256_storeu_ps,
    };
    let mut acc: [[__m256; 2]; MR] = [[_mm256_setzero_ps(); 2]; MR];
    let a = t.a;
    let lda = t.lda;
    for k in 0..t.kc {
        // SAFETY: in bounds by the tile contract.
        unsafe {
            let bp = t.b.add(*t.boff.add(k));
            let b0 = _mm256_loadu_ps(bp);
            let b1 = _mm256_loadu_ps(bp.add(8));
            let ak = a.add(k);
            for (r, acc_row) in acc.iter_mut().enumerate() {
                let ar = _mm256_broadcast_ss(&*ak.add(r * lda));
                acc_row[0] = _mm256_fmadd_ps(ar, b0, acc_row[0]);
                acc_row[1] = _mm256_fmadd_ps(ar, b1, acc_row[1]);
            }
        }
    }
    for (r, acc_row) in acc.iter().enumerate() {
        // SAFETY: in bounds by the tile contract.
        unsafe {
            let cp = t.c.add(r * t.ldc);
            let (base0, base1) = if t.first {
                let bias = _mm256_broadcast_ss(&*t.bias.add(r));
                (bias, bias)
            } else {
                (_mm256_loadu_ps(cp), _mm256_loadu_ps(cp.add(8)))
            };
            _mm256_storeu_ps(cp, _mm256_add_ps(base0, acc_row[0]));
            _mm256_storeu_ps(cp.add(8), _mm256_add_ps(base1, acc_row[1]));
        }
    }
}
