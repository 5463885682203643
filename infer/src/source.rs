//! Where a model comes from (a file, `s3://bucket/key`, or the copy embedded at build time), and
//! fetching its bytes with the sha256 check against the export's `<file>.sha256` sidecar.

use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

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
    #[error("fetching model {uri}: {reason}")]
    S3 { uri: String, reason: String },
    #[error("checksum file {checksum} is not in sha256sum format (`<64 hex digits>  <name>`)")]
    BadChecksumFile { checksum: String },
    #[error("model {model} is corrupted: its sha256 is {actual}, but {checksum} says {expected}")]
    ChecksumMismatch {
        model: String,
        checksum: String,
        expected: String,
        actual: String,
    },
    #[error(
        "no model is bundled in this binary: models/{BUNDLED_NAME} did not exist when it was built; pass --model PATH or --model s3://bucket/key (or set MODEL_URI), or rebuild after training the model"
    )]
    NotBundled,
}

impl ModelSource {
    /// Parses `s3://bucket/key` or a file path.
    pub fn parse(uri: &str) -> Result<Self, SourceError> {
        if let Some(rest) = uri.strip_prefix("s3://") {
            return match rest.split_once('/') {
                Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() => Ok(Self::S3 {
                    bucket: bucket.to_owned(),
                    key: key.to_owned(),
                }),
                _ => Err(SourceError::BadUri(uri.to_owned())),
            };
        }
        if uri.is_empty() || uri.contains("://") {
            return Err(SourceError::BadUri(uri.to_owned()));
        }
        Ok(Self::File(PathBuf::from(uri)))
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

    /// The model's bytes, checked against the sha256 sidecar when there is one.
    pub async fn fetch(&self) -> Result<(Vec<u8>, Option<String>), SourceError> {
        match self {
            Self::File(path) => {
                let bytes = read(path)?;
                let sidecar = sidecar_path(path);
                // The digest comes back so that a 45 MB model is hashed once.
                let digest = match std::fs::read_to_string(&sidecar) {
                    Ok(text) => Some(verify(
                        &bytes,
                        &text,
                        &path.display().to_string(),
                        &sidecar.display().to_string(),
                    )?),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        tracing::warn!(model = %path.display(), "no sha256 sidecar; integrity not verified");
                        None
                    }
                    Err(source) => return Err(SourceError::Read { path: sidecar, source }),
                };
                Ok((bytes, digest))
            }
            Self::S3 { bucket, key } => crate::s3::fetch(bucket, key).await,
            Self::Bundled => bundled().map(|b| (b.to_vec(), None)),
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, SourceError> {
    std::fs::read(path).map_err(|source| SourceError::Read {
        path: path.to_owned(),
        source,
    })
}

/// `<file>.sha256` beside `<file>`.
pub fn sidecar_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".sha256");
    PathBuf::from(name)
}

/// Hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Checks `bytes` against `sha256sum`-format text (`<hex>  <name>`; only the digest is compared)
/// and returns the digest.
pub fn verify(bytes: &[u8], checksum_text: &str, model: &str, checksum: &str) -> Result<String, SourceError> {
    check_digest(sha256_hex(bytes), checksum_text, model, checksum)
}

fn check_digest(actual: String, checksum_text: &str, model: &str, checksum: &str) -> Result<String, SourceError> {
    let expected = checksum_text
        .split_whitespace()
        .next()
        .filter(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()))
        .ok_or_else(|| SourceError::BadChecksumFile {
            checksum: checksum.to_owned(),
        })?
        .to_ascii_lowercase();
    if actual == expected {
        Ok(actual)
    } else {
        Err(SourceError::ChecksumMismatch {
            model: model.to_owned(),
            checksum: checksum.to_owned(),
            expected,
            actual,
        })
    }
}

/// The sha256 of the model file at `path`, checked against its sidecar when there is one,
/// streamed so that a start from the graph cache never holds the model in memory.
pub fn file_digest(path: &Path) -> Result<String, SourceError> {
    use std::io::Read;
    let read_err = |source| SourceError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 1 << 20];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(read_err(e)),
        }
    }
    check_sidecar(path, hex::encode(hasher.finalize()))
}

/// `actual`, the sha256 of the model file at `path`, checked against the file's sidecar when
/// there is one.
pub fn check_sidecar(path: &Path, actual: String) -> Result<String, SourceError> {
    let sidecar = sidecar_path(path);
    match std::fs::read_to_string(&sidecar) {
        Ok(text) => check_digest(
            actual,
            &text,
            &path.display().to_string(),
            &sidecar.display().to_string(),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(model = %path.display(), "no sha256 sidecar; integrity not verified");
            Ok(actual)
        }
        Err(source) => Err(SourceError::Read { path: sidecar, source }),
    }
}

/// Whether this binary carries a bundled model.
pub const HAS_BUNDLED_MODEL: bool = cfg!(bundled_model);

#[cfg(bundled_model)]
static BUNDLED: &[u8] = include_bytes!(env!("INFER_BUNDLED_MODEL"));

/// The embedded model, verified against its embedded sidecar.
pub fn bundled() -> Result<&'static [u8], SourceError> {
    #[cfg(bundled_model)]
    {
        #[cfg(bundled_model_sha256)]
        let _digest = verify(
            BUNDLED,
            include_str!(env!("INFER_BUNDLED_MODEL_SHA256")),
            &format!("bundled {BUNDLED_NAME}"),
            &format!("bundled {BUNDLED_NAME}.sha256"),
        )?;
        Ok(BUNDLED)
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

    #[test]
    fn checksum_must_match_and_be_well_formed() {
        let digest = sha256_hex(b"abc");
        assert!(verify(b"abc", &format!("{digest}  m.onnx\n"), "m", "m.sha256").is_ok());
        assert!(verify(b"abc", &format!("{}  m.onnx\n", digest.to_uppercase()), "m", "m.sha256").is_ok());
        let err = verify(b"abd", &format!("{digest}  m.onnx"), "m.onnx", "m.onnx.sha256").err();
        let text = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("m.onnx is corrupted") && text.contains(&digest), "{text}");
        assert!(matches!(
            verify(b"abc", "not-hex  m.onnx", "m", "m.sha256"),
            Err(SourceError::BadChecksumFile { .. })
        ));
    }
}
