use std::fmt;

/// A spatial dimension, named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    Height,
    Width,
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dim::Height => "height",
            Dim::Width => "width",
        })
    }
}

/// Why a convolution (or a tensor) could not be built. Each variant names the dimension at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvError {
    #[error("tensor data has {got} values but shape {shape:?} needs {expected}")]
    DataLength {
        shape: [usize; 4],
        expected: usize,
        got: usize,
    },
    #[error("{tensor} has a zero-sized dimension: shape {shape:?}")]
    EmptyTensor { tensor: &'static str, shape: [usize; 4] },
    #[error("stride {dim} is zero")]
    ZeroStride { dim: Dim },
    #[error("dilation {dim} is zero")]
    ZeroDilation { dim: Dim },
    #[error("groups is zero")]
    ZeroGroups,
    #[error("groups ({groups}) does not divide the input channels ({channels})")]
    GroupsInputChannels { groups: usize, channels: usize },
    #[error("groups ({groups}) does not divide the output channels ({channels})")]
    GroupsOutputChannels { groups: usize, channels: usize },
    #[error(
        "input channels mismatch: the input has {input} channels but the weight expects \
         {weight_per_group} per group x {groups} groups"
    )]
    ChannelMismatch {
        input: usize,
        weight_per_group: usize,
        groups: usize,
    },
    #[error("bias has {got} values but the weight has {out_channels} output channels")]
    BiasLength { got: usize, out_channels: usize },
    #[error("kernel {dim}: the dilated kernel spans {kernel} but the padded input is only {padded}")]
    KernelTooLarge { dim: Dim, kernel: usize, padded: usize },
    #[error("{tensor} shape {shape:?} has more elements than usize can count")]
    ShapeOverflow { tensor: &'static str, shape: [usize; 4] },
    #[error("{param} {dim} is too large: the size it implies ({formula}) overflows usize")]
    Overflow {
        param: &'static str,
        dim: Dim,
        formula: &'static str,
    },
    #[error("tensor shapes differ: {left:?} vs {right:?}")]
    ShapeMismatch { left: [usize; 4], right: [usize; 4] },
}
