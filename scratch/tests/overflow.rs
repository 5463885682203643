//! Sizes at the edge of `usize`: every size is checked, never wrapped (in release builds a wrapped
//! size used to pass validation and send the kernel outside its buffer), and convolutions with
//! huge strides, paddings and dilations but small outputs still equal the naive oracle, on both
//! the packed and the direct (in place) source.

use proptest::prelude::*;
use scratch::fast::{self, Kernel};
use scratch::{Conv2dParams, ConvError, Dim, Geometry, Tensor4, naive};

const HUGE: [usize; 8] = [
    usize::MAX,
    usize::MAX - 1,
    1 << 63,
    (1 << 63) - 1,
    (1 << 63) + 1,
    1 << 62,
    1 << 32,
    (1 << 31) + 7,
];

/// Naive, fast (best kernel) and fast (portable kernel) on one case: the same error, or outputs
/// within the parity tests' limits (1e-4 absolute, 1e-6 relative) of the oracle.
fn agree(input: &Tensor4, weight: &Tensor4, bias: Option<&[f32]>, params: &Conv2dParams) -> Result<(), String> {
    let oracle = naive::conv2d(input, weight, bias, params);
    for (name, kernel) in [("best", Kernel::best()), ("portable", Kernel::portable())] {
        let got = fast::conv2d_with_kernel(input, weight, bias, params, kernel);
        match (&oracle, &got) {
            (Ok(a), Ok(b)) => {
                let d = b.max_abs_diff(a).map_err(|e| e.to_string())?;
                let rel = b.relative_error(a).map_err(|e| e.to_string())?;
                if d > 1e-4 || rel > 1e-6 {
                    return Err(format!("{name} kernel: max abs diff {d:e}, relative {rel:e} vs naive"));
                }
            }
            (Err(a), Err(b)) if a == b => {}
            (a, b) => {
                return Err(format!(
                    "naive {:?} but fast ({name}) {:?}",
                    a.as_ref().err(),
                    b.as_ref().err()
                ));
            }
        }
    }
    Ok(())
}

/// The example: 3 taps at dilation 2^63 span 2^64 + 1 rows, which wrapped to 1.
#[test]
fn dilation_2_pow_63_is_refused_by_name() {
    let input = Tensor4::random([1, 1, 8, 65], 1);
    let weight = Tensor4::random([1, 1, 3, 1], 2);
    let params = Conv2dParams {
        dilation: [1 << 63, 1],
        ..Conv2dParams::default()
    };
    let expected = ConvError::Overflow {
        param: "dilation",
        dim: Dim::Height,
        formula: "dilation * (kernel - 1) + 1",
    };
    assert_eq!(
        naive::conv2d(&input, &weight, None, &params).err(),
        Some(expected.clone())
    );
    assert_eq!(
        fast::conv2d(&input, &weight, None, &params).err(),
        Some(expected.clone())
    );
    assert_eq!(
        expected.to_string(),
        "dilation height is too large: the size it implies (dilation * (kernel - 1) + 1) overflows usize"
    );
}

#[test]
fn padding_and_shape_overflows_name_the_field() {
    let dims = [1, 1, 8, 8];
    let err = Geometry::new(dims, [1, 1, 3, 3], None, &Conv2dParams::default().padding(1 << 63));
    assert_eq!(
        err,
        Err(ConvError::Overflow {
            param: "padding",
            dim: Dim::Height,
            formula: "size + 2 * padding",
        })
    );
    // 2^32 x 2^32 elements wrap to 0: a tensor must not claim that shape over an empty buffer.
    let shape = [1, 1, 1 << 32, 1 << 32];
    assert_eq!(
        Tensor4::new(shape, Vec::new()),
        Err(ConvError::ShapeOverflow {
            tensor: "tensor",
            shape
        })
    );
    assert_eq!(
        Geometry::new(shape, [1, 1, 1, 1], None, &Conv2dParams::default()),
        Err(ConvError::ShapeOverflow { tensor: "input", shape })
    );
    // An output of 2^33 x 2^33 pixels from a 1x1 input padded by 2^32 on each side.
    let err = Geometry::new(
        [1, 1, 1, 1],
        [1, 1, 1, 1],
        None,
        &Conv2dParams::default().padding(1 << 32),
    );
    assert!(
        matches!(err, Err(ConvError::ShapeOverflow { tensor: "output", .. })),
        "{err:?}"
    );
}

