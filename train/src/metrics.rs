//! `metrics.jsonl`: one line per finished epoch, appended and synced as the run goes, so a
//! resumed run continues the same history.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based.
    pub epoch: u32,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub test_loss: f64,
    pub test_accuracy: f64,
    /// Learning rate at the epoch's last step.
    pub lr: f64,
    pub images_per_second: f64,
    pub epoch_seconds: f64,
    /// Training time since the run started, summed over resumes.
    pub elapsed_seconds: f64,
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
pub fn read_metrics(path: &Path, up_to: u32) -> Result<Vec<EpochMetrics>, MetricsError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(path)(e)),
    };
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io_err(path))?;
        if line.trim().is_empty() {
            continue;
        }
        let m: EpochMetrics = serde_json::from_str(&line)
            .map_err(|e| io_err(path)(std::io::Error::other(format!("line {}: {e}", i + 1))))?;
        if m.epoch <= up_to {
            out.push(m);
        }
    }
    Ok(out)
}

pub fn write_metrics(path: &Path, history: &[EpochMetrics]) -> Result<(), MetricsError> {
    let mut text = String::new();
    for m in history {
        text.push_str(&serde_json::to_string(m).map_err(|e| io_err(path)(std::io::Error::other(e)))?);
        text.push('\n');
    }
    fs::write(path, text).map_err(io_err(path))
}

pub fn append_metrics(path: &Path, m: &EpochMetrics) -> Result<(), MetricsError> {
    let line = serde_json::to_string(m).map_err(|e| io_err(path)(std::io::Error::other(e)))?;
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_err(path))?;
    writeln!(f, "{line}").map_err(io_err(path))?;
    f.sync_data().map_err(io_err(path))
}
