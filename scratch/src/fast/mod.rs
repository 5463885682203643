//! The fast convolution: implicit GEMM, cache-blocked and register-tiled, on rayon threads.
//!
//! Per image and group the convolution is the matrix product `W[M x K] * X[K x P]`, with `M` the
//! output channels of the group, `K = C/groups * KH * KW` and `P` the output pixels; `X` is the
//! im2col matrix, which is never built whole:
//!
//! - stride 1 along the width ("direct" source): the input is zero-padded once, and row `k` of
//!   `X` restricted to `NR` pixels of one output row is a contiguous slice of the padded input,
//!   found by an offset. The micro-kernel reads it in place.
//! - otherwise ("packed" source): each task packs the `X` columns it owns, one `KC` block of rows
//!   at a time, into `NR`-wide panels that stay in L1/L2 while every output channel uses them.
//!
//! Weights are read in place, `KC` columns at a time. Work is split into tasks over images,
//! groups, pixel tiles and (when that is not enough to feed every thread) output-channel blocks;
//! each task owns a disjoint block of the output.

mod kernel;

use std::cell::RefCell;

use rayon::prelude::*;

use kernel::Tile;
pub use kernel::{Kernel, MR, NR};

use crate::{Conv2dParams, ConvError, Geometry, Tensor4};

/// Rows of `X` (and columns of `W`) per cache block: a `KC x NR` panel is 16 KiB, within L1.
const KC: usize = 256;
/// Micro-panels of output channels per block: `MC_PANELS * MR * KC` weights (96 KiB) stay in L2.
const MC_PANELS: usize = 16;
/// Pixel tiles per task at most, so a packed `X` block (256 KiB) stays in L2.
const MAX_TILES_PER_TASK: usize = 16;

/// Fast 2-D convolution with the best micro-kernel this CPU supports; see the [crate] docs.
///
/// # Errors
/// A [`ConvError`] naming the dimension that does not describe a valid convolution.
pub fn conv2d(
    input: &Tensor4,
    weight: &Tensor4,
    bias: Option<&[f32]>,
    params: &Conv2dParams,
) -> Result<Tensor4, ConvError> {
    conv2d_with_kernel(input, weight, bias, params, Kernel::best())
}

/// [`conv2d`] with a chosen micro-kernel, e.g. [`Kernel::portable`] to test the fallback.
///
/// # Errors
/// A [`ConvError`] naming the dimension that does not describe a valid convolution.
pub fn conv2d_with_kernel(
    input: &Tensor4,
    weight: &Tensor4,
    bias: Option<&[f32]>,
    params: &Conv2dParams,
    kernel: Kernel,
) -> Result<Tensor4, ConvError> {
    let g = Geometry::new(input.shape(), weight.shape(), bias.map(<[f32]>::len), params)?;
    let mut output = vec![0.0f32; g.output_shape().iter().product()];
    Plan::new(&g, input.data(), weight.data(), bias).run(kernel, &mut output);
    Tensor4::new(g.output_shape(), output)
}

/// The zero-padded input buffer's length for the direct source, `None` when it would not fit in
/// `usize` or would be out of proportion to the input and output (a huge padding or dilation
/// with a small output): the packed source then reads the raw input instead.
fn direct_len(g: &Geometry) -> Option<usize> {
    let hp = g.height.checked_add(g.params.padding[0].checked_mul(2)?)?;
    let wp = g.width.checked_add(g.params.padding[1].checked_mul(2)?)?;
    let planes = g.batch.checked_mul(g.in_channels)?;
    // Slack: the last partial tile of the last row reads (and discards) up to NR past the end.
    let len = planes
        .checked_mul(hp)?
        .checked_mul(wp)?
        .checked_add(wp)?
        .checked_add(2 * NR)?;
    let input = planes * g.height * g.width;
    let output = g.output_shape().iter().product::<usize>();
    let bound = input
        .saturating_add(output)
        .saturating_mul(4)
        .saturating_add(4 * NR + wp);
    (len <= bound).then_some(len)
}

/// Whether [`conv2d`] reads this convolution's input in place (the "direct" source, see the
/// module docs) rather than packing it: for tests that must reach both paths.
#[doc(hidden)]
#[must_use]
pub fn reads_in_place(g: &Geometry) -> bool {
    uses_direct(g).is_some()
}

/// The direct source's buffer length when a convolution takes it.
fn uses_direct(g: &Geometry) -> Option<usize> {
    let ow = g.out_width;
    // The direct source needs unit width stride, and pays for a partial tile at each row end.
    let wide = g.params.stride[1] == 1 && (ow.is_multiple_of(NR) || ow >= 4 * NR);
    wide.then(|| direct_len(g)).flatten()
}

