//! `metrics.jsonl`: one line per finished epoch, appended and synced as the run goes, so a
//! resumed run continues the same history. A resume rewrites it whole, atomically
//! ([`crate::atomic_file`]).
//!
//! JSON has no NaN or infinity (serde_json writes them as `null`), and one bad evaluation under
//! float16 autocast gives a NaN loss. Such values are written as the strings `"NaN"`, `"inf"` and
//! `"-inf"` and read back as what they were; a `null`, as earlier versions wrote any of them, is
//! read as NaN. Every other value is a JSON number.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::atomic_file::{self, ReplaceError};

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based.
    pub epoch: u32,
    #[serde(with = "float")]
    pub train_loss: f64,
    #[serde(with = "float")]
    pub train_accuracy: f64,
    #[serde(with = "float")]
    pub test_loss: f64,
    #[serde(with = "float")]
    pub test_accuracy: f64,
    /// Learning rate at the epoch's last step.
    #[serde(with = "float")]
    pub lr: f64,
    #[serde(with = "float")]
    pub images_per_second: f64,
    #[serde(with = "float")]
    pub epoch_seconds: f64,
    /// Training time since the run started, summed over resumes.
    #[serde(with = "float")]
    pub elapsed_seconds: f64,
}

impl EpochMetrics {
    /// The fields that are NaN or infinite, by their name in the file.
    pub fn non_finite(&self) -> Vec<(&'static str, f64)> {
        [
            ("train_loss", self.train_loss),
            ("train_accuracy", self.train_accuracy),
            ("test_loss", self.test_loss),
            ("test_accuracy", self.test_accuracy),
            ("lr", self.lr),
            ("images_per_second", self.images_per_second),
            ("epoch_seconds", self.epoch_seconds),
            ("elapsed_seconds", self.elapsed_seconds),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_finite())
        .collect()
    }
}

/// An `f64` as a JSON number, or as `"NaN"`, `"inf"`, `"-inf"` when it is not finite.
mod float {
    use serde::de::{self, Deserializer, Visitor};
    use serde::ser::Serializer;

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        match *v {
            v if v.is_nan() => s.serialize_str("NaN"),
            f64::INFINITY => s.serialize_str("inf"),
            f64::NEG_INFINITY => s.serialize_str("-inf"),
            v => s.serialize_f64(v),
        }
    }

    struct Float;

    impl Visitor<'_> for Float {
        type Value = f64;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(r#"a number, "NaN", "inf" or "-inf""#)
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
            Ok(v)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
            Ok(v as f64)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
            Ok(v as f64)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
            match v {
                "NaN" => Ok(f64::NAN),
                "inf" => Ok(f64::INFINITY),
                "-inf" => Ok(f64::NEG_INFINITY),
                other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
            }
        }

        /// `null`: how serde_json (and so earlier versions) wrote any non-finite value.
        fn visit_unit<E: de::Error>(self) -> Result<f64, E> {
            Ok(f64::NAN)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        d.deserialize_any(Float)
    }
}

/// A metrics file that cannot be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct MetricsError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> MetricsError + '_ {
    move |source| MetricsError {
        path: path.to_owned(),
        source,
    }
}

/// Reads `metrics.jsonl`, keeping the lines of epochs up to `up_to`.
///
/// A last line without its newline that does not parse is a line a kill cut short: it is
/// dropped with a warning. A run appends an epoch's line before its checkpoint, so that line
/// is always past the checkpoint, where a resume drops lines anyway. Any other line that does
/// not parse is an error.
pub fn read_metrics(path: &Path, up_to: u32) -> Result<Vec<EpochMetrics>, MetricsError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(path)(e)),
    };
    let mut out = Vec::new();
    let mut reader = BufReader::new(file);
    let mut line = String::new();
    for i in 1.. {
        line.clear();
        if reader.read_line(&mut line).map_err(io_err(path))? == 0 {
            break;
        }
        if line.trim().is_empty() {
            continue;
        }
        let m: EpochMetrics = match serde_json::from_str(&line) {
            Ok(m) => m,
            Err(_) if !line.ends_with('\n') => {
                tracing::warn!("{}: dropped line {i}, cut short by a kill: {line:?}", path.display());
                break;
            }
            Err(e) => return Err(io_err(path)(std::io::Error::other(format!("line {i}: {e}")))),
        };
        if m.epoch <= up_to {
            out.push(m);
        }
    }
    Ok(out)
}

