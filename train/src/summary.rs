//! The layer table of `train summary`: every layer with its output shape and parameter count,
//! computed by running a batch through the same structure the forward pass uses.

use std::fmt;

use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

use crate::model::{ConvBn, ModelError, ResNet18, ResNetConfig};

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

fn conv_bn_rows(rows: &mut Vec<LayerRow>, name: &str, cb: &ConvBn, xs: &Tensor) -> Tensor {
    let conv_out = xs.apply(&cb.conv);
    rows.push(LayerRow {
        name: format!("{name}.conv"),
        kind: format!(
            "Conv2d {k}x{k}/{s} {i}->{o}",
            k = cb.kernel,
            s = cb.stride,
            i = cb.in_channels,
            o = cb.out_channels
        ),
        output: conv_out.size(),
        params: numel(&cb.conv.ws) + cb.conv.bs.as_ref().map_or(0, numel),
    });
    let bn_out = cb.bn.forward_t(&conv_out, false);
    rows.push(LayerRow {
        name: format!("{name}.bn"),
        kind: format!("BatchNorm2d {}", cb.out_channels),
        output: bn_out.size(),
        params: cb.bn.ws.as_ref().map_or(0, numel) + cb.bn.bs.as_ref().map_or(0, numel),
    });
    bn_out
}

/// Runs a zero batch of `batch` 32x32 RGB images through a fresh model of `config`, layer by layer.
pub fn summarise(config: ResNetConfig, batch: i64) -> Result<Summary, ModelError> {
    let vs = VarStore::new(Device::Cpu);
    let model = ResNet18::new(&vs.root(), config)?;
    let input = vec![batch, 3, 32, 32];
    let xs = Tensor::zeros(input.as_slice(), (Kind::Float, Device::Cpu));
    let mut rows = Vec::new();
    tch::no_grad(|| {
        let mut out = conv_bn_rows(&mut rows, "stem", &model.stem, &xs).relu();
        for (s, stage) in model.stages.iter().enumerate() {
            for (b, block) in stage.iter().enumerate() {
                let name = format!("layer{}.{b}", s + 1);
                let h = conv_bn_rows(&mut rows, &format!("{name}.conv1"), &block.conv1, &out).relu();
                let h = conv_bn_rows(&mut rows, &format!("{name}.conv2"), &block.conv2, &h);
                let skip = match &block.shortcut {
                    Some(proj) => conv_bn_rows(&mut rows, &format!("{name}.shortcut"), proj, &out),
                    None => out.shallow_clone(),
                };
                out = (h + skip).relu();
                rows.push(LayerRow {
                    name: name.clone(),
                    kind: if block.shortcut.is_some() {
                        "Add (projection) + ReLU".to_owned()
                    } else {
                        "Add (identity) + ReLU".to_owned()
                    },
                    output: out.size(),
                    params: 0,
                });
            }
        }
        let pooled = out.mean_dim(&[2i64, 3][..], false, Kind::Float);
        rows.push(LayerRow {
            name: "pool".to_owned(),
            kind: "GlobalAvgPool".to_owned(),
            output: pooled.size(),
            params: 0,
        });
        let logits = pooled.apply(&model.fc);
        rows.push(LayerRow {
            name: "fc".to_owned(),
            kind: format!("Linear {}->{}", model.feature_channels(), config.num_classes),
            output: logits.size(),
            params: numel(&model.fc.ws) + model.fc.bs.as_ref().map_or(0, numel),
        });
    });
    let total_params = vs.trainable_variables().iter().map(numel).sum();
    Ok(Summary {
        config,
        input,
        rows,
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