/// Where the micro-kernel finds the rows of `X`.
enum Source<'a> {
    /// Stride-1 width: the zero-padded input `[N][C][HP][WP]` (plus slack), read in place.
    Direct {
        padded: Vec<f32>,
        hp: usize,
        wp: usize,
        koff: Vec<usize>,
    },
    /// Any stride: columns packed per task from the raw input.
    Packed { input: &'a [f32], seq: Vec<usize> },
}

struct Plan<'a> {
    g: Geometry,
    weight: &'a [f32],
    /// Per group, the weights of the last, partial micro-panel of output channels, zero-padded to
    /// `MR` rows, so the kernel never reads past the weight tensor.
    tail_weights: Vec<Vec<f32>>,
    /// Per group, `m_panels * MR` bias values (zero where there is no bias or no channel).
    bias: Vec<f32>,
    m: usize,
    k: usize,
    m_panels: usize,
    tiles_per_row: usize,
    n_tiles: usize,
    source: Source<'a>,
}

/// One unit of parallel work: a block of the output no other task writes.
#[derive(Debug, Clone, Copy)]
struct Task {
    image: usize,
    group: usize,
    tiles: (usize, usize),
    panels: (usize, usize),
}

/// A raw output pointer shared by tasks that write disjoint blocks.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint regions (see `Plan::tasks`), and the buffer outlives the scope.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

