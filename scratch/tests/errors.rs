//! Bad shapes come back as errors naming the dimension at fault, never as panics.

use anyhow::{Result, anyhow};
use proptest::prelude::*;
use scratch::{Conv2dParams, ConvError, Dim, Tensor4, fast, naive};

/// Both implementations must refuse the same way; returns the error.
fn refused(input: [usize; 4], weight: [usize; 4], bias: Option<usize>, params: Conv2dParams) -> Result<ConvError> {
    let (x, w) = (Tensor4::zeros(input), Tensor4::zeros(weight));
    let b = bias.map(|n| vec![0.0; n]);
    let a = naive::conv2d(&x, &w, b.as_deref(), &params)
        .err()
        .ok_or_else(|| anyhow!("naive accepted it"))?;
    let f = fast::conv2d(&x, &w, b.as_deref(), &params)
        .err()
        .ok_or_else(|| anyhow!("fast accepted it"))?;
    anyhow::ensure!(a == f, "naive says {a}, fast says {f}");
    Ok(a)
}

#[test]
fn mismatched_channels_name_both_sides() -> Result<()> {
    let e = refused([1, 3, 8, 8], [4, 2, 3, 3], None, Conv2dParams::default())?;
    assert_eq!(
        e,
        ConvError::ChannelMismatch {
            input: 3,
            weight_per_group: 2,
            groups: 1
        }
    );
    assert!(e.to_string().contains("input channels"), "{e}");
    Ok(())
}

#[test]
fn kernel_larger_than_padded_input_names_the_dimension() -> Result<()> {
    let e = refused([1, 1, 2, 8], [1, 1, 5, 3], None, Conv2dParams::default().padding(1))?;
    assert_eq!(
        e,
        ConvError::KernelTooLarge {
            dim: Dim::Height,
            kernel: 5,
            padded: 4
        }
    );
    assert!(e.to_string().contains("height"), "{e}");
    // Dilation widens the kernel: 3 taps at dilation 4 span 9 columns.
    let e = refused([1, 1, 8, 8], [1, 1, 3, 3], None, Conv2dParams::default().dilation(4))?;
    assert_eq!(
        e,
        ConvError::KernelTooLarge {
            dim: Dim::Height,
            kernel: 9,
            padded: 8
        }
    );
    let e = refused([1, 1, 8, 4], [1, 1, 3, 7], None, Conv2dParams::default().padding(1))?;
    assert_eq!(
        e,
        ConvError::KernelTooLarge {
            dim: Dim::Width,
            kernel: 7,
            padded: 6
        }
    );
    assert!(e.to_string().contains("width"), "{e}");
    Ok(())
}

#[test]
fn zero_stride_and_dilation_name_the_dimension() -> Result<()> {
    let p = Conv2dParams {
        stride: [1, 0],
        ..Conv2dParams::default()
    };
    let e = refused([1, 1, 4, 4], [1, 1, 3, 3], None, p)?;
    assert_eq!(e, ConvError::ZeroStride { dim: Dim::Width });
    assert_eq!(e.to_string(), "stride width is zero");
    let p = Conv2dParams {
        dilation: [0, 1],
        ..Conv2dParams::default()
    };
    assert_eq!(
        refused([1, 1, 4, 4], [1, 1, 3, 3], None, p)?,
        ConvError::ZeroDilation { dim: Dim::Height }
    );
    Ok(())
}

#[test]
fn groups_must_divide_both_channel_counts() -> Result<()> {
    let e = refused([1, 6, 4, 4], [4, 3, 3, 3], None, Conv2dParams::default().groups(4))?;
    assert_eq!(e, ConvError::GroupsInputChannels { groups: 4, channels: 6 });
    let e = refused([1, 6, 4, 4], [4, 2, 3, 3], None, Conv2dParams::default().groups(3))?;
    assert_eq!(e, ConvError::GroupsOutputChannels { groups: 3, channels: 4 });
    assert!(e.to_string().contains("output channels"), "{e}");
    assert_eq!(
        refused([1, 6, 4, 4], [4, 2, 3, 3], None, Conv2dParams::default().groups(0))?,
        ConvError::ZeroGroups
    );
    Ok(())
}

#[test]
fn bias_and_data_lengths_are_checked() -> Result<()> {
    let e = refused([1, 2, 4, 4], [5, 2, 3, 3], Some(4), Conv2dParams::default())?;
    assert_eq!(
        e,
        ConvError::BiasLength {
            got: 4,
            out_channels: 5
        }
    );
    assert_eq!(
        Tensor4::new([1, 2, 3, 4], vec![0.0; 23]),
        Err(ConvError::DataLength {
            shape: [1, 2, 3, 4],
            expected: 24,
            got: 23
        })
    );
    let e = refused([1, 2, 0, 4], [5, 2, 3, 3], None, Conv2dParams::default())?;
    assert!(matches!(e, ConvError::EmptyTensor { tensor: "input", .. }), "{e}");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Any small shape, valid or not: no panic, and both implementations agree on the outcome.
    #[test]
    fn arbitrary_shapes_never_panic(
        input in prop::array::uniform4(0usize..6),
        weight in prop::array::uniform4(0usize..6),
        stride in prop::array::uniform2(0usize..3),
        padding in prop::array::uniform2(0usize..3),
        dilation in prop::array::uniform2(0usize..3),
        groups in 0usize..4,
        bias in prop::option::of(0usize..6),
    ) {
        let params = Conv2dParams { stride, padding, dilation, groups };
        let (x, w) = (Tensor4::random(input, 1), Tensor4::random(weight, 2));
        let b = bias.map(|n| vec![0.5; n]);
        let a = naive::conv2d(&x, &w, b.as_deref(), &params);
        let f = fast::conv2d(&x, &w, b.as_deref(), &params);
        match (a, f) {
            (Ok(a), Ok(f)) => prop_assert!(a.max_abs_diff(&f).is_ok_and(|d| d <= 1e-5)),
            (Err(a), Err(f)) => prop_assert_eq!(a, f),
            (a, f) => prop_assert!(false, "naive {:?} but fast {:?}", a.err(), f.err()),
        }
    }
}
