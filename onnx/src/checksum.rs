//! The `model.onnx.sha256` sidecar that lets the server refuse a corrupted or tampered model.
//!
//! The sidecar is in `sha256sum` format, one line `<64 hex digits>  <file name>`, so a user can
//! also check it with `sha256sum -c model.onnx.sha256` from the model's directory. The digest
//! cannot live inside the file it covers, hence a second file next to it.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// What went wrong checking a model against its sidecar. Models and sidecars are named as the
/// caller knows them: a path, or an `s3://` URI.
#[derive(Debug, thiserror::Error)]
pub enum ChecksumError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("checksum file {sidecar} is not in sha256sum format (`<64 hex digits>  <name>`)")]
    Malformed { sidecar: String },
    #[error("model {model} is corrupted: its sha256 is {actual}, but {sidecar} says {expected}")]
    Mismatch {
        model: String,
        sidecar: String,
        expected: String,
        actual: String,
    },
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Lower-case hex SHA-256 of the file at `path`, streamed (never the whole file in memory).
pub fn sha256_file(path: &Path) -> Result<String, ChecksumError> {
    let io = |source| ChecksumError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 1 << 20];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e)),
        }
    }
    Ok(hex::encode(hasher.finalize()))
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

/// The digest from a sidecar's text (the first word; the name after it is not compared);
/// `sidecar` names it in the error.
pub fn parse_sidecar(text: &str, sidecar: &str) -> Result<String, ChecksumError> {
    text.split_whitespace()
        .next()
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_ascii_lowercase)
        .ok_or_else(|| ChecksumError::Malformed {
            sidecar: sidecar.to_owned(),
        })
}

/// Checks `actual`, the digest of `model`, against the text of its sidecar `sidecar`, and
/// returns it.
pub fn check(actual: String, sidecar_text: &str, model: &str, sidecar: &str) -> Result<String, ChecksumError> {
    let expected = parse_sidecar(sidecar_text, sidecar)?;
    if actual.eq_ignore_ascii_case(&expected) {
        Ok(actual)
    } else {
        Err(ChecksumError::Mismatch {
            model: model.to_owned(),
            sidecar: sidecar.to_owned(),
            expected,
            actual,
        })
    }
}

/// Checks `actual`, the digest of the file `model`, against the sidecar beside it. `Ok(false)`
/// when there is no sidecar (nothing to check against).
pub fn check_file(model: &Path, actual: &str) -> Result<bool, ChecksumError> {
    let sidecar = sidecar_path(model);
    let text = match std::fs::read_to_string(&sidecar) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(source) => return Err(ChecksumError::Io { path: sidecar, source }),
    };
    check(
        actual.to_owned(),
        &text,
        &model.display().to_string(),
        &sidecar.display().to_string(),
    )?;
    Ok(true)
}

/// Checks `bytes` (the content of `model`) against the sidecar next to `model`, which must
/// exist, and returns the digest.
pub fn verify(model: &Path, bytes: &[u8]) -> Result<String, ChecksumError> {
    let actual = sha256_hex(bytes);
    if check_file(model, &actual)? {
        Ok(actual)
    } else {
        Err(ChecksumError::Io {
            path: sidecar_path(model),
            source: std::io::ErrorKind::NotFound.into(),
        })
    }
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
        assert_eq!(parse_sidecar(&line, "model.onnx.sha256").ok(), Some(sha256_hex(b"x")));
        let upper = sidecar_line(&sha256_hex(b"x").to_uppercase(), model);
        assert_eq!(parse_sidecar(&upper, "m").ok(), Some(sha256_hex(b"x")));
        for bad in ["", "not-hex  model.onnx", "abc  model.onnx"] {
            assert!(matches!(
                parse_sidecar(bad, "m.sha256"),
                Err(ChecksumError::Malformed { .. })
            ));
        }
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
        assert!(
            err.contains("model.onnx is corrupted") && err.contains("model.onnx.sha256 says"),
            "{err}"
        );
        std::fs::write(&model, b"pretend this is a model")?;
        assert_eq!(sha256_file(&model)?, sha256_hex(b"pretend this is a model"));
        std::fs::write(sidecar_path(&model), "not-a-digest  model.onnx\n")?;
        assert!(matches!(verify(&model, &bytes), Err(ChecksumError::Malformed { .. })));
        std::fs::remove_file(sidecar_path(&model))?;
        assert!(!check_file(&model, &sha256_hex(&bytes))?, "no sidecar: nothing checked");
        assert!(matches!(verify(&model, &bytes), Err(ChecksumError::Io { .. })));
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
