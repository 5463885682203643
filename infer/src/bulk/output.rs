//! Where the records go: stdout, a JSON Lines file, an S3 object, or memory (image files named
//! one by one), with the records an earlier run already wrote there, so that a re-run does only
//! what is left.
//!
//! An S3 object cannot be appended to: the records are streamed into a multipart upload, in
//! parts of [`PART_BYTES`] (S3's smallest part but the last is 5 MiB), starting with the earlier
//! run's records that still hold. The object is replaced only when the upload completes, at the
//! end of the run or after Ctrl-C / SIGTERM; a run that fails aborts the upload and leaves the
//! earlier object as it was. (A run killed outright leaves its parts to the bucket's
//! `AbortIncompleteMultipartUpload` lifecycle rule.)

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use serde::Deserialize;

use super::store::{Location, Object, StoreError, io_err, read_s3, s3_err};
use super::{ItemError, Record};

/// Bytes buffered before they are sent as one part of an S3 output.
pub const PART_BYTES: usize = 8 << 20;

/// What resuming needs of an earlier record.
#[derive(Debug, Deserialize)]
struct Prior {
    key: String,
    #[serde(default)]
    etag: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// One complete line of the earlier output, and the record it holds (`None`: not a record,
/// kept as it is).
#[derive(Debug)]
struct Line {
    bytes: Range<usize>,
    record: Option<Prior>,
}

/// Where the records go. A file or S3 object that already holds records is continued: see
/// [`Output::resume`].
#[derive(Debug)]
pub struct Output {
    location: Option<Location>,
    sink: Sink,
    /// The earlier output's complete lines (a partial last line, left by a killed run, dropped).
    earlier: Vec<u8>,
    lines: Vec<Line>,
}

#[derive(Debug)]
enum Sink {
    Stdout(BufWriter<std::io::Stdout>),
    File(BufWriter<File>, PathBuf),
    S3(Upload),
    Memory(Vec<Record>),
}

/// What [`Output::resume`] found.
#[derive(Debug)]
pub struct Resume {
    /// The objects to classify, in listing order.
    pub todo: Vec<Object>,
    /// Listed objects whose record holds: error-free (or failed, without `retry_failed`) with
    /// the object's current ETag.
    pub skipped: usize,
    /// Of `todo`, those whose earlier record was dropped: it had an error, or the object has
    /// changed since (another ETag).
    pub redone: usize,
}

impl Output {
    /// `None` or `-`: stdout (nothing to resume from). A file or S3 object is read here, so that
    /// a bad output stops the run before anything else starts.
    pub async fn open(location: Option<&str>) -> Result<Self, StoreError> {
        let location = match location {
            None | Some("-") => None,
            Some(text) => Some(Location::parse(text)?),
        };
        let (sink, existing, name) = match &location {
            None => (
                Sink::Stdout(BufWriter::new(std::io::stdout())),
                Vec::new(),
                String::new(),
            ),
            Some(Location::Path(path)) => {
                let existing = match std::fs::read(path) {
                    Ok(bytes) => bytes,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                    Err(e) => return Err(io_err("reading", path)(e)),
                };
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(io_err("opening", path))?;
                let name = path.display().to_string();
                (Sink::File(BufWriter::new(file), path.clone()), existing, name)
            }
            Some(Location::S3 { bucket, key }) => {
                let uri = format!("s3://{bucket}/{key}");
                if key.is_empty() || key.ends_with('/') {
                    return Err(StoreError::OutputIsPrefix(uri));
                }
                let client = crate::s3::client().await;
                let existing = match read_s3(&client, bucket, key, usize::MAX).await {
                    Ok(read) => read.bytes,
                    Err(ItemError::Missing { .. }) => Vec::new(),
                    Err(e) => {
                        return Err(StoreError::S3 {
                            what: "reading",
                            uri,
                            reason: e.to_string(),
                        });
                    }
                };
                let upload = Upload {
                    client,
                    bucket: bucket.clone(),
                    key: key.clone(),
                    id: None,
                    parts: Vec::new(),
                    buffer: Vec::new(),
                };
                (Sink::S3(upload), existing, uri)
            }
        };
        let (earlier, lines) = complete_lines(existing, &name);
        Ok(Self {
            location,
            sink,
            earlier,
            lines,
        })
    }

    /// Records kept in memory, in the order written ([`Output::into_records`]).
    pub fn memory() -> Self {
        Self {
            location: None,
            sink: Sink::Memory(Vec::new()),
            earlier: Vec::new(),
            lines: Vec::new(),
        }
    }

    pub fn location(&self) -> Option<&Location> {
        self.location.as_ref()
    }