#[test]
#[should_panic(expected = "more elements than usize can count")]
fn zeros_of_an_overflowing_shape_panics_instead_of_wrapping() {
    let _ = Tensor4::zeros([1, 1, 1 << 32, 1 << 32]);
}

/// Any value, weighted towards the edges of `usize`.
fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        3 => 1usize..6,
        3 => prop::sample::select(HUGE.to_vec()),
        1 => any::<usize>(),
    ]
}

/// `Geometry::new`'s sizes recomputed in `u128`, where nothing here can overflow.
fn exact(input: [usize; 4], weight: [usize; 4], p: &Conv2dParams) -> Result<[u128; 2], &'static str> {
    let fits = |s: [usize; 4]| {
        s.iter()
            .try_fold(1u128, |n, &d| n.checked_mul(d as u128))
            .is_some_and(|n| n <= usize::MAX as u128)
    };
    if !fits(input) || !fits(weight) {
        return Err("shape");
    }
    let max = usize::MAX as u128;
    let mut out = [0u128; 2];
    for i in 0..2 {
        let padded = input[2 + i] as u128 + 2 * p.padding[i] as u128;
        if padded > max {
            return Err("padding");
        }
        let span = p.dilation[i] as u128 * (weight[2 + i] as u128 - 1) + 1;
        if span > max {
            return Err("dilation");
        }
        if span > padded {
            return Err("kernel");
        }
        out[i] = (padded - span) / p.stride[i] as u128 + 1;
    }
    let output = [input[0] as u128, weight[0] as u128, out[0], out[1]];
    if output
        .iter()
        .try_fold(1u128, |n, &d| n.checked_mul(d))
        .is_none_or(|n| n > max)
    {
        return Err("output");
    }
    Ok(out)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Every size `Geometry::new` derives equals the exact one, and whenever the exact one does
    /// not fit, the error names what overflowed.
    #[test]
    fn geometry_matches_exact_arithmetic(
        n in size(), c in size(), h in size(), w in size(), o in size(), kh in size(), kw in size(),
        stride in prop::array::uniform2(size()), padding in prop::array::uniform2(prop_oneof![0usize..3, size()]),
        dilation in prop::array::uniform2(size()),
    ) {
        let params = Conv2dParams { stride, padding, dilation, groups: 1 };
        let (input, weight) = ([n, c, h, w], [o, c, kh, kw]);
        // Zeros are refused before any arithmetic (tests/errors.rs).
        prop_assume!(!input.contains(&0) && !weight.contains(&0) && !stride.contains(&0) && !dilation.contains(&0));
        let got = Geometry::new(input, weight, None, &params);
        match (exact(input, weight, &params), got) {
            (Ok(out), Ok(g)) => {
                prop_assert_eq!([g.out_height as u128, g.out_width as u128], out);
            }
            (Err("shape"), Err(ConvError::ShapeOverflow { tensor, .. })) => prop_assert!(tensor == "input" || tensor == "weight"),
            (Err("output"), Err(ConvError::ShapeOverflow { tensor: "output", .. })) => {}
            (Err(want @ ("padding" | "dilation")), Err(ConvError::Overflow { param, .. })) => prop_assert_eq!(want, param),
            (Err("kernel"), Err(ConvError::KernelTooLarge { .. })) => {}
            (want, got) => prop_assert!(false, "exact {:?} but Geometry::new {:?}", want, got),
        }
    }
}

/// One spatial dimension of a case that is valid and small in its output whatever its
/// parameters: `(input size, kernel, stride, padding, dilation)`.
fn axis(direct_width: bool) -> impl Strategy<Value = (usize, usize, usize, usize, usize)> {
    let huge = || prop::sample::select(HUGE.to_vec());
    let small = (1usize..7, 1usize..4, 1usize..3, 0usize..3, 1usize..3)
        .prop_filter("fits", |&(s, k, _, p, d)| d * (k - 1) < s + 2 * p);
    // A huge stride: one output along the axis, whatever the padding.
    let huge_stride = (1usize..7, 1usize..4, huge(), 0usize..3, 1usize..3)
        .prop_filter("fits", |&(s, k, _, p, d)| d * (k - 1) < s + 2 * p);
    // A huge dilation, with just enough padding that 1 to 3 outputs remain: each takes one tap
    // at most from the input.
    let huge_dilation = (1usize..7, 2usize..4, 0usize..5, (1usize << 40)..(1 << 61)).prop_map(|(s, k, extra, d)| {
        let span = d * (k - 1) + 1;
        let pad = (span - s.min(span)).div_ceil(2) + extra / 2;
        (s, k, 1, pad, d)
    });
    // A huge padding and a stride of the same size: an output in the padding, one on the input.
    let huge_padding = (1usize..7, 1usize..4, (1usize << 40)..(1 << 61)).prop_map(|(s, k, p)| (s, k, p, p, 1));
    if direct_width {
        // The direct source needs stride 1 along the width and a wide output: only the height
        // takes the huge values there.
        (68usize..90, 1usize..4, Just(1usize), 0usize..3, 1usize..3).boxed()
    } else {
        prop_oneof![small, huge_stride, huge_dilation, huge_padding].boxed()
    }
}

