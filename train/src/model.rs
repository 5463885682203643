//! ResNet-18 in its CIFAR form, built from `tch::nn` primitives on the structure that
//! [`crate::arch`] describes.
//!
//! Variable names in the `VarStore` (and so in checkpoints) are `stem.{conv,bn}.*`,
//! `layer{1-4}.{0,1}.{conv1,conv2,shortcut}.{conv,bn}.*` and `fc.{weight,bias}`. The fields are
//! public so that the summary and the ONNX exporter walk the same structure the forward pass uses.

use std::convert::Infallible;

use tch::nn::{self, ModuleT};
use tch::{Kind, Tensor};

use crate::arch::{self, Arch, Block, Body, ConvSpec, Ops};

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
    pub spec: ConvSpec,
    pub conv: nn::Conv2D,
    pub bn: nn::BatchNorm,
}

impl ConvBn {
    fn new(root: &nn::Path<'_>, spec: &ConvSpec) -> Self {
        // `nn::Path` takes one segment at a time (a dot inside a segment is refused).
        let mut segments = spec.name.split('.');
        let first = segments.next().unwrap_or_default();
        let vs = segments.fold(root / first, |path, segment| &path / segment);
        let config = nn::ConvConfig {
            stride: spec.stride,
            padding: spec.padding,
            bias: false,
            ..Default::default()
        };
        Self {
            conv: nn::conv2d(&vs / "conv", spec.in_channels, spec.out_channels, spec.kernel, config),
            bn: nn::batch_norm2d(&vs / "bn", spec.out_channels, Default::default()),
            spec: spec.clone(),
        }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        xs.apply(&self.conv).apply_t(&self.bn, train)
    }
}

/// A basic block of built layers.
pub type BasicBlock = Block<ConvBn>;

#[derive(Debug)]
pub struct ResNet18 {
    pub config: ResNetConfig,
    pub body: Body<ConvBn>,
    pub fc: nn::Linear,
    feature_channels: i64,
}

impl ResNet18 {
    pub fn new(vs: &nn::Path<'_>, config: ResNetConfig) -> Result<Self, ModelError> {
        let arch = Arch::new(config)?;
        let body = arch.body.map(|spec| ConvBn::new(vs, spec));
        let fc = nn::linear(
            vs / arch::HEAD,
            arch.feature_channels,
            config.num_classes,
            Default::default(),
        );
        Ok(Self {
            config,
            body,
            fc,
            feature_channels: arch.feature_channels,
        })
    }

    /// Channels entering the classifier.
    pub fn feature_channels(&self) -> i64 {
        self.feature_channels
    }

    /// The forward pass with the input checked first, so a bad call is an error and not a
    /// libtorch abort: `xs` is `[N, 3, H, W]` float, and training mode needs `N >= 2`.
    pub fn forward_checked(&self, xs: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        let size = xs.size();
        if size.len() != 4 || size[1] != arch::INPUT_CHANNELS || size[0] < 1 {
            return Err(ModelError::InputShape(size));
        }
        if train && size[0] < 2 {
            return Err(ModelError::TrainingBatchOfOne(size[0]));
        }
        Ok(self.forward_unchecked(xs, train))
    }

    fn forward_unchecked(&self, xs: &Tensor, train: bool) -> Tensor {
        match self.body.walk(&mut Forward { fc: &self.fc, train }, xs) {
            Ok(logits) => logits,
            Err(never) => match never {},
        }
    }
}

/// The forward pass as a walk over the body.
struct Forward<'a> {
    fc: &'a nn::Linear,
    train: bool,
}

impl Ops<ConvBn> for Forward<'_> {
    type Value = Tensor;
    type Error = Infallible;

    fn conv_bn(&mut self, layer: &ConvBn, x: &Tensor) -> Result<Tensor, Infallible> {
        Ok(layer.forward_t(x, self.train))
    }

    fn relu(&mut self, x: Tensor, _scope: &str, _which: &str) -> Result<Tensor, Infallible> {
        Ok(x.relu())
    }

    fn add(&mut self, _block: &BasicBlock, branch: Tensor, skip: Tensor) -> Result<Tensor, Infallible> {
        Ok(branch + skip)
    }

    fn head(&mut self, x: Tensor) -> Result<Tensor, Infallible> {
        Ok(x.mean_dim(&[2i64, 3][..], false, Kind::Float).apply(self.fc))
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
