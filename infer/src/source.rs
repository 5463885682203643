//! Where a model comes from (a file, `s3://bucket/key`, or the copy embedded at build time), and
//! fetching its bytes with the sha256 check against the export's `<file>.sha256` sidecar.

use std::fmt;
use std::path::{Path, PathBuf};

use onnx::checksum::{self, ChecksumError};

use crate::location::Location;
use crate::s3::{self, S3Error};

/// A model's location, parsed from `--model` / `MODEL_URI`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    File(PathBuf),
    S3 {
        bucket: String,
        key: String,
    },
    /// `models/resnet18-cifar10.onnx`, embedded into the binary at build time.
    Bundled,
}

impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
            Self::Bundled => write!(f, "the bundled model ({BUNDLED_NAME})"),
        }
    }
}

/// The file name the bundled model had in `models/`.
pub const BUNDLED_NAME: &str = "resnet18-cifar10.onnx";

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("model URI {0:?} is not a path or s3://bucket/key")]
    BadUri(String),
    #[error("reading model {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    S3(#[from] S3Error),
    #[error(transparent)]
    Checksum(#[from] ChecksumError),
    #[error(
        "no model is bundled in this binary: models/{BUNDLED_NAME} did not exist when it was built; pass --model PATH or --model s3://bucket/key (or set MODEL_URI), or rebuild after training the model"
    )]
    NotBundled,
}

impl ModelSource {
    /// Parses `s3://bucket/key` or a file path.
    pub fn parse(uri: &str) -> Result<Self, SourceError> {
        match Location::parse(uri) {
            Ok(Location::S3 { bucket, key }) if !key.is_empty() => Ok(Self::S3 { bucket, key }),
            Ok(Location::Path(path)) => Ok(Self::File(path)),
            // A bucket alone, or a prefix (`s3://bucket/`), is no model.
            Ok(Location::S3 { .. }) | Err(_) => Err(SourceError::BadUri(uri.to_owned())),
        }
    }

    /// The model's short name: the file stem (`resnet18-cifar10` for `…/resnet18-cifar10.onnx`).
    pub fn name(&self) -> String {
        let file = match self {
            Self::File(path) => path.file_name().map(|n| n.to_string_lossy().into_owned()),
            Self::S3 { key, .. } => key.rsplit('/').next().map(str::to_owned),
            Self::Bundled => Some(BUNDLED_NAME.to_owned()),
        }
        .unwrap_or_default();
        let stem = file.strip_suffix(".onnx").unwrap_or(&file);
        if stem.is_empty() {
            "model".to_owned()
        } else {
            stem.to_owned()
        }
    }

    /// The model's bytes and their sha256 (computed once, here), checked against the sidecar
    /// when there is one.
    pub async fn fetch(&self) -> Result<(Vec<u8>, String), SourceError> {
        match self {
            Self::File(path) => {
                let bytes = read(path)?;
                let digest = check_sidecar(path, checksum::sha256_hex(&bytes))?;
                Ok((bytes, digest))
            }
            Self::S3 { bucket, key } => {
                let fetched = s3::fetch(bucket, key).await?;
                let digest = checksum::sha256_hex(&fetched.model);
                let digest = match &fetched.sidecar {
                    Some((uri, text)) => checksum::check(
                        digest,
                        &String::from_utf8_lossy(text),
                        &format!("s3://{bucket}/{key}"),
                        uri,
                    )?,
                    None => {
                        tracing::warn!(model = %self, "no sha256 sidecar; integrity not verified");
                        digest
                    }
                };
                Ok((fetched.model, digest))
            }
            Self::Bundled => bundled().map(|(bytes, digest)| (bytes.to_vec(), digest)),
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, SourceError> {
    std::fs::read(path).map_err(|source| SourceError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The sha256 of the model file at `path`, checked against its sidecar when there is one,
/// streamed so that a start from the graph cache never holds the model in memory.
pub fn file_digest(path: &Path) -> Result<String, SourceError> {
    check_sidecar(path, checksum::sha256_file(path)?)
}

/// `actual`, the sha256 of the model file at `path`, checked against the file's sidecar when
/// there is one.
pub fn check_sidecar(path: &Path, actual: String) -> Result<String, SourceError> {
    if !checksum::check_file(path, &actual)? {
        tracing::warn!(model = %path.display(), "no sha256 sidecar; integrity not verified");
    }
    Ok(actual)
}

/// Whether this binary carries a bundled model.
pub const HAS_BUNDLED_MODEL: bool = cfg!(bundled_model);

#[cfg(bundled_model)]
static BUNDLED: &[u8] = include_bytes!(env!("INFER_BUNDLED_MODEL"));

/// The embedded model and its sha256, verified against its embedded sidecar.
pub fn bundled() -> Result<(&'static [u8], String), SourceError> {
    #[cfg(bundled_model)]
    {
        let digest = checksum::sha256_hex(BUNDLED);
        #[cfg(bundled_model_sha256)]
        let digest = checksum::check(
            digest,
            include_str!(env!("INFER_BUNDLED_MODEL_SHA256")),
            &format!("bundled {BUNDLED_NAME}"),
            &format!("bundled {BUNDLED_NAME}.sha256"),
        )?;
        Ok((BUNDLED, digest))
    }
    #[cfg(not(bundled_model))]
    Err(SourceError::NotBundled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths_and_s3_uris() {
        assert_eq!(
            ModelSource::parse("s3://b/dir/m.onnx").ok(),
            Some(ModelSource::S3 {
                bucket: "b".into(),
                key: "dir/m.onnx".into()
            })
        );
        assert_eq!(
            ModelSource::parse("models/x.onnx").ok(),
            Some(ModelSource::File("models/x.onnx".into()))
        );
        for bad in ["s3://", "s3://bucket", "s3:///key", "http://x/y", ""] {
            assert!(ModelSource::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            ModelSource::parse("s3://b/dir/resnet.onnx").map(|s| s.name()).ok(),
            Some("resnet".into())
        );
    }

    /// Every source hands back the digest with the bytes, so that start-up hashes a model
    /// once: with a sidecar, without one, and for the bundled model.
    #[tokio::test]
    async fn every_fetch_returns_the_digest_it_computed() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let bytes = b"\x08\x07not really a model".to_vec();
        let bare = dir.path().join("bare.onnx");
        std::fs::write(&bare, &bytes)?;
        let checked = crate::testing::write_with_sidecar(dir.path(), "checked.onnx", &bytes)?;
        for path in [bare, checked] {
            let (got, digest) = ModelSource::File(path.clone()).fetch().await?;
            assert_eq!((got, digest), (bytes.clone(), checksum::sha256_hex(&bytes)), "{path:?}");
        }
        if HAS_BUNDLED_MODEL {
            let (got, digest) = ModelSource::Bundled.fetch().await?;
            assert_eq!(digest, checksum::sha256_hex(&got));
        }
        Ok(())
    }
}
