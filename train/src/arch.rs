//! The structure of ResNet-18 in its CIFAR form, written once: the model builds its layers from
//! it, and the forward pass, the summary and the ONNX exporter walk it through [`Ops`].
//!
//! 3x3 stride-1 stem (no max-pool, the images are 32x32), stages of [`BLOCKS_PER_STAGE`] basic
//! blocks with `width x` [`STAGE_MULTIPLIERS`] channels, stride 2 at the first block of every
//! stage after the first, a projection shortcut (1x1 conv + BatchNorm) wherever the shape
//! changes, global average pool, linear head.
//!
//! Every layer's name is its variable path in the `VarStore` (and so in checkpoints), its row in
//! the summary and its node name in the ONNX graph: `stem`, `layer{1-4}.{0,1}.{conv1,conv2,shortcut}`
//! and [`HEAD`].

use crate::model::{ModelError, ResNetConfig};

/// Channels of each stage as multiples of the configured width.
pub const STAGE_MULTIPLIERS: [i64; 4] = [1, 2, 4, 8];
/// Basic blocks in every stage.
pub const BLOCKS_PER_STAGE: usize = 2;
/// RGB.
pub const INPUT_CHANNELS: i64 = 3;
/// Name of the global average pool.
pub const POOL: &str = "pool";
/// Name of the linear classifier.
pub const HEAD: &str = "fc";

/// A convolution without bias followed by BatchNorm, as described (no weights).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvSpec {
    /// Dotted variable-name prefix, e.g. `layer2.0.shortcut`.
    pub name: String,
    pub in_channels: i64,
    pub out_channels: i64,
    pub kernel: i64,
    pub stride: i64,
    /// "Same" padding for the odd kernels used here.
    pub padding: i64,
}

impl ConvSpec {
    fn new(name: String, in_channels: i64, out_channels: i64, kernel: i64, stride: i64) -> Self {
        Self {
            name,
            in_channels,
            out_channels,
            kernel,
            stride,
            padding: kernel / 2,
        }
    }
}

/// Two 3x3 conv-BN layers with a residual connection: `relu(bn2(conv2(relu(bn1(conv1 x)))) + s(x))`,
/// with `L` at each conv-BN position: a [`ConvSpec`] in the description, built layers in the model.
#[derive(Debug)]
pub struct Block<L> {
    /// e.g. `layer2.0`.
    pub name: String,
    pub conv1: L,
    pub conv2: L,
    /// Projection when stride or channels change; identity otherwise.
    pub shortcut: Option<L>,
}

impl Block<ConvSpec> {
    fn new(name: String, in_channels: i64, out_channels: i64, stride: i64) -> Self {
        let shortcut = (stride != 1 || in_channels != out_channels)
            .then(|| ConvSpec::new(format!("{name}.shortcut"), in_channels, out_channels, 1, stride));
        Self {
            conv1: ConvSpec::new(format!("{name}.conv1"), in_channels, out_channels, 3, stride),
            conv2: ConvSpec::new(format!("{name}.conv2"), out_channels, out_channels, 3, 1),
            shortcut,
            name,
        }
    }
}

/// Everything before the head: the stem and the blocks of all stages in order.
#[derive(Debug)]
pub struct Body<L> {
    pub stem: L,
    pub blocks: Vec<Block<L>>,
}

/// The network of `config`, described.
#[derive(Debug)]
pub struct Arch {
    pub config: ResNetConfig,
    pub body: Body<ConvSpec>,
    /// Channels entering the head.
    pub feature_channels: i64,
}

impl Arch {
    pub fn new(config: ResNetConfig) -> Result<Self, ModelError> {
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
        let stem = ConvSpec::new("stem".to_owned(), INPUT_CHANNELS, w, 3, 1);
        let mut blocks = Vec::with_capacity(STAGE_MULTIPLIERS.len() * BLOCKS_PER_STAGE);
        let mut in_channels = w;
        for (s, mult) in STAGE_MULTIPLIERS.into_iter().enumerate() {
            let out_channels = w * mult;
            for b in 0..BLOCKS_PER_STAGE {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                blocks.push(Block::new(
                    format!("layer{}.{b}", s + 1),
                    in_channels,
                    out_channels,
                    stride,
                ));
                in_channels = out_channels;
            }
        }
        Ok(Self {
            config,
            body: Body { stem, blocks },
            feature_channels: in_channels,
        })
    }
}

impl<L> Body<L> {
    /// The same structure with `f` applied to every layer, visited stem first and then, block by
    /// block, shortcut, conv1, conv2: the order in which the model has always created (and so
    /// randomly initialised) its weights, which seeded runs depend on.
    pub fn map<M>(&self, mut f: impl FnMut(&L) -> M) -> Body<M> {
        let stem = f(&self.stem);
        let blocks = self
            .blocks
            .iter()
            .map(|block| {
                let shortcut = block.shortcut.as_ref().map(&mut f);
                Block {
                    name: block.name.clone(),
                    conv1: f(&block.conv1),
                    conv2: f(&block.conv2),
                    shortcut,
                }
            })
            .collect();
        Body { stem, blocks }
    }

