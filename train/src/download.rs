//! `train download`: fetches the official CIFAR-10 binary release from its home page, checks
//! the MD5 digest published there, and unpacks it. An archive fetched by other means can be
//! checked and unpacked the same way (`--archive`).

use std::fs::{self, File};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};
use tracing::info;

/// The official binary release (Krizhevsky, 2009).
pub const CIFAR10_BINARY_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
/// The MD5 digest the home page publishes for it.
pub const CIFAR10_BINARY_MD5: &str = "c32a1d4ab5d03f1284b67883e8d87530";
/// The archive's file name in the target directory.
pub const ARCHIVE_NAME: &str = "cifar-10-binary.tar.gz";

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot fetch {url}: {reason}")]
    Http { url: String, reason: String },
    #[error("{path}: MD5 is {found}, expected {expected}: the file is corrupt or not the release; delete it and retry")]
    Checksum {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("{path}: cannot unpack (truncated or not a .tar.gz?): {reason}")]
    Unpack { path: PathBuf, reason: String },
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> DownloadError + '_ {
    move |source| DownloadError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Lower-case hex MD5 of a file.
pub fn md5_file(path: &Path) -> Result<String, DownloadError> {
    let mut file = BufReader::new(File::open(path).map_err(io_err(path))?);
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks `archive` against `expected_md5`, unpacks it into `dir`, and checks that the result
/// reads as a data set. Returns the directory to pass to `train fit --data`.
pub fn verify_and_unpack(archive: &Path, expected_md5: &str, dir: &Path) -> Result<PathBuf, DownloadError> {
    let found = md5_file(archive)?;
    if !found.eq_ignore_ascii_case(expected_md5) {
        return Err(DownloadError::Checksum {
            path: archive.to_owned(),
            found,
            expected: expected_md5.to_lowercase(),
        });
    }
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let file = File::open(archive).map_err(io_err(archive))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(file)));
    let unpack_err = |e: std::io::Error| DownloadError::Unpack {
        path: archive.to_owned(),
        reason: e.to_string(),
    };
    let mut top = None;
    for entry in tar.entries().map_err(unpack_err)? {
        let mut entry = entry.map_err(unpack_err)?;
        let path = entry.path().map_err(unpack_err)?.into_owned();
        if top.is_none() {
            top = path.components().next().map(|c| PathBuf::from(c.as_os_str()));
        }
        // `unpack_in` refuses paths that would escape `dir`.
        entry.unpack_in(dir).map_err(unpack_err)?;
    }
    // The release unpacks into `cifar-10-batches-bin/`.
    let root = match top {
        Some(t) if dir.join(&t).is_dir() => dir.join(t),
        _ => dir.to_owned(),
    };
    let ds = crate::data::load(&root)?;
    info!(
        classes = ds.num_classes(),
        train = ds.train.len(),
        test = ds.test.len(),
        "unpacked and checked {}",
        root.display()
    );
    Ok(root)
}

