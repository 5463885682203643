//! The layer table of `train summary`: every layer with its output shape and parameter count,
//! computed by running a batch through the same structure the forward pass uses.

use std::convert::Infallible;
use std::fmt;

use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

use crate::arch::{self, Ops};
use crate::model::{BasicBlock, ConvBn, ModelError, ResNet18, ResNetConfig};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRow {
    /// Variable-name prefix of the layer, e.g. `layer2.0.conv1.conv`.
    pub name: String,
    /// What the layer is, e.g. `Conv2d 3x3/2 64->128`.
    pub kind: String,
    pub output: Vec<i64>,
    /// Trainable parameters of this layer alone.
    pub params: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub config: ResNetConfig,
    pub input: Vec<i64>,
    pub rows: Vec<LayerRow>,
    /// Trainable parameters of the whole model.
    pub total_params: i64,
}

fn numel(t: &Tensor) -> i64 {
    t.numel() as i64
}

/// A walk that runs the tensors and writes a row for every layer it passes.
struct Rows<'a> {
    model: &'a ResNet18,
    rows: Vec<LayerRow>,
}

impl Ops<ConvBn> for Rows<'_> {
    type Value = Tensor;
    type Error = Infallible;

    fn conv_bn(&mut self, cb: &ConvBn, xs: &Tensor) -> Result<Tensor, Infallible> {
        let spec = &cb.spec;
        let conv_out = xs.apply(&cb.conv);
        self.rows.push(LayerRow {
            name: format!("{}.conv", spec.name),
            kind: format!(
                "Conv2d {k}x{k}/{s} {i}->{o}",
                k = spec.kernel,
                s = spec.stride,
                i = spec.in_channels,
                o = spec.out_channels
            ),
            output: conv_out.size(),
            params: numel(&cb.conv.ws) + cb.conv.bs.as_ref().map_or(0, numel),
        });
        let bn_out = cb.bn.forward_t(&conv_out, false);
        self.rows.push(LayerRow {
            name: format!("{}.bn", spec.name),
            kind: format!("BatchNorm2d {}", spec.out_channels),
            output: bn_out.size(),
            params: cb.bn.ws.as_ref().map_or(0, numel) + cb.bn.bs.as_ref().map_or(0, numel),
        });
        Ok(bn_out)
    }

    fn relu(&mut self, x: Tensor, _scope: &str, _which: &str) -> Result<Tensor, Infallible> {
        Ok(x.relu())
    }

    /// One row for the sum and the ReLU after it, which keeps its shape.
    fn add(&mut self, block: &BasicBlock, branch: Tensor, skip: Tensor) -> Result<Tensor, Infallible> {
        let out = branch + skip;
        self.rows.push(LayerRow {
            name: block.name.clone(),
            kind: if block.shortcut.is_some() {
                "Add (projection) + ReLU".to_owned()
            } else {
                "Add (identity) + ReLU".to_owned()
            },
            output: out.size(),
            params: 0,
        });
        Ok(out)
    }

    fn head(&mut self, x: Tensor) -> Result<Tensor, Infallible> {
        let pooled = x.mean_dim(&[2i64, 3][..], false, Kind::Float);
        self.rows.push(LayerRow {
            name: arch::POOL.to_owned(),
            kind: "GlobalAvgPool".to_owned(),
            output: pooled.size(),
            params: 0,
        });
        let fc = &self.model.fc;
        let logits = pooled.apply(fc);
        self.rows.push(LayerRow {
            name: arch::HEAD.to_owned(),
            kind: format!(
                "Linear {}->{}",
                self.model.feature_channels(),
                self.model.config.num_classes
            ),
            output: logits.size(),
            params: numel(&fc.ws) + fc.bs.as_ref().map_or(0, numel),
        });
        Ok(logits)
    }
}

/// Runs a zero batch of `batch` 32x32 RGB images through a fresh model of `config`, layer by layer.
pub fn summarise(config: ResNetConfig, batch: i64) -> Result<Summary, ModelError> {
    let vs = VarStore::new(Device::Cpu);
    let model = ResNet18::new(&vs.root(), config)?;
    let input = vec![batch, arch::INPUT_CHANNELS, 32, 32];
    let xs = Tensor::zeros(input.as_slice(), (Kind::Float, Device::Cpu));
    let mut walk = Rows {
        model: &model,
        rows: Vec::new(),
    };
    if let Err(never) = tch::no_grad(|| model.body.walk(&mut walk, &xs)) {
        match never {}
    }
    let total_params = vs.trainable_variables().iter().map(numel).sum();
    Ok(Summary {
        config,
        input,
        rows: walk.rows,
        total_params,
    })
}

/// Thousands separators, the way the issue and the paper quote parameter counts.
pub fn group_digits(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

fn shape(s: &[i64]) -> String {
    let parts: Vec<String> = s.iter().map(i64::to_string).collect();
    format!("({})", parts.join(", "))
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "ResNet-18 (CIFAR), width {}, {} classes",
            self.config.width, self.config.num_classes
        )?;
        let name_w = self.rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max(5);
        let kind_w = self.rows.iter().map(|r| r.kind.len()).max().unwrap_or(0).max(4);
        let out_w = self
            .rows
            .iter()
            .map(|r| shape(&r.output).len())
            .max()
            .unwrap_or(0)
            .max(6);
        writeln!(
            f,
            "{:name_w$}  {:kind_w$}  {:out_w$}  {:>12}",
            "layer", "type", "output", "params"
        )?;
        let rule = "-".repeat(name_w + kind_w + out_w + 18);
        writeln!(f, "{rule}")?;
        let input_row = format!("{:name_w$}  {:kind_w$}  {}", "input", "", shape(&self.input));
        writeln!(f, "{}", input_row.trim_end())?;
        for r in &self.rows {
            writeln!(
                f,
                "{:name_w$}  {:kind_w$}  {:out_w$}  {:>12}",
                r.name,
                r.kind,
                shape(&r.output),
                group_digits(r.params)
            )?;
        }
        writeln!(f, "{rule}")?;
        let last = self.rows.last().map(|r| shape(&r.output)).unwrap_or_default();
        writeln!(f, "{} -> {last}", shape(&self.input))?;
        write!(f, "total trainable parameters: {}", group_digits(self.total_params))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_summary_matches_the_snapshot_and_its_rows_add_up() -> Result<(), ModelError> {
        let summary = summarise(ResNetConfig::default(), 2)?;
        assert_eq!(summary.total_params, 11_173_962);
        assert_eq!(summary.rows.iter().map(|r| r.params).sum::<i64>(), summary.total_params);
        assert_eq!(summary.rows.last().map(|r| r.output.clone()), Some(vec![2, 10]));
        insta::assert_snapshot!(summary.to_string());
        Ok(())
    }

    #[test]
    fn digits_are_grouped() {
        assert_eq!(group_digits(11_173_962), "11,173,962");
        assert_eq!(group_digits(999), "999");
        assert_eq!(group_digits(1000), "1,000");
        assert_eq!(group_digits(-1234), "-1,234");
    }
}
