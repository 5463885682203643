//! Evaluation: loss, accuracy, per-class accuracy and the confusion matrix on a split, with
//! optional flip test-time augmentation.

use std::fmt;

use serde::Serialize;
use tch::{Device, Kind, Reduction, Tensor};

use crate::data::{Normalizer, Split, batch_indices};
use crate::model::{ModelError, ResNet18};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    /// Mean cross-entropy (no label smoothing).
    pub loss: f64,
    /// Top-1 accuracy in `[0, 1]`.
    pub accuracy: f64,
    pub images: i64,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<i64>>,
}

impl Evaluation {
    /// Accuracy of each true class (`None` where the split has no image of it).
    pub fn per_class(&self) -> Vec<Option<f64>> {
        self.confusion
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let total: i64 = row.iter().sum();
                (total > 0).then(|| row[i] as f64 / total as f64)
            })
            .collect()
    }

    /// A printable report with class names.
    pub fn report<'a>(&'a self, class_names: &'a [String]) -> EvalReport<'a> {
        EvalReport {
            eval: self,
            class_names,
        }
    }
}

#[derive(Debug)]
pub struct EvalReport<'a> {
    eval: &'a Evaluation,
    class_names: &'a [String],
}

impl fmt::Display for EvalReport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.eval;
        writeln!(
            f,
            "accuracy {:.2}% on {} images (loss {:.4})",
            e.accuracy * 100.0,
            e.images,
            e.loss
        )?;
        let name_w = self.class_names.iter().map(String::len).max().unwrap_or(0).max(5);
        writeln!(f, "{:name_w$}  {:>8}  {:>7}", "class", "accuracy", "images")?;
        for (i, acc) in e.per_class().iter().enumerate() {
            let name = self.class_names.get(i).map_or("?", String::as_str);
            let total: i64 = e.confusion[i].iter().sum();
            match acc {
                Some(a) => writeln!(f, "{name:name_w$}  {:>7.2}%  {total:>7}", a * 100.0)?,
                None => writeln!(f, "{name:name_w$}  {:>8}  {total:>7}", "-")?,
            }
        }
        writeln!(f, "confusion matrix (rows: true class, columns: predicted):")?;
        let cell = e
            .confusion
            .iter()
            .flatten()
            .map(|v| v.to_string().len())
            .max()
            .unwrap_or(1)
            .max(3);
        write!(f, "{:name_w$}", "")?;
        for j in 0..e.confusion.len() {
            write!(f, " {j:>cell$}")?;
        }
        for (i, row) in e.confusion.iter().enumerate() {
            writeln!(f)?;
            let name = self.class_names.get(i).map_or("?", String::as_str);
            write!(f, "{name:name_w$}")?;
            for v in row {
                write!(f, " {v:>cell$}")?;
            }
        }
        Ok(())
    }
}

/// Evaluates `model` (in eval mode) on `split`; with `flip_tta` the logits of each image and
/// of its mirror image are averaged.
pub fn evaluate(
    model: &ResNet18,
    split: &Split,
    normalizer: &Normalizer,
    batch_size: i64,
    device: Device,
    flip_tta: bool,
) -> Result<Evaluation, ModelError> {
    let classes = model.config.num_classes;
    let n = split.len();
    // The split goes to the device once and the sums stay there: one read at the end instead
    // of a wait per batch. On a GPU the forward passes run under float16 autocast, as in training.
    let (images, labels) = (split.images.to_device(device), split.labels.to_device(device));
    let mut confusion = Tensor::zeros([classes * classes], (Kind::Int64, device));
    let mut loss_sum = Tensor::zeros([], (Kind::Double, device));
    tch::no_grad(|| -> Result<(), ModelError> {
        for idx in batch_indices(n, batch_size.max(1), false, false, device) {
            let x = normalizer.apply(&images.index_select(0, &idx));
            let y = labels.index_select(0, &idx);
            let forward = || -> Result<Tensor, ModelError> {
                let mut logits = model.forward_checked(&x, false)?;
                if flip_tta {
                    logits = (logits + model.forward_checked(&x.flip([3]), false)?) * 0.5;
                }
                Ok(logits.to_kind(Kind::Float))
            };
            let logits = if device.is_cuda() {
                tch::autocast(true, forward)?
            } else {
                forward()?
            };
            let loss = logits.cross_entropy_loss::<Tensor>(&y, None, Reduction::Sum, -100, 0.0);
            loss_sum += loss.to_kind(Kind::Double);
            let pred = logits.argmax(-1, false);
            confusion += (y * classes + pred).bincount::<Tensor>(None, classes * classes);
        }
        Ok(())
    })?;
    let loss_sum = loss_sum.double_value(&[]);
    let confusion = confusion_rows(&confusion, classes)?;
    let correct: i64 = (0..classes as usize).map(|i| confusion[i][i]).sum();
    Ok(Evaluation {
        loss: loss_sum / n.max(1) as f64,
        accuracy: correct as f64 / n.max(1) as f64,
        images: n,
        confusion,
    })
}

