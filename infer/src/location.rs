//! Where something lives, as a flag or variable names it: `s3://bucket/key` or a local path.
//! The one parser for both the model (`--model`, `MODEL_URI`) and bulk inputs and outputs.

use std::fmt;
use std::path::{Path, PathBuf};

/// `s3://bucket/key-or-prefix` or a local path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// The key is empty for `s3://bucket` and `s3://bucket/`.
    S3 {
        bucket: String,
        key: String,
    },
    Path(PathBuf),
}

/// A text that is neither `s3://bucket[/key]` nor a path (empty, another scheme, no bucket).
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a path or s3://bucket/prefix")]
pub struct NotALocation(pub String);

impl Location {
    pub fn parse(text: &str) -> Result<Self, NotALocation> {
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(NotALocation(text.to_owned()));
            }
            return Ok(Self::S3 {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
            });
        }
        if text.is_empty() || text.contains("://") {
            return Err(NotALocation(text.to_owned()));
        }
        Ok(Self::Path(PathBuf::from(text)))
    }

    /// Whether `text` names a folder or S3 prefix (what `infer predict` classifies in bulk)
    /// rather than one image file.
    pub fn is_bulk(text: &str) -> bool {
        text.starts_with("s3://") || Path::new(text).is_dir()
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
            Self::Path(path) => write!(f, "{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse() {
        let s3 = |bucket: &str, key: &str| {
            Some(Location::S3 {
                bucket: bucket.into(),
                key: key.into(),
            })
        };
        assert_eq!(Location::parse("s3://b/images/").ok(), s3("b", "images/"));
        assert_eq!(Location::parse("s3://b").ok(), s3("b", ""));
        assert_eq!(
            Location::parse("out.jsonl").ok(),
            Some(Location::Path("out.jsonl".into()))
        );
        for bad in ["s3://", "s3:///k", "http://x/y", ""] {
            assert!(Location::parse(bad).is_err(), "{bad}");
        }
    }
}
