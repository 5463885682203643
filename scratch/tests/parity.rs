//! Both implementations against live libtorch: the student's shape, the ResNet-18 layers, and
//! random shapes.

mod common;

use anyhow::Result;
use common::{check_close, libtorch_conv2d};
use proptest::prelude::*;
use scratch::fast::{self, Kernel};
use scratch::{Conv2dParams, Tensor4, naive};

/// Runs naive, fast (best kernel) and fast (portable kernel) and compares each with libtorch.
fn all_match_libtorch(
    input: &Tensor4,
    weight: &Tensor4,
    bias: Option<&[f32]>,
    params: &Conv2dParams,
    max_abs: f32,
    max_rel: f64,
) -> Result<()> {
    let reference = libtorch_conv2d(input, weight, bias, params)?;
    check_close(
        "naive",
        &naive::conv2d(input, weight, bias, params)?,
        &reference,
        max_abs,
        max_rel,
    )?;
    check_close(
        "fast",
        &fast::conv2d(input, weight, bias, params)?,
        &reference,
        max_abs,
        max_rel,
    )?;
    let portable = fast::conv2d_with_kernel(input, weight, bias, params, Kernel::portable())?;
    check_close("fast (portable kernel)", &portable, &reference, max_abs, max_rel)
}

#[test]
fn student_shape_matches_libtorch_within_1e_5() -> Result<()> {
    let input = Tensor4::random([1, 3, 128, 128], 11);
    let weight = Tensor4::random([16, 3, 3, 3], 12);
    let bias = Tensor4::random([1, 1, 1, 16], 13).into_data();
    all_match_libtorch(
        &input,
        &weight,
        Some(&bias),
        &Conv2dParams::default().padding(1),
        1e-5,
        1e-6,
    )
}

/// Every distinct convolution of the CIFAR-10 ResNet-18 (3x3 stem at 32x32), batch 1, plus the
/// ImageNet 7x7 stride-2 stem on a smaller image.
#[test]
fn resnet18_layer_shapes_match_libtorch() -> Result<()> {
    // (in channels, out channels, input size, kernel, stride, padding)
    let layers = [
        (3, 64, 32, 3, 1, 1),
        (64, 64, 32, 3, 1, 1),
        (64, 128, 32, 3, 2, 1),
        (64, 128, 32, 1, 2, 0),
        (128, 128, 16, 3, 1, 1),
        (128, 256, 16, 3, 2, 1),
        (128, 256, 16, 1, 2, 0),
        (256, 256, 8, 3, 1, 1),
        (256, 512, 8, 3, 2, 1),
        (256, 512, 8, 1, 2, 0),
        (512, 512, 4, 3, 1, 1),
        (3, 64, 64, 7, 2, 3),
    ];
    for (i, &(cin, cout, size, k, stride, pad)) in layers.iter().enumerate() {
        let seed = 100 + 3 * i as u64;
        let input = Tensor4::random([1, cin, size, size], seed);
        let weight = Tensor4::random([cout, cin, k, k], seed + 1);
        let bias = Tensor4::random([1, 1, 1, cout], seed + 2).into_data();
        let params = Conv2dParams::default().stride(stride).padding(pad);
        all_match_libtorch(&input, &weight, Some(&bias), &params, 1e-4, 1e-6)
            .map_err(|e| e.context(format!("layer {cin}->{cout} {k}x{k} stride {stride} at {size}x{size}")))?;
    }
    Ok(())
}

/// A random convolution that is valid by construction.
#[derive(Debug, Clone)]
struct Case {
    input: [usize; 4],
    weight: [usize; 4],
    params: Conv2dParams,
    bias: bool,
    seed: u64,
}

fn valid_case() -> impl Strategy<Value = Case> {
    (
        (1usize..=3, 1usize..=3, 1usize..=4, 1usize..=14),
        (1usize..=4, 1usize..=4, 1usize..=3, 1usize..=3),
        (0usize..=2, 0usize..=2, 1usize..=2, 1usize..=2),
        (0usize..=12, 0usize..=70, any::<bool>(), any::<u64>()),
    )
        .prop_map(
            |((batch, groups, cin_g, cout_g), (kh, kw, sh, sw), (ph, pw, dh, dw), (eh, ew, bias, seed))| {
                // Smallest input the dilated kernel fits in once padded, plus some slack.
                let fit = |k: usize, d: usize, p: usize| (d * (k - 1) + 1).saturating_sub(2 * p).max(1);
                Case {
                    input: [batch, groups * cin_g, fit(kh, dh, ph) + eh, fit(kw, dw, pw) + ew],
                    weight: [groups * cout_g, cin_g, kh, kw],
                    params: Conv2dParams {
                        stride: [sh, sw],
                        padding: [ph, pw],
                        dilation: [dh, dw],
                        groups,
                    },
                    bias,
                    seed,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_shapes_match_libtorch(case in valid_case()) {
        let input = Tensor4::random(case.input, case.seed);
        let weight = Tensor4::random(case.weight, case.seed ^ 1);
        let bias = case.bias.then(|| Tensor4::random([1, 1, 1, case.weight[0]], case.seed ^ 2).into_data());
        let result = all_match_libtorch(&input, &weight, bias.as_deref(), &case.params, 1e-4, 1e-6);
        prop_assert!(result.is_ok(), "{:?}: {:?}", case, result.err());
    }
}

/// Wide rows take the direct (unpacked, stride-1) source; also across batch and groups.
#[test]
fn direct_source_shapes_match_libtorch() -> Result<()> {
    for (i, (input, weight, params)) in [
        (
            [2, 4, 9, 70],
            [6, 2, 3, 3],
            Conv2dParams::default().padding(1).groups(2),
        ),
        (
            [1, 3, 5, 64],
            [7, 3, 3, 3],
            Conv2dParams {
                stride: [2, 1],
                padding: [1, 2],
                ..Default::default()
            },
        ),
        (
            [1, 2, 6, 40],
            [13, 2, 2, 5],
            Conv2dParams::default().dilation(2).padding(4),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let seed = 500 + 3 * i as u64;
        let bias = Tensor4::random([1, 1, 1, weight[0]], seed + 2).into_data();
        all_match_libtorch(
            &Tensor4::random(input, seed),
            &Tensor4::random(weight, seed + 1),
            Some(&bias),
            &params,
            1e-4,
            1e-6,
        )?;
    }
    Ok(())
}
