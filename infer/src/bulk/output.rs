//! Where the records go: stdout, a JSON Lines file, or an S3 object, with the keys an earlier run
//! already wrote there, so that a re-run does only what is left.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::store::{Location, StoreError, io_err, read_s3, s3_err};
use super::{ItemError, Record};

/// Only the key is needed to resume.
#[derive(Deserialize)]
struct Keyed {
    key: String,
}

/// Where the records go. A file or S3 object that already holds records is continued: its keys
/// are [`Output::done`], and new records are appended after them.
#[derive(Debug)]
pub struct Output {
    location: Option<Location>,
    sink: Sink,
    done: HashSet<String>,
}

#[derive(Debug)]
enum Sink {
    Stdout(BufWriter<std::io::Stdout>),
    File(BufWriter<File>, PathBuf),
    /// S3 objects cannot be appended to: records are spooled to a local file, uploaded whole at
    /// the end of the run.
    S3 {
        client: aws_sdk_s3::Client,
        bucket: String,
        key: String,
        spool: PathBuf,
        writer: BufWriter<File>,
    },
}

impl Output {
    /// `None` or `-`: stdout (nothing to resume from).
    pub async fn open(location: Option<&str>) -> Result<Self, StoreError> {
        let location = match location {
            None | Some("-") => None,
            Some(text) => Some(Location::parse(text)?),
        };
        let (sink, done) = match &location {
            None => (Sink::Stdout(BufWriter::new(std::io::stdout())), HashSet::new()),
            Some(Location::Path(path)) => {
                let existing = match std::fs::read(path) {
                    Ok(bytes) => bytes,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                    Err(e) => return Err(io_err("reading", path)(e)),
                };
                let (complete, done) = complete_records(&existing, &path.display().to_string());
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(io_err("opening", path))?;
                // A run that was killed mid-line leaves a partial record: it is dropped, and
                // that object classified again.
                file.set_len(complete as u64).map_err(io_err("truncating", path))?;
                (Sink::File(BufWriter::new(file), path.clone()), done)
            }
            Some(Location::S3 { bucket, key }) => {
                let uri = format!("s3://{bucket}/{key}");
                if key.is_empty() || key.ends_with('/') {
                    return Err(StoreError::OutputIsPrefix(uri));
                }
                let client = crate::s3::client().await;
                let existing = match read_s3(&client, bucket, key, usize::MAX).await {
                    Ok(bytes) => bytes,
                    Err(ItemError::Missing { .. }) => Vec::new(),
                    Err(e) => {
                        return Err(StoreError::S3 {
                            what: "reading",
                            uri,
                            reason: e.to_string(),
                        });
                    }
                };
                let (complete, done) = complete_records(&existing, &uri);
                let spool = std::env::temp_dir().join(format!(
                    "infer-predict-{}-{}.jsonl",
                    std::process::id(),
                    key.replace('/', "_")
                ));
                let mut writer = BufWriter::new(File::create(&spool).map_err(io_err("creating", &spool))?);
                writer
                    .write_all(&existing[..complete])
                    .map_err(io_err("writing", &spool))?;
                let sink = Sink::S3 {
                    client,
                    bucket: bucket.clone(),
                    key: key.clone(),
                    spool,
                    writer,
                };
                (sink, done)
            }
        };
        Ok(Self { location, sink, done })
    }

    pub fn location(&self) -> Option<&Location> {
        self.location.as_ref()
    }

    /// The keys already recorded by an earlier run.
    pub fn done(&self) -> &HashSet<String> {
        &self.done
    }

    pub fn write(&mut self, record: &Record) -> Result<(), StoreError> {
        let (writer, path): (&mut dyn Write, PathBuf) = match &mut self.sink {
            Sink::Stdout(w) => (w, PathBuf::from("stdout")),
            Sink::File(w, path) => (w, path.clone()),
            Sink::S3 { writer, spool, .. } => (writer, spool.clone()),
        };
        let mut line = serde_json::to_vec(record).map_err(|e| io_err("writing", &path)(e.into()))?;
        line.push(b'\n');
        writer.write_all(&line).map_err(io_err("writing", &path))
    }

    /// Flushes, and uploads an S3 output.
    pub async fn finish(self) -> Result<(), StoreError> {
        match self.sink {
            Sink::Stdout(mut w) => w.flush().map_err(io_err("writing", Path::new("stdout"))),
            Sink::File(mut w, path) => w.flush().map_err(io_err("writing", &path)),
            Sink::S3 {
                client,
                bucket,
                key,
                spool,
                mut writer,
            } => {
                let result = async {
                    writer.flush().map_err(io_err("writing", &spool))?;
                    drop(writer);
                    let body = aws_sdk_s3::primitives::ByteStream::from_path(&spool)
                        .await
                        .map_err(|e| io_err("reading", &spool)(std::io::Error::other(e)))?;
                    client
                        .put_object()
                        .bucket(&bucket)
                        .key(&key)
                        .content_type("application/x-ndjson")
                        .body(body)
                        .send()
                        .await
                        .map_err(s3_err("writing", format!("s3://{bucket}/{key}")))?;
                    Ok(())
                }
                .await;
                let _ = std::fs::remove_file(&spool);
                result
            }
        }
    }
}

/// The length of the complete lines in `bytes` and the keys of the records among them. Lines
/// that are not records are kept but name no key (they are logged).
fn complete_records(bytes: &[u8], name: &str) -> (usize, HashSet<String>) {
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut done = HashSet::new();
    for (n, line) in bytes[..complete].split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Keyed>(line) {
            Ok(record) => {
                done.insert(record.key);
            }
            Err(e) => tracing::warn!(output = name, line = n + 1, "not a record ({e}); kept as it is"),
        }
    }
    if complete < bytes.len() {
        tracing::warn!(
            output = name,
            "the last line is incomplete (an interrupted run?); dropped"
        );
    }
    (complete, done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_keeps_complete_records_and_drops_a_partial_line() {
        let text = b"{\"key\":\"a.png\",\"error\":null}\n{\"key\":\"b.png\"}\nnot json\n{\"key\":\"c.p";
        let (complete, done) = complete_records(text, "t");
        assert_eq!(
            &text[..complete],
            b"{\"key\":\"a.png\",\"error\":null}\n{\"key\":\"b.png\"}\nnot json\n"
        );
        let mut keys: Vec<&str> = done.iter().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["a.png", "b.png"]);
        assert_eq!(complete_records(b"", "t").0, 0);
    }
}