thread_local! {
    /// Each worker's packed-`X` buffer, reused across tasks to avoid a fresh (mmap-sized)
    /// allocation per task.
    static PACK_BUF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl<'a> Plan<'a> {
    fn new(g: &Geometry, input: &'a [f32], weight: &'a [f32], bias: Option<&[f32]>) -> Self {
        let m = g.out_per_group;
        let k = g.in_per_group * g.kernel[0] * g.kernel[1];
        let m_panels = m.div_ceil(MR);
        let groups = g.params.groups;

        let tail_rows = m % MR;
        let tail_weights = (0..groups)
            .map(|grp| {
                if tail_rows == 0 {
                    return Vec::new();
                }
                let first_row = grp * m + (m_panels - 1) * MR;
                let mut w = vec![0.0f32; MR * k];
                w[..tail_rows * k].copy_from_slice(&weight[first_row * k..(first_row + tail_rows) * k]);
                w
            })
            .collect();
        let mut padded_bias = vec![0.0f32; groups * m_panels * MR];
        if let Some(b) = bias {
            for grp in 0..groups {
                padded_bias[grp * m_panels * MR..][..m].copy_from_slice(&b[grp * m..(grp + 1) * m]);
            }
        }

        let (ow, p) = (g.out_width, g.out_height * g.out_width);
        let (source, tiles_per_row, n_tiles) = if let Some(padded_len) = uses_direct(g) {
            let tiles_per_row = ow.div_ceil(NR);
            (
                Self::direct_source(g, input, padded_len, tiles_per_row),
                tiles_per_row,
                g.out_height * tiles_per_row,
            )
        } else {
            let seq = (0..KC.min(k)).map(|i| i * NR).collect();
            (Source::Packed { input, seq }, 0, p.div_ceil(NR))
        };
        Self {
            g: *g,
            weight,
            tail_weights,
            bias: padded_bias,
            m,
            k,
            m_panels,
            tiles_per_row,
            n_tiles,
            source,
        }
    }

    /// `padded_len` comes from [`direct_len`], which checked every product below.
    fn direct_source(g: &Geometry, input: &[f32], padded_len: usize, tiles_per_row: usize) -> Source<'a> {
        let [ph, pw] = g.params.padding;
        let [dh, dw] = g.params.dilation;
        let (h, w) = (g.height, g.width);
        let (hp, wp) = (h + 2 * ph, w + 2 * pw);
        let planes = g.batch * g.in_channels;
        let mut padded = vec![0.0f32; padded_len];
        padded[..planes * hp * wp]
            .par_chunks_mut(hp * wp)
            .zip(input.par_chunks(h * w))
            .for_each(|(dst, src)| {
                for (y, row) in src.chunks_exact(w).enumerate() {
                    dst[(y + ph) * wp + pw..][..w].copy_from_slice(row);
                }
            });
        let [kh, kw] = g.kernel;
        let mut koff = Vec::with_capacity(g.in_per_group * kh * kw);
        for c in 0..g.in_per_group {
            for y in 0..kh {
                for x in 0..kw {
                    koff.push(c * hp * wp + y * dh * wp + x * dw);
                }
            }
        }
        // The one bounds check the unsafe kernel relies on: the last plane of the last image and
        // group, its last tile's first column, the furthest tap, and the NR values read from it.
        let last_plane = ((g.batch - 1) * g.in_channels + (g.params.groups - 1) * g.in_per_group) * hp * wp;
        let last_tile = (g.out_height - 1) * g.params.stride[0] * wp + (tiles_per_row - 1) * NR;
        let furthest_tap = koff.iter().copied().max().unwrap_or(0);
        let end = [last_tile, furthest_tap, NR]
            .into_iter()
            .try_fold(last_plane, usize::checked_add);
        assert!(
            end.is_some_and(|end| end <= padded.len()),
            "direct source: the kernel would read up to {end:?} of a {}-value buffer",
            padded.len()
        );
        Source::Direct { padded, hp, wp, koff }
    }

    /// Splits the work so each thread gets several tasks (for balance) and no task packs more than
    /// fits in L2.
    fn tasks(&self) -> Vec<Task> {
        let threads = rayon::current_num_threads();
        let units = self.g.batch * self.g.params.groups;
        let want = if threads > 1 { threads * 4 } else { 1 };
        let tile_chunks = self
            .n_tiles
            .div_ceil(MAX_TILES_PER_TASK)
            .max(want.div_ceil(units))
            .min(self.n_tiles);
        let tiles_per_task = self.n_tiles.div_ceil(tile_chunks);
        let tile_chunks = self.n_tiles.div_ceil(tiles_per_task);
        let m_chunks = want.div_ceil(units * tile_chunks).clamp(1, self.m_panels);
        let panels_per_task = self.m_panels.div_ceil(m_chunks);
        let m_chunks = self.m_panels.div_ceil(panels_per_task);

        let mut tasks = Vec::with_capacity(units * tile_chunks * m_chunks);
        for image in 0..self.g.batch {
            for group in 0..self.g.params.groups {
                for tc in 0..tile_chunks {
                    for mc in 0..m_chunks {
                        tasks.push(Task {
                            image,
                            group,
                            tiles: (tc * tiles_per_task, ((tc + 1) * tiles_per_task).min(self.n_tiles)),
                            panels: (mc * panels_per_task, ((mc + 1) * panels_per_task).min(self.m_panels)),
                        });
                    }
                }
            }
        }
        tasks
    }

    fn run(&self, kernel: Kernel, output: &mut [f32]) {
        let out = OutPtr(output.as_mut_ptr());
        let tasks = self.tasks();
        if tasks.len() == 1 {
            self.run_task(tasks[0], kernel, out);
        } else {
            tasks.into_par_iter().for_each(|task| self.run_task(task, kernel, out));
        }
    }

    /// The output offset of a pixel tile's first column (within one output channel plane), the
    /// offset of its first `X` column in the padded input (direct source), and its width.
    fn tile(&self, t: usize) -> (usize, usize, usize) {
        let ow = self.g.out_width;
        match &self.source {
            Source::Direct { wp, .. } => {
                let (oy, ox) = (t / self.tiles_per_row, (t % self.tiles_per_row) * NR);
                (oy * ow + ox, oy * self.g.params.stride[0] * wp + ox, NR.min(ow - ox))
            }
            Source::Packed { .. } => {
                let p0 = t * NR;
                (p0, 0, NR.min(self.g.out_height * ow - p0))
            }
        }
    }

    fn run_task(&self, task: Task, kernel: Kernel, out: OutPtr) {
        match &self.source {
            Source::Packed { .. } => PACK_BUF.with_borrow_mut(|buf| self.run_task_with(task, kernel, out, buf)),
            Source::Direct { .. } => self.run_task_with(task, kernel, out, &mut Vec::new()),
        }
    }

    fn run_task_with(&self, task: Task, kernel: Kernel, out: OutPtr, pack: &mut Vec<f32>) {
        let g = &self.g;
        let ldc = g.out_height * g.out_width;
        let (t0, t1) = task.tiles;
        // First output channel of this image and group.
        let out_base = (task.image * g.out_channels + task.group * self.m) * ldc;
        let mut scratch_tile = [0.0f32; MR * NR];

        for k0 in (0..self.k).step_by(KC) {
            let kc = KC.min(self.k - k0);
            let first = k0 == 0;
            let (b_base, boff): (*const f32, &[usize]) = match &self.source {
                Source::Direct { padded, hp, wp, koff } => {
                    let plane = task.image * g.in_channels + task.group * g.in_per_group;
                    (padded[plane * hp * wp..].as_ptr(), &koff[k0..k0 + kc])
                }
                Source::Packed { input, seq } => {
                    self.pack_x(input, task, k0, kc, pack);
                    (pack.as_ptr(), &seq[..kc])
                }
            };
            for mc0 in (task.panels.0..task.panels.1).step_by(MC_PANELS) {
                let mc1 = (mc0 + MC_PANELS).min(task.panels.1);
                for t in t0..t1 {
                    let (c_off, x_off, width) = self.tile(t);
                    let b = match self.source {
                        // SAFETY: offsets stay inside `padded` (slack included): `direct_source`
                        // asserts that the furthest value any tile reads is inside it.
                        Source::Direct { .. } => unsafe { b_base.add(x_off) },
                        // SAFETY: the packed block holds `t1 - t0` panels of `kc * NR`.
                        Source::Packed { .. } => unsafe { b_base.add((t - t0) * kc * NR) },
                    };
                    for mp in mc0..mc1 {
                        let rows = MR.min(self.m - mp * MR);
                        let a = if rows == MR {
                            &self.weight[(task.group * self.m + mp * MR) * self.k + k0..]
                        } else {
                            &self.tail_weights[task.group][k0..]
                        };
                        let bias = &self.bias[(task.group * self.m_panels + mp) * MR..][..MR];
                        // SAFETY: this task alone writes rows `mp*MR..+rows` and columns
                        // `c_off..+width` of its image/group block.
                        let c = unsafe { out.0.add(out_base + mp * MR * ldc + c_off) };
                        let mut tile = Tile {
                            kc,
                            a: a.as_ptr(),
                            lda: self.k,
                            b,
                            boff: boff.as_ptr(),
                            c,
                            ldc,
                            first,
                            bias: bias.as_ptr(),
                        };
                        if rows == MR && width == NR {
                            // SAFETY: a full tile inside the output; A, B and bias bounds as above.
                            unsafe { kernel.run(&tile) };
                            continue;
                        }
                        // Edge tile: run on a scratch tile, then copy the valid part back.
                        // SAFETY (all three blocks): only `rows x width` of C are touched.
                        if !first {
                            for r in 0..rows {
                                for j in 0..width {
                                    scratch_tile[r * NR + j] = unsafe { *c.add(r * ldc + j) };
                                }
                            }
                        }
                        tile.c = scratch_tile.as_mut_ptr();
                        tile.ldc = NR;
                        unsafe { kernel.run(&tile) };
                        for r in 0..rows {
                            for j in 0..width {
                                unsafe { *c.add(r * ldc + j) = scratch_tile[r * NR + j] };
                            }
                        }
                    }
                }
            }
        }
    }

    /// Packs rows `k0..k0+kc` of the im2col matrix, for this task's pixel tiles, into panels
    /// `[tile][k][NR]` (zeros for padding taps and for columns past the last pixel).
    fn pack_x(&self, input: &[f32], task: Task, k0: usize, kc: usize, buf: &mut Vec<f32>) {
        let g = &self.g;
        let (t0, t1) = task.tiles;
        let [kh_n, kw_n] = g.kernel;
        let [sh, sw] = g.params.stride;
        let [ph, pw] = g.params.padding;
        let [dh, dw] = g.params.dilation;
        let (h, w, ow) = (g.height, g.width, g.out_width);
        let plane0 = (task.image * g.in_channels + task.group * g.in_per_group) * h * w;

        // Each tile's columns as runs within one output row: (buffer column, out row, out col, len).
        let mut runs = Vec::new();
        for t in t0..t1 {
            let (p0, _, width) = self.tile(t);
            let mut j = 0;
            while j < width {
                let (oy, ox) = ((p0 + j) / ow, (p0 + j) % ow);
                let len = (ow - ox).min(width - j);
                runs.push(((t - t0) * kc * NR + j, oy, ox, len));
                j += len;
            }
        }

        buf.clear();
        buf.resize((t1 - t0) * kc * NR, 0.0);
        for kk in 0..kc {
            let k = k0 + kk;
            let (c, ky, kx) = (k / (kh_n * kw_n), (k / kw_n) % kh_n, k % kw_n);
            let plane = &input[plane0 + c * h * w..][..h * w];
            for &(col, oy, ox, len) in &runs {
                let Some(iy) = (oy * sh + ky * dh).checked_sub(ph).filter(|&iy| iy < h) else {
                    continue;
                };
                let row = &plane[iy * w..][..w];
                let dst = &mut buf[col + kk * NR..][..len];
                // Input column of output column `ox + j` is `x0 + j*sw - pw`; keep those in `0..w`.
                let x0 = ox * sw + kx * dw;
                let j_lo = pw.saturating_sub(x0).div_ceil(sw);
                let j_hi = if w + pw > x0 {
                    (w + pw - x0).div_ceil(sw).min(len)
                } else {
                    0
                };
                for j in j_lo..j_hi {
                    dst[j] = row[x0 + j * sw - pw];
                }
            }
        }
    }
}
