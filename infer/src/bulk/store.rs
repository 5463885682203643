//! Where the images come from: every object under `s3://bucket/prefix` or every file under a
//! folder, listed and read with the size limit.

use std::collections::{HashSet, VecDeque};
use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};

use aws_sdk_s3::error::DisplayErrorContext;

use super::ItemError;
pub use crate::location::{Location, NotALocation};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    BadUri(#[from] NotALocation),
    #[error("the output {0} must name an object (s3://bucket/key), not a prefix")]
    OutputIsPrefix(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {uri}: {reason}")]
    S3 {
        what: &'static str,
        uri: String,
        reason: String,
    },
    #[error("installing the Ctrl-C/SIGTERM handler: {0}")]
    Signal(#[source] std::io::Error),
}

/// An S3 call's failure with the SDK's whole error chain (its `Display` alone says only "service
/// error").
pub(super) fn s3_err<E: std::error::Error>(what: &'static str, uri: String) -> impl FnOnce(E) -> StoreError {
    move |e| StoreError::S3 {
        what,
        uri,
        reason: DisplayErrorContext(&e).to_string(),
    }
}

pub(super) fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + use<> {
    let path = path.to_owned();
    move |source| StoreError::Io { what, path, source }
}

/// One object to classify, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// The S3 key; for a file, its path (relative to the folder) as [`escape`] writes it.
    pub key: String,
    pub etag: Option<String>,
    pub size: Option<u64>,
    /// A file's path as the file system names it (relative to the folder): the key is only
    /// its printable form. `None` for S3.
    pub path: Option<PathBuf>,
}

impl Object {
    /// An S3 object as listed.
    pub fn s3(key: String, etag: Option<String>, size: Option<u64>) -> Self {
        Self {
            key,
            etag,
            size,
            path: None,
        }
    }
}

/// An object's bytes and the ETag of exactly those bytes (S3 only), which may be newer than the
/// listed one when the object was overwritten in between.
#[derive(Debug)]
pub struct Read {
    pub bytes: Vec<u8>,
    pub etag: Option<String>,
}

/// The objects under a folder or an S3 prefix, or image files named one by one.
#[derive(Debug, Clone)]
pub enum Objects {
    S3 {
        client: aws_sdk_s3::Client,
        bucket: String,
        prefix: String,
    },
    Folder(PathBuf),
    Files(Vec<PathBuf>),
}

/// A file name as a record's key: UTF-8 as it is, with each byte that is not UTF-8 written
/// `\xNN` and a backslash written `\\`, so that two names never give one key (a name that
/// differs from another only in bytes that are not UTF-8 included).
pub fn escape(name: &OsStr) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(name.len());
    for chunk in name.as_encoded_bytes().utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else {
                out.push(c);
            }
        }
        for byte in chunk.invalid() {
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    out
}

impl Objects {
    pub async fn open(location: &Location) -> Self {
        match location {
            Location::S3 { bucket, key } => Self::S3 {
                client: crate::s3::client().await,
                bucket: bucket.clone(),
                prefix: key.clone(),
            },
            Location::Path(path) => Self::Folder(path.clone()),
        }
    }

    /// Every object, in key order, except `skip` (the output itself, when it lies inside) and S3
    /// "folder" markers (keys ending in `/`).
    pub async fn list(&self, skip: Option<&Location>) -> Result<Vec<Object>, StoreError> {
        match self {
            Self::S3 { client, bucket, prefix } => {
                let skip_key = match skip {
                    Some(Location::S3 { bucket: b, key }) if b == bucket => Some(key.as_str()),
                    _ => None,
                };
                let mut objects = Vec::new();
                let mut token = None;
                loop {
                    let page = client
                        .list_objects_v2()
                        .bucket(bucket)
                        .prefix(prefix)
                        .set_continuation_token(token)
                        .send()
                        .await
                        .map_err(s3_err("listing", format!("s3://{bucket}/{prefix}")))?;
                    for object in page.contents() {
                        let Some(key) = object.key() else { continue };
                        if key.ends_with('/') || Some(key) == skip_key {
                            continue;
                        }
                        objects.push(Object::s3(
                            key.to_owned(),
                            object.e_tag().map(str::to_owned),
                            object.size().and_then(|s| u64::try_from(s).ok()),
                        ));
                    }
                    token = page.next_continuation_token().map(str::to_owned);
                    if token.is_none() {
                        break;
                    }
                }
                objects.sort_by(|a, b| a.key.cmp(&b.key));
                Ok(objects)
            }
            Self::Folder(root) => {
                let skip = match skip {
                    Some(Location::Path(path)) => path.canonicalize().ok(),
                    _ => None,
                };
                let root = root.clone();
                tokio::task::spawn_blocking(move || walk(&root, skip.as_deref()))
                    .await
                    .map_err(|e| StoreError::Io {
                        what: "listing",
                        path: PathBuf::new(),
                        source: std::io::Error::other(e),
                    })?
            }
            // In the order given; reading a missing or unreadable file gives its record an error.
            Self::Files(paths) => Ok(paths
                .iter()
                .map(|path| Object {
                    key: escape(path.as_os_str()),
                    etag: None,
                    size: std::fs::metadata(path).ok().filter(|m| m.is_file()).map(|m| m.len()),
                    path: Some(path.clone()),
                })
                .collect()),
        }
    }

