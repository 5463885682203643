//! Where things live: the repository root and the cache of native runtimes.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The workspace root (the parent of `xtask/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// One cache for every clone: `$RESNET_SERVERLESS_CACHE`, else `$XDG_CACHE_HOME/resnet-serverless`,
/// else `~/.cache/resnet-serverless`.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("RESNET_SERVERLESS_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    let base = match std::env::var_os("XDG_CACHE_HOME") {
        Some(dir) => PathBuf::from(dir),
        None => {
            PathBuf::from(std::env::var_os("HOME").context("neither HOME nor XDG_CACHE_HOME is set")?).join(".cache")
        }
    };
    Ok(base.join("resnet-serverless"))
}

/// The in-repo link to the cache that `.cargo/config.toml` points `LIBTORCH` and `ORT_DYLIB_PATH` at.
pub fn native_link() -> PathBuf {
    repo_root().join(".native")
}