fn run_case(
    batch: usize,
    cin: usize,
    cout: usize,
    (h, kh, sh, ph, dh): (usize, usize, usize, usize, usize),
    (w, kw, sw, pw, dw): (usize, usize, usize, usize, usize),
    seed: u64,
) -> Result<bool, String> {
    let params = Conv2dParams {
        stride: [sh, sw],
        padding: [ph, pw],
        dilation: [dh, dw],
        groups: 1,
    };
    let g = Geometry::new([batch, cin, h, w], [cout, cin, kh, kw], None, &params).map_err(|e| e.to_string())?;
    let input = Tensor4::random([batch, cin, h, w], seed);
    let weight = Tensor4::random([cout, cin, kh, kw], seed ^ 1);
    let bias = Tensor4::random([1, 1, 1, cout], seed ^ 2).into_data();
    agree(&input, &weight, Some(&bias), &params).map_err(|e| format!("{params:?} {g:?}: {e}"))?;
    Ok(fast::reads_in_place(&g))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Huge strides, paddings and dilations on small tensors, through the packed source.
    #[test]
    fn huge_parameters_match_the_oracle(
        (batch, cin, cout) in (1usize..3, 1usize..4, 1usize..8),
        hax in axis(false), wax in axis(false), seed in any::<u64>(),
    ) {
        let direct = run_case(batch, cin, cout, hax, wax, seed);
        prop_assert!(direct.is_ok(), "{:?}", direct);
    }

    /// Huge height parameters with a wide, stride-1 width: the direct source reads in place.
    #[test]
    fn huge_height_parameters_on_the_direct_source_match_the_oracle(
        (batch, cin, cout) in (1usize..3, 1usize..4, 1usize..8),
        hax in axis(false), wax in axis(true), seed in any::<u64>(),
    ) {
        let direct = run_case(batch, cin, cout, hax, wax, seed);
        prop_assert!(direct.is_ok(), "{:?}", direct);
    }

    /// More than one 256-deep block of `K` (so the edge tiles read back their partial sums)
    /// together with a partial last tile on each output row of the direct source.
    #[test]
    fn deep_k_with_partial_tiles_on_the_direct_source_matches_the_oracle(
        cin in 29usize..70, cout in 1usize..14, oh in 1usize..4, ow in 64usize..100, seed in any::<u64>(),
    ) {
        prop_assume!(ow % 16 != 0);
        let (k, pad) = (3, 1);
        let direct = run_case(1, cin, cout, (oh, k, 1, pad, 1), (ow, k, 1, pad, 1), seed);
        prop_assert_eq!(direct, Ok(true), "K = {}", cin * k * k);
    }
}

/// The strategies above do reach the direct source with a huge height stride and with deep `K`.
#[test]
fn the_direct_source_is_reached_by_the_strategies() {
    let huge_stride = run_case(1, 2, 3, (5, 3, 1 << 63, 1, 1), (70, 3, 1, 1, 1), 9);
    assert_eq!(huge_stride, Ok(true));
    let deep = run_case(1, 40, 7, (3, 3, 1, 1, 1), (70, 3, 1, 1, 1), 10);
    assert_eq!(deep, Ok(true));
    // A huge height dilation makes the padded buffer out of proportion: packed instead.
    let dilated = run_case(1, 1, 1, (2, 2, 1, (1 << 50) / 2 + 1, 1 << 50), (70, 1, 1, 0, 1), 11);
    assert_eq!(dilated, Ok(false));
}