fn line(path: &Path, m: &EpochMetrics) -> Result<String, MetricsError> {
    serde_json::to_string(m).map_err(|e| io_err(path)(std::io::Error::other(e)))
}

/// Replaces the file with `history`, atomically.
pub fn write_metrics(path: &Path, history: &[EpochMetrics]) -> Result<(), MetricsError> {
    let mut text = String::new();
    for m in history {
        text.push_str(&line(path, m)?);
        text.push('\n');
    }
    atomic_file::replace(path, |f| f.write_all(text.as_bytes())).map_err(|e| match e {
        ReplaceError::Io(e) | ReplaceError::Write(e) => io_err(path)(e),
    })
}

pub fn append_metrics(path: &Path, m: &EpochMetrics) -> Result<(), MetricsError> {
    let line = line(path, m)?;
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_err(path))?;
    writeln!(f, "{line}").map_err(io_err(path))?;
    f.sync_data().map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn epoch(epoch: u32) -> EpochMetrics {
        EpochMetrics {
            epoch,
            train_loss: 1.25,
            train_accuracy: 0.5,
            test_loss: 1.5,
            test_accuracy: 0.375,
            lr: 0.1,
            images_per_second: 1000.0,
            epoch_seconds: 2.0,
            elapsed_seconds: 2.0 * f64::from(epoch),
        }
    }

    /// Bit for bit, NaN included (`PartialEq` says NaN != NaN).
    fn same(a: &[EpochMetrics], b: &[EpochMetrics]) -> bool {
        let bits = |m: &EpochMetrics| {
            (
                m.epoch,
                [
                    m.train_loss,
                    m.train_accuracy,
                    m.test_loss,
                    m.test_accuracy,
                    m.lr,
                    m.images_per_second,
                    m.epoch_seconds,
                    m.elapsed_seconds,
                ]
                .map(f64::to_bits),
            )
        };
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| bits(x) == bits(y))
    }

    #[test]
    fn non_finite_values_round_trip_and_are_named() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("metrics.jsonl");
        let mut bad = epoch(2);
        bad.test_loss = f64::NAN;
        bad.train_loss = f64::INFINITY;
        bad.images_per_second = f64::NEG_INFINITY;
        let history = vec![epoch(1), bad.clone(), epoch(3)];
        write_metrics(&path, &history)?;
        append_metrics(&path, &bad)?;
        let read = read_metrics(&path, u32::MAX)?;
        assert!(
            same(&read[..3], &history) && same(&read[3..], &[bad.clone()]),
            "{read:?}"
        );
        let text = fs::read_to_string(&path)?;
        let line: serde_json::Value = serde_json::from_str(text.lines().nth(1).ok_or("no line 2")?)?;
        assert_eq!(
            (&line["test_loss"], &line["train_loss"], &line["images_per_second"]),
            (&"NaN".into(), &"inf".into(), &"-inf".into())
        );
        assert_eq!(line["test_accuracy"], 0.375);
        assert_eq!(
            bad.non_finite().iter().map(|(name, _)| *name).collect::<Vec<_>>(),
            ["train_loss", "test_loss", "images_per_second"]
        );
        assert!(epoch(1).non_finite().is_empty());
        // No temporary file is left beside it.
        assert_eq!(fs::read_dir(dir.path())?.count(), 1);
        Ok(())
    }

    #[test]
    fn earlier_versions_null_reads_as_nan_and_other_strings_are_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("metrics.jsonl");
        let mut value = serde_json::to_value(epoch(1))?;
        value["test_loss"] = serde_json::Value::Null;
        fs::write(&path, format!("{value}\n"))?;
        let read = read_metrics(&path, u32::MAX)?;
        assert!(read[0].test_loss.is_nan() && read[0].train_loss == 1.25, "{read:?}");

        value["test_loss"] = "nan?".into();
        fs::write(&path, format!("{value}\n"))?;
        let msg = read_metrics(&path, u32::MAX).err().ok_or("read")?.to_string();
        assert!(
            msg.contains("metrics.jsonl") && msg.contains("line 1") && msg.contains("nan?"),
            "{msg}"
        );
        Ok(())
    }
}
