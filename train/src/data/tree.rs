//! Where a data set's files come from: a directory, or a `.tar.gz` read into memory once.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{DataError, invalid};

/// Where files come from: a directory on disk, or the regular files of a `.tar.gz` held in memory.
pub(super) enum Tree {
    Dir(PathBuf),
    Archive {
        path: PathBuf,
        files: BTreeMap<String, Vec<u8>>,
    },
}

impl Tree {
    pub(super) fn display(&self, rel: &str) -> PathBuf {
        match self {
            Tree::Dir(root) => root.join(rel),
            // `archive.tar.gz/train/cat/1.png` says which archive and which member.
            Tree::Archive { path, .. } => path.join(rel),
        }
    }

    pub(super) fn is_file(&self, rel: &str) -> bool {
        match self {
            Tree::Dir(root) => root.join(rel).is_file(),
            Tree::Archive { files, .. } => files.contains_key(rel),
        }
    }

    pub(super) fn is_dir(&self, rel: &str) -> bool {
        match self {
            Tree::Dir(root) => root.join(rel).is_dir(),
            Tree::Archive { files, .. } => {
                let prefix = format!("{}/", rel.trim_end_matches('/'));
                files
                    .range(prefix.clone()..)
                    .next()
                    .is_some_and(|(k, _)| k.starts_with(&prefix))
            }
        }
    }

    /// Names of the entries directly under `rel` (`""` = root): `(name, is_dir)`, sorted.
    pub(super) fn list(&self, rel: &str) -> Result<Vec<(String, bool)>, DataError> {
        match self {
            Tree::Dir(root) => {
                let dir = root.join(rel);
                let io = |source| DataError::Io {
                    path: dir.clone(),
                    source,
                };
                let mut out = Vec::new();
                for entry in fs::read_dir(&dir).map_err(io)? {
                    let entry = entry.map_err(io)?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    // Follows symlinks, so a linked class directory counts as one.
                    let is_dir = entry.path().is_dir();
                    out.push((name, is_dir));
                }
                out.sort();
                Ok(out)
            }
            Tree::Archive { files, .. } => {
                let prefix = if rel.is_empty() {
                    String::new()
                } else {
                    format!("{}/", rel.trim_end_matches('/'))
                };
                let mut out: Vec<(String, bool)> = Vec::new();
                for key in files.keys().filter(|k| k.starts_with(&prefix)) {
                    let rest = &key[prefix.len()..];
                    let (name, is_dir) = match rest.split_once('/') {
                        Some((dir, _)) => (dir, true),
                        None => (rest, false),
                    };
                    if out.last().is_none_or(|(n, _)| n != name) {
                        out.push((name.to_owned(), is_dir));
                    }
                }
                Ok(out)
            }
        }
    }

    pub(super) fn read(&self, rel: &str) -> Result<Vec<u8>, DataError> {
        match self {
            Tree::Dir(root) => {
                let path = root.join(rel);
                fs::read(&path).map_err(|source| DataError::Io { path, source })
            }
            Tree::Archive { files, .. } => files.get(rel).cloned().ok_or_else(|| DataError::Io {
                path: self.display(rel),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "not in the archive"),
            }),
        }
    }
}

pub(super) fn join(a: &str, b: &str) -> String {
    if a.is_empty() { b.to_owned() } else { format!("{a}/{b}") }
}

/// Reads every regular file of a gzip-compressed tar archive into memory.
pub(super) fn read_archive(path: &Path) -> Result<BTreeMap<String, Vec<u8>>, DataError> {
    let io = |source| DataError::Io {
        path: path.to_owned(),
        source,
    };
    let file = fs::File::open(path).map_err(io)?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
    let mut files = BTreeMap::new();
    for entry in archive.entries().map_err(io)? {
        let mut entry = entry.map_err(|e| invalid(path, format!("corrupt archive: {e}")))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path().map_err(io)?.to_string_lossy().into_owned();
        let name = name.trim_start_matches("./").to_owned();
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes).map_err(|e| {
            invalid(
                path.join(&name),
                format!("cannot read from the archive (truncated?): {e}"),
            )
        })?;
        files.insert(name, bytes);
    }
    Ok(files)
}

pub(super) fn is_archive(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    name.ends_with(".tar.gz") || name.ends_with(".tgz")
}
