//! ResNet-18 in its CIFAR form, built from `tch::nn` primitives.
//!
//! 3x3 stride-1 stem (no max-pool, the images are 32x32), four stages of two [`BasicBlock`]s
//! with `width x {1, 2, 4, 8}` channels, stride 2 at the first block of stages 2-4, a projection
//! shortcut (1x1 conv + BatchNorm) wherever the shape changes, global average pool, linear head.
//!
//! Variable names in the `VarStore` (and so in checkpoints) are `stem.{conv,bn}.*`,
//! `layer{1-4}.{0,1}.{conv1,conv2,shortcut}.{conv,bn}.*` and `fc.{weight,bias}`. The fields are
//! public so that the summary and the ONNX exporter walk the same structure the forward pass uses.

use tch::nn::{self, ModuleT};
use tch::{Kind, Tensor};

/// Channel multiplier and class count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResNetConfig {
    /// Channels of the first stage: 64 is the standard ResNet-18; 16 and 32 train on a CPU.
    pub width: i64,
    pub num_classes: i64,
}

impl Default for ResNetConfig {
    fn default() -> Self {
        Self {
            width: 64,
            num_classes: 10,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModelError {
    #[error("expected input of shape [N, 3, H, W], got {0:?}")]
    InputShape(Vec<i64>),
    #[error(
        "BatchNorm in training mode needs at least 2 images per batch, got {0}; \
         evaluate single images with train=false"
    )]
    TrainingBatchOfOne(i64),
    #[error("invalid model configuration: {0}")]
    Config(String),
    #[error("cannot read {what} back from the device: {reason}")]
    Readback { what: &'static str, reason: String },
}

/// A convolution without bias followed by BatchNorm (bias would be cancelled by the BN mean).
#[derive(Debug)]
pub struct ConvBn {
    pub conv: nn::Conv2D,
    pub bn: nn::BatchNorm,
    pub in_channels: i64,
    pub out_channels: i64,
    pub kernel: i64,
    pub stride: i64,
    pub padding: i64,
}

impl ConvBn {
    fn new(vs: &nn::Path<'_>, in_channels: i64, out_channels: i64, kernel: i64, stride: i64) -> Self {
        let padding = kernel / 2;
        let config = nn::ConvConfig {
            stride,
            padding,
            bias: false,
            ..Default::default()
        };
        Self {
            conv: nn::conv2d(vs / "conv", in_channels, out_channels, kernel, config),
            bn: nn::batch_norm2d(vs / "bn", out_channels, Default::default()),
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
        }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        xs.apply(&self.conv).apply_t(&self.bn, train)
    }
}

/// Two 3x3 conv-BN layers with a residual connection: `relu(bn2(conv2(relu(bn1(conv1 x)))) + s(x))`.
#[derive(Debug)]
pub struct BasicBlock {
    pub conv1: ConvBn,
    pub conv2: ConvBn,
    /// Projection when stride or channels change; identity otherwise.
    pub shortcut: Option<ConvBn>,
}

impl BasicBlock {
    fn new(vs: &nn::Path<'_>, in_channels: i64, out_channels: i64, stride: i64) -> Self {
        let shortcut = (stride != 1 || in_channels != out_channels)
            .then(|| ConvBn::new(&(vs / "shortcut"), in_channels, out_channels, 1, stride));
        Self {
            conv1: ConvBn::new(&(vs / "conv1"), in_channels, out_channels, 3, stride),
            conv2: ConvBn::new(&(vs / "conv2"), out_channels, out_channels, 3, 1),
            shortcut,
        }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let out = self.conv1.forward_t(xs, train).relu();
        let out = self.conv2.forward_t(&out, train);
        let skip = match &self.shortcut {
            Some(proj) => proj.forward_t(xs, train),
            None => xs.shallow_clone(),
        };
        (out + skip).relu()
    }
}

#[derive(Debug)]
pub struct ResNet18 {
    pub config: ResNetConfig,
    pub stem: ConvBn,
    /// Four stages of two blocks each.
    pub stages: Vec<Vec<BasicBlock>>,
    pub fc: nn::Linear,
}

impl ResNet18 {
    pub fn new(vs: &nn::Path<'_>, config: ResNetConfig) -> Result<Self, ModelError> {
        if config.width < 1 {
            return Err(ModelError::Config(format!(
                "width must be at least 1, got {}",
                config.width
            )));
        }
        if config.num_classes < 2 {
            return Err(ModelError::Config(format!(
                "need at least 2 classes, got {}",
                config.num_classes
            )));
        }
        let w = config.width;
        let stem = ConvBn::new(&(vs / "stem"), 3, w, 3, 1);
        let mut stages = Vec::with_capacity(4);
        let mut in_channels = w;
        for (i, mult) in [1, 2, 4, 8].into_iter().enumerate() {
            let out_channels = w * mult;
            let stage_vs = vs / format!("layer{}", i + 1);
            let first_stride = if i == 0 { 1 } else { 2 };
            let blocks = vec![
                BasicBlock::new(&(&stage_vs / "0"), in_channels, out_channels, first_stride),
                BasicBlock::new(&(&stage_vs / "1"), out_channels, out_channels, 1),
            ];
            stages.push(blocks);
            in_channels = out_channels;
        }
        let fc = nn::linear(vs / "fc", in_channels, config.num_classes, Default::default());
        Ok(Self {
            config,
            stem,
            stages,
            fc,
        })
    }

    /// Channels entering the classifier.
    pub fn feature_channels(&self) -> i64 {
        self.config.width * 8
    }

    /// The forward pass with the input checked first, so a bad call is an error and not a
    /// libtorch abort: `xs` is `[N, 3, H, W]` float, and training mode needs `N >= 2`.
    pub fn forward_checked(&self, xs: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        let size = xs.size();
        if size.len() != 4 || size[1] != 3 || size[0] < 1 {
            return Err(ModelError::InputShape(size));
        }
        if train && size[0] < 2 {
            return Err(ModelError::TrainingBatchOfOne(size[0]));
        }
        Ok(self.forward_unchecked(xs, train))
    }

    fn forward_unchecked(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut out = self.stem.forward_t(xs, train).relu();
        for block in self.stages.iter().flatten() {
            out = block.forward_t(&out, train);
        }
        out.mean_dim(&[2i64, 3][..], false, Kind::Float).apply(&self.fc)
    }
}

impl ModuleT for ResNet18 {
    /// Prefer [`ResNet18::forward_checked`]; this one is for `tch` APIs that need a `ModuleT`.
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.forward_unchecked(xs, train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, nn::VarStore};

    fn param_count(vs: &VarStore) -> i64 {
        vs.trainable_variables().iter().map(|t| t.numel() as i64).sum()
    }

    #[test]
    fn standard_width_has_the_published_parameter_count() -> Result<(), ModelError> {
        let vs = VarStore::new(Device::Cpu);
        let model = ResNet18::new(&vs.root(), ResNetConfig::default())?;
        assert_eq!(param_count(&vs), 11_173_962);
        let out = model.forward_checked(&Tensor::zeros([2, 3, 32, 32], (Kind::Float, Device::Cpu)), false)?;
        assert_eq!(out.size(), [2, 10]);
        Ok(())
    }

    #[test]
    fn training_batch_of_one_is_an_error_and_eval_works() -> Result<(), ModelError> {
        let vs = VarStore::new(Device::Cpu);
        let model = ResNet18::new(
            &vs.root(),
            ResNetConfig {
                width: 4,
                num_classes: 3,
            },
        )?;
        let one = Tensor::zeros([1, 3, 32, 32], (Kind::Float, Device::Cpu));
        assert_eq!(
            model.forward_checked(&one, true).err(),
            Some(ModelError::TrainingBatchOfOne(1))
        );
        assert_eq!(model.forward_checked(&one, false)?.size(), [1, 3]);
        let gray = Tensor::zeros([2, 1, 32, 32], (Kind::Float, Device::Cpu));
        assert_eq!(
            model.forward_checked(&gray, false).err(),
            Some(ModelError::InputShape(vec![2, 1, 32, 32]))
        );
        Ok(())
    }

    #[test]
    fn variable_names_follow_the_documented_scheme() -> Result<(), ModelError> {
        let vs = VarStore::new(Device::Cpu);
        let _model = ResNet18::new(
            &vs.root(),
            ResNetConfig {
                width: 4,
                num_classes: 10,
            },
        )?;
        let vars = vs.variables();
        for name in [
            "stem.conv.weight",
            "stem.bn.running_mean",
            "layer1.0.conv1.conv.weight",
            "layer2.0.shortcut.bn.weight",
            "layer4.1.conv2.bn.running_var",
            "fc.bias",
        ] {
            assert!(vars.contains_key(name), "missing {name}");
        }
        assert!(
            !vars.contains_key("layer1.0.shortcut.conv.weight"),
            "stage 1 keeps the identity shortcut"
        );
        Ok(())
    }
}