/// Downloads `url` into `dir/ARCHIVE_NAME` with a progress bar (via a `.part` file renamed once
/// complete), then [`verify_and_unpack`]s it. An archive already there with the right digest is
/// not fetched again.
pub fn download(url: &str, expected_md5: &str, dir: &Path, progress: bool) -> Result<PathBuf, DownloadError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let archive = dir.join(ARCHIVE_NAME);
    if archive.exists() && md5_file(&archive)?.eq_ignore_ascii_case(expected_md5) {
        info!("{} is already here and intact", archive.display());
        return verify_and_unpack(&archive, expected_md5, dir);
    }
    let http = |reason: String| DownloadError::Http {
        url: url.to_owned(),
        reason,
    };
    info!("fetching {url}");
    let response = ureq::get(url).call().map_err(|e| http(e.to_string()))?;
    let total: Option<u64> = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let bar = if progress {
        indicatif::ProgressBar::new(total.unwrap_or(0))
    } else {
        indicatif::ProgressBar::hidden()
    };
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:40.cyan/blue} {bytes}/{total_bytes} {bytes_per_sec} ({eta})")
    {
        bar.set_style(style);
    }
    let part = dir.join(format!("{ARCHIVE_NAME}.part"));
    let mut out = File::create(&part).map_err(io_err(&part))?;
    let mut body = response.into_body().into_reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut received = 0u64;
    loop {
        let n = body.read(&mut buf).map_err(|e| http(e.to_string()))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).map_err(io_err(&part))?;
        received += n as u64;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    if let Some(total) = total.filter(|t| *t != received) {
        return Err(http(format!("connection closed after {received} of {total} bytes")));
    }
    out.sync_all().map_err(io_err(&part))?;
    drop(out);
    fs::rename(&part, &archive).map_err(io_err(&archive))?;
    info!("fetched {} bytes into {}", received, archive.display());
    verify_and_unpack(&archive, expected_md5, dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::tests::write_binary;
    use std::io::{BufRead, Write};
    use std::net::TcpListener;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// A `.tar.gz` laid out like the official release, built from a small binary data set.
    fn release_archive(dir: &Path) -> Result<PathBuf, Box<dyn std::error::Error>> {
        let src = dir.join("src");
        write_binary(&src.join("cifar-10-batches-bin"), &["plane", "car", "bird"], 4)?;
        let archive = dir.join("release.tar.gz");
        let gz = flate2::write::GzEncoder::new(File::create(&archive)?, flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        tar.append_dir_all("cifar-10-batches-bin", src.join("cifar-10-batches-bin"))?;
        tar.into_inner()?.finish()?;
        Ok(archive)
    }

    #[test]
    fn archive_is_verified_then_unpacked_into_a_loadable_data_set() -> TestResult {
        let dir = tempfile::tempdir()?;
        let archive = release_archive(dir.path())?;
        let digest = hex(&Md5::digest(fs::read(&archive)?));
        let out = dir.path().join("data");
        let root = verify_and_unpack(&archive, &digest, &out)?;
        assert_eq!(root, out.join("cifar-10-batches-bin"));
        let ds = crate::data::load(&root)?;
        assert_eq!(ds.class_names, ["plane", "car", "bird"]);

        let wrong = "0".repeat(32);
        let msg = verify_and_unpack(&archive, &wrong, &dir.path().join("x"))
            .err()
            .ok_or("accepted")?
            .to_string();
        assert!(
            msg.contains("release.tar.gz") && msg.contains(&digest) && msg.contains(&wrong),
            "{msg}"
        );

        let bytes = fs::read(&archive)?;
        let cut = dir.path().join("cut.tar.gz");
        fs::write(&cut, &bytes[..bytes.len() / 2])?;
        let cut_digest = hex(&Md5::digest(&bytes[..bytes.len() / 2]));
        let msg = verify_and_unpack(&cut, &cut_digest, &dir.path().join("y"))
            .err()
            .ok_or("accepted")?
            .to_string();
        assert!(msg.contains("cut.tar.gz"), "{msg}");
        Ok(())
    }

    /// The whole download path over real HTTP on loopback: streaming, digest, unpacking.
    #[test]
    fn download_over_loopback_http() -> TestResult {
        let dir = tempfile::tempdir()?;
        let archive = release_archive(dir.path())?;
        let body = fs::read(&archive)?;
        let digest = hex(&Md5::digest(&body));
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}/cifar-10-binary.tar.gz", listener.local_addr()?);
        let server = std::thread::spawn(move || -> std::io::Result<()> {
            let (stream, _) = listener.accept()?;
            let mut reader = std::io::BufReader::new(stream.try_clone()?);
            let mut line = String::new();
            while reader.read_line(&mut line)? > 0 && line != "\r\n" {
                line.clear();
            }
            let mut stream = stream;
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/gzip\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            stream.write_all(&body)?;
            stream.flush()
        });
        let out = dir.path().join("fetched");
        let root = download(&url, &digest, &out, false)?;
        server.join().map_err(|_| "server thread panicked")??;
        assert!(out.join(ARCHIVE_NAME).is_file());
        assert!(!out.join(format!("{ARCHIVE_NAME}.part")).exists());
        assert_eq!(crate::data::load(&root)?.train.len(), 20);
        // A second call finds the intact archive and does not connect (the server is gone).
        download(&url, &digest, &out, false)?;
        Ok(())
    }
}
