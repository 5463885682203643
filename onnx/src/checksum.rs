//! The `model.onnx.sha256` sidecar that lets the server refuse a corrupted or tampered model.
//!
//! The sidecar is in `sha256sum` format, one line `<64 hex digits>  <file name>`, so a user can
//! also check it with `sha256sum -c model.onnx.sha256` from the model's directory. The digest
//! cannot live inside the file it covers, hence a second file next to it.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum ChecksumError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("checksum file {path} is malformed: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("{model} has sha256 {actual}, but {sidecar} says {expected}: the file is corrupted or was modified")]
    Mismatch {
        model: PathBuf,
        sidecar: PathBuf,
        expected: String,
        actual: String,
    },
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `model.onnx` -> `model.onnx.sha256`.
pub fn sidecar_path(model: &Path) -> PathBuf {
    let mut name = model.as_os_str().to_owned();
    name.push(".sha256");
    PathBuf::from(name)
}

/// The sidecar's content: `<hex>  <file name>\n` (the name without directories, as `sha256sum`
/// writes it when run in the model's directory).
pub fn sidecar_line(hex_digest: &str, model: &Path) -> String {
    let name = model.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    format!("{hex_digest}  {name}\n")
}

/// The digest from a sidecar's text; `path` is only used in the error.
pub fn parse_sidecar(text: &str, path: &Path) -> Result<String, ChecksumError> {
    let malformed = |reason: &str| ChecksumError::Malformed {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let line = text.lines().next().ok_or_else(|| malformed("it is empty"))?;
    let digest = line.split_whitespace().next().ok_or_else(|| malformed("it is empty"))?;
    if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(malformed("the first word is not 64 hex digits"));
    }
    Ok(digest.to_ascii_lowercase())
}

/// Checks `bytes` (the content of `model`) against the sidecar next to `model`, and returns
/// the digest. The server calls this before handing the bytes to ONNX Runtime.
pub fn verify(model: &Path, bytes: &[u8]) -> Result<String, ChecksumError> {
    let sidecar = sidecar_path(model);
    let text = std::fs::read_to_string(&sidecar).map_err(|source| ChecksumError::Io {
        path: sidecar.clone(),
        source,
    })?;
    let expected = parse_sidecar(&text, &sidecar)?;
    let actual = sha256_hex(bytes);
    if actual != expected {
        return Err(ChecksumError::Mismatch {
            model: model.to_owned(),
            sidecar,
            expected,
            actual,
        });
    }
    Ok(actual)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_matches_the_published_test_vector() {
        // FIPS 180-2 example: SHA-256("abc").
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn sidecar_is_sha256sum_format() {
        let model = Path::new("/runs/a/model.onnx");
        assert_eq!(sidecar_path(model), Path::new("/runs/a/model.onnx.sha256"));
        let line = sidecar_line(&sha256_hex(b"x"), model);
        assert!(line.ends_with("  model.onnx\n"), "{line}");
        assert_eq!(parse_sidecar(&line, model).ok(), Some(sha256_hex(b"x")));
    }

    #[test]
    fn verify_accepts_the_file_and_rejects_a_flipped_byte() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("onnx-checksum-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let model = dir.join("model.onnx");
        let mut bytes = b"pretend this is a model".to_vec();
        std::fs::write(sidecar_path(&model), sidecar_line(&sha256_hex(&bytes), &model))?;
        assert_eq!(verify(&model, &bytes)?, sha256_hex(&bytes));
        bytes[3] ^= 1;
        let err = verify(&model, &bytes).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("corrupted or was modified"), "{err}");
        std::fs::write(sidecar_path(&model), "not-a-digest  model.onnx\n")?;
        assert!(matches!(verify(&model, &bytes), Err(ChecksumError::Malformed { .. })));
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
