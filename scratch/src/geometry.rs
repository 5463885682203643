use crate::tensor::elements;
use crate::{ConvError, Dim};

/// Convolution hyper-parameters, `[height, width]` pairs as in PyTorch's `F.conv2d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dParams {
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Self {
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            groups: 1,
        }
    }
}

impl Conv2dParams {
    /// The same stride in both dimensions.
    #[must_use]
    pub fn stride(mut self, s: usize) -> Self {
        self.stride = [s, s];
        self
    }

    /// The same zero padding in both dimensions.
    #[must_use]
    pub fn padding(mut self, p: usize) -> Self {
        self.padding = [p, p];
        self
    }

    /// The same dilation in both dimensions.
    #[must_use]
    pub fn dilation(mut self, d: usize) -> Self {
        self.dilation = [d, d];
        self
    }

    #[must_use]
    pub fn groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }
}

/// A validated convolution: every size both implementations need, derived once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub batch: usize,
    pub in_channels: usize,
    pub height: usize,
    pub width: usize,
    pub out_channels: usize,
    pub kernel: [usize; 2],
    pub params: Conv2dParams,
    pub out_height: usize,
    pub out_width: usize,
    pub in_per_group: usize,
    pub out_per_group: usize,
}

impl Geometry {
    /// Checks an input shape `[N, C, H, W]`, a weight shape `[O, C/groups, KH, KW]` and an optional
    /// bias length against `params`.
    ///
    /// Every size it derives, the output's element count included, fits in `usize`.
    ///
    /// # Errors
    /// A [`ConvError`] naming the first dimension that does not fit.
    pub fn new(
        input: [usize; 4],
        weight: [usize; 4],
        bias_len: Option<usize>,
        params: &Conv2dParams,
    ) -> Result<Self, ConvError> {
        let [batch, in_channels, height, width] = input;
        let [out_channels, weight_per_group, kh, kw] = weight;
        if input.contains(&0) {
            return Err(ConvError::EmptyTensor {
                tensor: "input",
                shape: input,
            });
        }
        if weight.contains(&0) {
            return Err(ConvError::EmptyTensor {
                tensor: "weight",
                shape: weight,
            });
        }
        for (i, dim) in [Dim::Height, Dim::Width].into_iter().enumerate() {
            if params.stride[i] == 0 {
                return Err(ConvError::ZeroStride { dim });
            }
            if params.dilation[i] == 0 {
                return Err(ConvError::ZeroDilation { dim });
            }
        }
        let groups = params.groups;
        if groups == 0 {
            return Err(ConvError::ZeroGroups);
        }
        if in_channels % groups != 0 {
            return Err(ConvError::GroupsInputChannels {
                groups,
                channels: in_channels,
            });
        }
        if out_channels % groups != 0 {
            return Err(ConvError::GroupsOutputChannels {
                groups,
                channels: out_channels,
            });
        }
        if weight_per_group * groups != in_channels {
            return Err(ConvError::ChannelMismatch {
                input: in_channels,
                weight_per_group,
                groups,
            });
        }
        if let Some(got) = bias_len
            && got != out_channels
        {
            return Err(ConvError::BiasLength { got, out_channels });
        }
        elements("input", input)?;
        elements("weight", weight)?;
        let mut out = [0; 2];
        for (i, (dim, size, k)) in [(Dim::Height, height, kh), (Dim::Width, width, kw)]
            .into_iter()
            .enumerate()
        {
            // Checked: in release builds a wrapped size would pass the test below and send the
            // kernels outside their buffers.
            let padded = params.padding[i]
                .checked_mul(2)
                .and_then(|p| p.checked_add(size))
                .ok_or(ConvError::Overflow {
                    param: "padding",
                    dim,
                    formula: "size + 2 * padding",
                })?;
            let span = params.dilation[i]
                .checked_mul(k - 1)
                .and_then(|s| s.checked_add(1))
                .ok_or(ConvError::Overflow {
                    param: "dilation",
                    dim,
                    formula: "dilation * (kernel - 1) + 1",
                })?;
            if span > padded {
                return Err(ConvError::KernelTooLarge {
                    dim,
                    kernel: span,
                    padded,
                });
            }
            out[i] = (padded - span) / params.stride[i] + 1;
        }
        elements("output", [batch, out_channels, out[0], out[1]])?;
        Ok(Self {
            batch,
            in_channels,
            height,
            width,
            out_channels,
            kernel: [kh, kw],
            params: *params,
            out_height: out[0],
            out_width: out[1],
            in_per_group: weight_per_group,
            out_per_group: out_channels / groups,
        })
    }

    /// The output shape `[N, O, OH, OW]`.
    #[must_use]
    pub fn output_shape(&self) -> [usize; 4] {
        [self.batch, self.out_channels, self.out_height, self.out_width]
    }

    /// Multiply-accumulates in the whole convolution (a FLOP count is twice this).
    #[must_use]
    pub fn macs(&self) -> usize {
        self.batch
            * self.out_channels
            * self.out_height
            * self.out_width
            * self.in_per_group
            * self.kernel[0]
            * self.kernel[1]
    }
}