/// `confusion[true][predicted]` from the flat counts that `evaluate` sums on the device.
fn confusion_rows(flat: &Tensor, classes: i64) -> Result<Vec<Vec<i64>>, ModelError> {
    let readback = |reason: String| ModelError::Readback {
        what: "the confusion matrix",
        reason,
    };
    let flat = Vec::<i64>::try_from(&flat.to_device(Device::Cpu)).map_err(|e| readback(e.to_string()))?;
    if classes < 1 || flat.len() as i64 != classes * classes {
        return Err(readback(format!("{} counts for {classes} classes", flat.len())));
    }
    Ok(flat.chunks(classes as usize).map(<[i64]>::to_vec).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ResNetConfig;
    use tch::nn::VarStore;

    #[test]
    fn confusion_matrix_agrees_with_a_direct_count_at_any_batch_size() -> Result<(), ModelError> {
        tch::set_num_threads(1);
        tch::manual_seed(0);
        let vs = VarStore::new(Device::Cpu);
        let model = ResNet18::new(
            &vs.root(),
            ResNetConfig {
                width: 4,
                num_classes: 3,
            },
        )?;
        let split = Split {
            images: Tensor::randint(256, [7, 3, 32, 32], (Kind::Uint8, Device::Cpu)),
            labels: Tensor::from_slice(&[0i64, 1, 2, 0, 1, 2, 0]),
        };
        let norm = Normalizer::new([0.5; 3], [0.25; 3], Device::Cpu);
        let whole = evaluate(&model, &split, &norm, 7, Device::Cpu, false)?;
        let ones = evaluate(&model, &split, &norm, 1, Device::Cpu, false)?;
        assert_eq!(whole.confusion, ones.confusion, "batch size 1 works and agrees");
        assert!((whole.loss - ones.loss).abs() < 1e-4);

        let logits = tch::no_grad(|| model.forward_checked(&norm.apply(&split.images), false))?;
        let pred = Vec::<i64>::try_from(logits.argmax(-1, false)).unwrap_or_default();
        let truth = [0usize, 1, 2, 0, 1, 2, 0];
        let mut expected = vec![vec![0i64; 3]; 3];
        for (t, p) in truth.iter().zip(&pred) {
            expected[*t][*p as usize] += 1;
        }
        assert_eq!(whole.confusion, expected);
        let correct = truth.iter().zip(&pred).filter(|(t, p)| **t as i64 == **p).count();
        assert!((whole.accuracy - correct as f64 / 7.0).abs() < 1e-12);
        assert_eq!(whole.per_class().len(), 3);

        let tta = evaluate(&model, &split, &norm, 4, Device::Cpu, true)?;
        assert_eq!(tta.images, 7);
        let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let text = whole.report(&names).to_string();
        assert!(text.contains("confusion matrix") && text.contains("\nc "), "{text}");
        Ok(())
    }

    #[test]
    fn a_confusion_matrix_that_does_not_read_back_is_an_error() {
        let square = Tensor::zeros([3, 3], (Kind::Int64, Device::Cpu));
        let short = Tensor::zeros([8], (Kind::Int64, Device::Cpu));
        for (counts, classes) in [(&square, 3), (&short, 3)] {
            let msg = confusion_rows(counts, classes).err().map(|e| e.to_string());
            assert!(
                msg.as_deref().is_some_and(|m| m.contains("confusion matrix")),
                "{:?}: {msg:?}",
                counts.size()
            );
        }
        let ok = confusion_rows(&Tensor::arange(4, (Kind::Int64, Device::Cpu)), 2).ok();
        assert_eq!(ok, Some(vec![vec![0, 1], vec![2, 3]]));
    }
}