    /// The object's bytes; one over `max_bytes` is refused before it is read.
    pub async fn read(&self, object: &Object, max_bytes: usize) -> Result<Read, ItemError> {
        let path = match (self, &object.path) {
            (Self::S3 { client, bucket, .. }, _) => return read_s3(client, bucket, &object.key, max_bytes).await,
            (Self::Folder(root), Some(path)) => root.join(path),
            (Self::Files(_), Some(path)) => path.clone(),
            (Self::Folder(root), None) => root.join(&object.key),
            (Self::Files(_), None) => PathBuf::from(&object.key),
        };
        let bytes = tokio::task::spawn_blocking(move || read_file(&path, max_bytes))
            .await
            .map_err(|_| ItemError::Task("reading"))??;
        Ok(Read { bytes, etag: None })
    }
}

/// What tells two paths to one directory apart from two directories: device and inode.
#[cfg(unix)]
fn dir_id(meta: &std::fs::Metadata, _path: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

#[cfg(not(unix))]
fn dir_id(_meta: &std::fs::Metadata, path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_owned())
}

/// Every file under `root`, symbolic links followed, each directory listed once however many
/// links lead to it (a link back up the tree would otherwise list it again at every level,
/// until the path grows too long). Entries are visited in name order, breadth first, so the
/// shortest path to a directory is the one its files are listed under.
fn walk(root: &Path, skip: Option<&Path>) -> Result<Vec<Object>, StoreError> {
    let mut objects = Vec::new();
    let root_meta = std::fs::metadata(root).map_err(io_err("listing", root))?;
    let mut seen = HashSet::from([dir_id(&root_meta, root)]);
    let mut folders = VecDeque::from([PathBuf::new()]);
    while let Some(relative) = folders.pop_front() {
        let folder = root.join(&relative);
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&folder).map_err(io_err("listing", &folder))? {
            names.push(entry.map_err(io_err("listing", &folder))?.file_name());
        }
        names.sort_unstable();
        for name in names {
            let relative = relative.join(name);
            let path = root.join(&relative);
            // A broken link or an unreadable entry is listed all the same: reading it gives its
            // record an error, instead of ending the listing.
            let size = match std::fs::metadata(&path) {
                Ok(meta) if meta.is_dir() => {
                    if seen.insert(dir_id(&meta, &path)) {
                        folders.push_back(relative);
                    } else {
                        tracing::info!(folder = %path.display(), "a link to a folder listed already: skipped");
                    }
                    continue;
                }
                Ok(meta) => Some(meta.len()),
                Err(_) => None,
            };
            if skip.is_some() && path.canonicalize().ok().as_deref() == skip {
                continue;
            }
            let key = relative
                .components()
                .map(|c| escape(c.as_os_str()))
                .collect::<Vec<_>>()
                .join("/");
            objects.push(Object {
                key,
                etag: None,
                size,
                path: Some(relative),
            });
        }
    }
    objects.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(objects)
}

fn read_file(path: &Path, max_bytes: usize) -> Result<Vec<u8>, ItemError> {
    use std::io::Read;
    let read_err = |e: std::io::Error| ItemError::Read {
        uri: path.display().to_string(),
        reason: e.to_string(),
    };
    let file = File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    // One byte past the limit tells a file that grew since it was listed.
    file.take(max_bytes as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() > max_bytes {
        return Err(ItemError::TooLarge {
            size: bytes.len() as u64,
            limit: max_bytes,
        });
    }
    Ok(bytes)
}

pub(super) async fn read_s3(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    max_bytes: usize,
) -> Result<Read, ItemError> {
    let uri = || format!("s3://{bucket}/{key}");
    let object = crate::s3::request(client, bucket, key)
        .await
        .map_err(|failure| match failure {
            crate::s3::Failure::NotFound => ItemError::Missing { uri: uri() },
            failure => ItemError::Read {
                uri: uri(),
                reason: failure.reason(bucket, key),
            },
        })?;
    if let Some(size) = object.content_length().and_then(|s| u64::try_from(s).ok())
        && size > max_bytes as u64
    {
        return Err(ItemError::TooLarge { size, limit: max_bytes });
    }
    let etag = object.e_tag().map(str::to_owned);
    let body = object.body.collect().await.map_err(|e| ItemError::Read {
        uri: uri(),
        reason: format!("reading the body: {e}"),
    })?;
    Ok(Read {
        bytes: body.into_bytes().to_vec(),
        etag,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn escaped_names_keep_utf8_and_never_collide() {
        use std::os::unix::ffi::OsStrExt;
        let key = |b: &[u8]| escape(OsStr::from_bytes(b));
        assert_eq!(key("chat-été.png".as_bytes()), "chat-été.png");
        assert_eq!(key(b"caf\xe9.png"), "caf\\xe9.png");
        assert_ne!(key(b"caf\xe9.png"), key(b"caf\xe8.png"));
        // The escape itself, spelt out in a UTF-8 name, is not the escaped byte.
        assert_eq!(key(b"caf\\xe9.png"), "caf\\\\xe9.png");
        assert_ne!(key(b"caf\\xe9.png"), key(b"caf\xe9.png"));
    }
}