    /// Runs `input` through the network (the body, then `ops`' head) in the operations of `ops`.
    pub fn walk<O: Ops<L>>(&self, ops: &mut O, input: &O::Value) -> Result<O::Value, O::Error> {
        let x = ops.conv_bn(&self.stem, input)?;
        let mut x = ops.relu(x, "stem", "relu")?;
        for block in &self.blocks {
            let h = ops.conv_bn(&block.conv1, &x)?;
            let h = ops.relu(h, &block.name, "relu1")?;
            let h = ops.conv_bn(&block.conv2, &h)?;
            let skip = match &block.shortcut {
                Some(projection) => ops.conv_bn(projection, &x)?,
                None => x,
            };
            let sum = ops.add(block, h, skip)?;
            x = ops.relu(sum, &block.name, "relu2")?;
        }
        ops.head(x)
    }
}

/// What a walk computes with: tensors (the forward pass), tensors and layer rows (the summary),
/// graph values and nodes (the exporter).
pub trait Ops<L> {
    type Value;
    type Error;

    /// A convolution and its BatchNorm.
    fn conv_bn(&mut self, layer: &L, x: &Self::Value) -> Result<Self::Value, Self::Error>;
    /// ReLU, named `{scope}.{which}` (e.g. `layer1.0.relu1`).
    fn relu(&mut self, x: Self::Value, scope: &str, which: &str) -> Result<Self::Value, Self::Error>;
    /// `block`'s residual branch plus its shortcut (identity or projection).
    fn add(&mut self, block: &Block<L>, branch: Self::Value, skip: Self::Value) -> Result<Self::Value, Self::Error>;
    /// Global average pool ([`POOL`]) and the linear classifier ([`HEAD`]).
    fn head(&mut self, x: Self::Value) -> Result<Self::Value, Self::Error>;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shapes only: `[C, H, W]` through the description, and the parameters it implies.
    struct Shapes {
        params: i64,
        classes: i64,
    }

    impl Ops<ConvSpec> for Shapes {
        type Value = [i64; 3];
        type Error = String;

        fn conv_bn(&mut self, l: &ConvSpec, x: &[i64; 3]) -> Result<[i64; 3], String> {
            if x[0] != l.in_channels {
                return Err(format!("{} gets {} channels, wants {}", l.name, x[0], l.in_channels));
            }
            self.params += l.out_channels * l.in_channels * l.kernel * l.kernel + 2 * l.out_channels;
            let out = |n: i64| (n + 2 * l.padding - l.kernel) / l.stride + 1;
            Ok([l.out_channels, out(x[1]), out(x[2])])
        }

        fn relu(&mut self, x: [i64; 3], _: &str, _: &str) -> Result<[i64; 3], String> {
            Ok(x)
        }

        fn add(&mut self, b: &Block<ConvSpec>, h: [i64; 3], s: [i64; 3]) -> Result<[i64; 3], String> {
            if h == s {
                Ok(h)
            } else {
                Err(format!("{}: {h:?} + {s:?}", b.name))
            }
        }

        fn head(&mut self, x: [i64; 3]) -> Result<[i64; 3], String> {
            self.params += x[0] * self.classes + self.classes;
            Ok([self.classes, 1, 1])
        }
    }

    #[test]
    fn the_description_is_resnet18_and_its_shapes_line_up() -> Result<(), Box<dyn std::error::Error>> {
        let arch = Arch::new(ResNetConfig::default())?;
        assert_eq!(arch.body.blocks.len(), 8);
        assert_eq!(arch.feature_channels, 512);
        let projections: Vec<&str> = arch
            .body
            .blocks
            .iter()
            .filter(|b| b.shortcut.is_some())
            .map(|b| b.name.as_str())
            .collect();
        assert_eq!(projections, ["layer2.0", "layer3.0", "layer4.0"]);
        let mut shapes = Shapes { params: 0, classes: 10 };
        assert_eq!(arch.body.walk(&mut shapes, &[3, 32, 32])?, [10, 1, 1]);
        assert_eq!(shapes.params, 11_173_962);
        Ok(())
    }

    #[test]
    fn map_visits_layers_in_weight_creation_order() -> Result<(), ModelError> {
        let arch = Arch::new(ResNetConfig {
            width: 4,
            num_classes: 10,
        })?;
        let mut order = Vec::new();
        arch.body.map(|l| order.push(l.name.clone()));
        assert_eq!(
            order[..5],
            [
                "stem",
                "layer1.0.conv1",
                "layer1.0.conv2",
                "layer1.1.conv1",
                "layer1.1.conv2"
            ]
        );
        assert_eq!(order[5..8], ["layer2.0.shortcut", "layer2.0.conv1", "layer2.0.conv2"]);
        assert_eq!(order.len(), 1 + 8 * 2 + 3);
        Ok(())
    }

    #[test]
    fn a_bad_config_is_refused() {
        for (width, num_classes) in [(0, 10), (4, 1)] {
            let err = Arch::new(ResNetConfig { width, num_classes }).err();
            assert!(
                matches!(err, Some(ModelError::Config(_))),
                "{width} {num_classes}: {err:?}"
            );
        }
    }
}