    /// Decides what of `listed` is left to do, and starts the output with the earlier records
    /// that still hold. An object is done when its last earlier record has no error and the
    /// ETag the object has now (`None` for files); with `retry_failed` false a record with an
    /// error counts as done too. The earlier records of objects done again are dropped, so that
    /// each key has one record; records of objects no longer listed, and lines that are not
    /// records, are kept.
    pub async fn resume(&mut self, listed: Vec<Object>, retry_failed: bool) -> Result<Resume, StoreError> {
        let last: HashMap<&str, &Prior> = self
            .lines
            .iter()
            .filter_map(|l| l.record.as_ref())
            .map(|r| (r.key.as_str(), r))
            .collect();
        let mut todo = Vec::new();
        let mut redo = HashSet::new();
        let mut skipped = 0;
        for object in listed {
            match last.get(object.key.as_str()) {
                Some(prior) if prior.etag == object.etag && (prior.error.is_none() || !retry_failed) => {
                    skipped += 1;
                }
                Some(_) => {
                    redo.insert(object.key.clone());
                    todo.push(object);
                }
                None => todo.push(object),
            }
        }
        let kept: Vec<Range<usize>> = self
            .lines
            .iter()
            .filter(|l| l.record.as_ref().is_none_or(|r| !redo.contains(&r.key)))
            .map(|l| l.bytes.clone())
            .collect();
        let redone = redo.len();
        let earlier = std::mem::take(&mut self.earlier);
        self.lines.clear();
        match &mut self.sink {
            Sink::Stdout(_) | Sink::Memory(_) => {}
            Sink::File(writer, path) => {
                if redone == 0 {
                    // Nothing dropped but, perhaps, a partial last line.
                    writer
                        .get_ref()
                        .set_len(earlier.len() as u64)
                        .map_err(io_err("truncating", path))?;
                } else {
                    *writer = BufWriter::new(rewrite(path, &earlier, &kept)?);
                }
            }
            Sink::S3(upload) => {
                for range in kept {
                    upload.write(&earlier[range]).await?;
                }
            }
        }
        Ok(Resume { todo, skipped, redone })
    }

    pub async fn write(&mut self, record: &Record) -> Result<(), StoreError> {
        let path = match &self.sink {
            Sink::Memory(_) | Sink::Stdout(_) => PathBuf::from("stdout"),
            Sink::File(_, path) => path.clone(),
            Sink::S3(upload) => PathBuf::from(upload.uri()),
        };
        let mut line = serde_json::to_vec(record).map_err(|e| io_err("writing", &path)(e.into()))?;
        line.push(b'\n');
        match &mut self.sink {
            Sink::Stdout(w) => w.write_all(&line).map_err(io_err("writing", &path)),
            Sink::File(w, _) => w.write_all(&line).map_err(io_err("writing", &path)),
            Sink::S3(upload) => upload.write(&line).await,
            Sink::Memory(records) => {
                records.push(record.clone());
                Ok(())
            }
        }
    }

    /// The records of a [`Output::memory`] output (none for the others).
    pub fn into_records(self) -> Vec<Record> {
        match self.sink {
            Sink::Memory(records) => records,
            _ => Vec::new(),
        }
    }

    /// Flushes, or completes an S3 output's upload (every record written is in the object).
    pub async fn finish(self) -> Result<(), StoreError> {
        match self.sink {
            Sink::Stdout(mut w) => w.flush().map_err(io_err("writing", Path::new("stdout"))),
            Sink::File(mut w, path) => w.flush().map_err(io_err("writing", &path)),
            Sink::S3(upload) => upload.finish().await,
            Sink::Memory(_) => Ok(()),
        }
    }

    /// After a failed run: what was written to a file or stdout stays, an S3 upload is aborted
    /// (the earlier object stays as it was).
    pub async fn abort(self) {
        match self.sink {
            Sink::S3(upload) => upload.abort().await,
            Sink::Stdout(mut w) => {
                let _ = w.flush();
            }
            Sink::File(mut w, _) => {
                let _ = w.flush();
            }
            Sink::Memory(_) => {}
        }
    }
}

/// Writes the `kept` lines of `earlier` to a new file beside `path` and renames it over `path`:
/// the earlier output stays whole until the new one is.
fn rewrite(path: &Path, earlier: &[u8], kept: &[Range<usize>]) -> Result<File, StoreError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut spool = tempfile::NamedTempFile::new_in(dir).map_err(io_err("creating a file in", dir))?;
    let spool_path = spool.path().to_owned();
    // The new file takes the old one's permissions (a temporary file is created owner-only).
    if let Ok(meta) = std::fs::metadata(path) {
        spool
            .as_file()
            .set_permissions(meta.permissions())
            .map_err(io_err("setting the permissions of", &spool_path))?;
    }
    {
        let mut writer = BufWriter::new(spool.as_file_mut());
        for range in kept {
            writer
                .write_all(&earlier[range.clone()])
                .map_err(io_err("writing", &spool_path))?;
        }
        writer.flush().map_err(io_err("writing", &spool_path))?;
    }
    let file = spool
        .persist(path)
        .map_err(|e| io_err("renaming", &spool_path)(e.error))?;
    Ok(file)
}

/// A multipart upload, started when the first part is full: an output smaller than one part
/// is written with one `PutObject` at the end.
#[derive(Debug)]
struct Upload {
    client: aws_sdk_s3::Client,
    bucket: String,
    key: String,
    id: Option<String>,
    parts: Vec<CompletedPart>,
    buffer: Vec<u8>,
}

