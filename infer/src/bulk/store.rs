//! Where the images come from: every object under `s3://bucket/prefix` or every file under a
//! folder, listed and read with the size limit.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use aws_sdk_s3::error::DisplayErrorContext;

use super::ItemError;

/// `s3://bucket/key-or-prefix` or a local path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    S3 { bucket: String, key: String },
    Path(PathBuf),
}

impl Location {
    pub fn parse(text: &str) -> Result<Self, StoreError> {
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(StoreError::BadUri(text.to_owned()));
            }
            return Ok(Self::S3 {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
            });
        }
        if text.is_empty() || text.contains("://") {
            return Err(StoreError::BadUri(text.to_owned()));
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

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0:?} is not a path or s3://bucket/prefix")]
    BadUri(String),
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
    pub key: String,
    pub etag: Option<String>,
    pub size: Option<u64>,
}

/// The objects under a folder or an S3 prefix.
#[derive(Debug, Clone)]
pub enum Objects {
    S3 {
        client: aws_sdk_s3::Client,
        bucket: String,
        prefix: String,
    },
    Folder(PathBuf),
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
                        objects.push(Object {
                            key: key.to_owned(),
                            etag: object.e_tag().map(str::to_owned),
                            size: object.size().and_then(|s| u64::try_from(s).ok()),
                        });
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
        }
    }

    /// The object's bytes; one over `max_bytes` is refused before it is read.
    pub async fn read(&self, key: &str, max_bytes: usize) -> Result<Vec<u8>, ItemError> {
        match self {
            Self::S3 { client, bucket, .. } => read_s3(client, bucket, key, max_bytes).await,
            Self::Folder(root) => {
                let path = root.join(key);
                tokio::task::spawn_blocking(move || read_file(&path, max_bytes))
                    .await
                    .map_err(|_| ItemError::Task("reading"))?
            }
        }
    }
}

fn walk(root: &Path, skip: Option<&Path>) -> Result<Vec<Object>, StoreError> {
    let mut objects = Vec::new();
    let mut folders = vec![root.to_owned()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).map_err(io_err("listing", &folder))? {
            let path = entry.map_err(io_err("listing", &folder))?.path();
            // A broken link or an unreadable entry is listed all the same: reading it gives its
            // record an error, instead of ending the listing.
            let size = match std::fs::metadata(&path) {
                Ok(meta) if meta.is_dir() => {
                    folders.push(path);
                    continue;
                }
                Ok(meta) => Some(meta.len()),
                Err(_) => None,
            };
            if skip.is_some() && path.canonicalize().ok().as_deref() == skip {
                continue;
            }
            let Ok(relative) = path.strip_prefix(root) else {
                continue;
            };
            let key = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            objects.push(Object { key, etag: None, size });
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
) -> Result<Vec<u8>, ItemError> {
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
    let body = object.body.collect().await.map_err(|e| ItemError::Read {
        uri: uri(),
        reason: format!("reading the body: {e}"),
    })?;
    Ok(body.into_bytes().to_vec())
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