impl Upload {
    fn uri(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= PART_BYTES {
            self.send_part().await?;
        }
        Ok(())
    }

    async fn send_part(&mut self) -> Result<(), StoreError> {
        let id = match &self.id {
            Some(id) => id.clone(),
            None => {
                let created = self
                    .client
                    .create_multipart_upload()
                    .bucket(&self.bucket)
                    .key(&self.key)
                    .content_type("application/x-ndjson")
                    // The SDK checksums every part (CRC32 by default); an upload created without
                    // naming the algorithm may refuse them.
                    .checksum_algorithm(ChecksumAlgorithm::Crc32)
                    .send()
                    .await
                    .map_err(s3_err("starting the upload of", self.uri()))?;
                let id = created.upload_id().ok_or_else(|| StoreError::S3 {
                    what: "starting the upload of",
                    uri: self.uri(),
                    reason: "S3 answered no upload id".into(),
                })?;
                self.id = Some(id.to_owned());
                id.to_owned()
            }
        };
        let number = i32::try_from(self.parts.len() + 1).unwrap_or(i32::MAX);
        let body = ByteStream::from(std::mem::take(&mut self.buffer));
        let part = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(id)
            .part_number(number)
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .body(body)
            .send()
            .await
            .map_err(s3_err("uploading a part of", self.uri()))?;
        self.parts.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(part.e_tag().map(str::to_owned))
                .set_checksum_crc32(part.checksum_crc32().map(str::to_owned))
                .build(),
        );
        Ok(())
    }

    async fn finish(mut self) -> Result<(), StoreError> {
        let Some(id) = self.id.clone() else {
            let body = ByteStream::from(std::mem::take(&mut self.buffer));
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&self.key)
                .content_type("application/x-ndjson")
                .body(body)
                .send()
                .await
                .map_err(s3_err("writing", self.uri()))?;
            return Ok(());
        };
        let completed = async {
            if !self.buffer.is_empty() {
                self.send_part().await?;
            }
            let parts = CompletedMultipartUpload::builder()
                .set_parts(Some(std::mem::take(&mut self.parts)))
                .build();
            self.client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(&self.key)
                .upload_id(&id)
                .multipart_upload(parts)
                .send()
                .await
                .map_err(s3_err("completing the upload of", self.uri()))?;
            Ok(())
        }
        .await;
        if completed.is_err() {
            self.abort().await;
        }
        completed
    }

    async fn abort(self) {
        let Some(id) = &self.id else { return };
        if let Err(e) = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(id)
            .send()
            .await
        {
            let e = s3_err("aborting the upload of", self.uri())(e);
            tracing::warn!("{e} (the bucket's lifecycle rule removes its parts)");
        }
    }
}

/// The complete lines of `bytes` (a partial last line dropped) and the records among them.
/// Lines that are not records are kept, as no record (they are logged).
fn complete_lines(mut bytes: Vec<u8>, name: &str) -> (Vec<u8>, Vec<Line>) {
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if complete < bytes.len() {
        tracing::warn!(
            output = name,
            "the last line is incomplete (an interrupted run?); dropped"
        );
        bytes.truncate(complete);
    }
    let mut lines = Vec::new();
    let mut start = 0;
    for (n, line) in bytes.split_inclusive(|&b| b == b'\n').enumerate() {
        let range = start..start + line.len();
        start = range.end;
        if line.iter().all(u8::is_ascii_whitespace) {
            lines.push(Line {
                bytes: range,
                record: None,
            });
            continue;
        }
        let record = match serde_json::from_slice::<Prior>(line) {
            Ok(record) => Some(record),
            Err(e) => {
                tracing::warn!(output = name, line = n + 1, "not a record ({e}); kept as it is");
                None
            }
        };
        lines.push(Line { bytes: range, record });
    }
    (bytes, lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_keeps_complete_records_and_drops_a_partial_line() {
        let text = b"{\"key\":\"a.png\",\"error\":null}\n{\"key\":\"b.png\",\"etag\":\"\\\"1\\\"\",\"error\":\"timeout\"}\nnot json\n{\"key\":\"c.p";
        let (complete, lines) = complete_lines(text.to_vec(), "t");
        assert_eq!(
            complete,
            b"{\"key\":\"a.png\",\"error\":null}\n{\"key\":\"b.png\",\"etag\":\"\\\"1\\\"\",\"error\":\"timeout\"}\nnot json\n"
        );
        let records: Vec<_> = lines
            .iter()
            .map(|l| {
                l.record
                    .as_ref()
                    .map(|r| (r.key.as_str(), r.etag.as_deref(), r.error.is_some()))
            })
            .collect();
        assert_eq!(
            records,
            [Some(("a.png", None, false)), Some(("b.png", Some("\"1\""), true)), None]
        );
        assert_eq!(&complete[lines[2].bytes.clone()], b"not json\n");
        assert!(complete_lines(Vec::new(), "t").1.is_empty());
    }
}
