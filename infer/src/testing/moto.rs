//! A real S3-compatible server for tests: moto's `moto_server` from the tools venv (installed by
//! `cargo xtask setup`), on a free loopback port, stopped on drop; and the plain S3 REST calls
//! (path-style, unsigned: moto does not check signatures) that tests use to fill it.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What went wrong starting or calling moto.
#[derive(Debug, thiserror::Error)]
pub enum MotoError {
    #[error("{0} is missing: run `cargo xtask setup`")]
    Missing(PathBuf),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("moto_server did not start listening on port {0} within 30 s")]
    NotListening(u16),
    #[error("{method} {url}: {reason}")]
    Http {
        method: &'static str,
        url: String,
        reason: String,
    },
}

/// The dummy account's credential: moto reads the account from the header and does not check
/// the signature.
const AUTHORIZATION: &str =
    "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0";

/// A running `moto_server`.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:PORT`, for `AWS_ENDPOINT_URL`.
    pub endpoint: String,
}

impl Moto {
    pub fn start() -> Result<Self, MotoError> {
        let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.native/tools/bin/moto_server");
        if !bin.exists() {
            return Err(MotoError::Missing(bin));
        }
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| MotoError::Io { what, source }
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(io("finding a free port"))?
            .port();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io(&format!("starting {}", bin.display())))?;
        let moto = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err(MotoError::NotListening(port));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(moto)
    }

    /// The environment that points the AWS SDK at this server, with dummy credentials.
    pub fn aws_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }

    /// Creates `bucket`.
    pub fn create_bucket(&self, bucket: &str) -> Result<(), MotoError> {
        self.put(bucket, b"").map(|_| ())
    }

    /// Puts `body` at `bucket/key` and returns the ETag S3 gave it (with its quotes). As the
    /// SDK's (dummy) account, which may then overwrite it: moto refuses anonymous overwrites.
    pub fn put(&self, path: &str, body: &[u8]) -> Result<String, MotoError> {
        let url = format!("{}/{path}", self.endpoint);
        let response = ureq::put(&url)
            .header("Authorization", AUTHORIZATION)
            .send(body)
            .map_err(|e| MotoError::Http {
                method: "PUT",
                url: url.clone(),
                reason: e.to_string(),
            })?;
        Ok(response
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned())
    }

    /// The object at `bucket/key`.
    pub fn get(&self, path: &str) -> Result<Vec<u8>, MotoError> {
        let url = format!("{}/{path}", self.endpoint);
        let http = |e: ureq::Error| MotoError::Http {
            method: "GET",
            url: url.clone(),
            reason: e.to_string(),
        };
        // Objects the SDK wrote belong to its (dummy) account, and moto refuses them to anonymous
        // readers; it reads the account from the header and does not check the signature.
        let mut response = ureq::get(&url)
            .header("Authorization", AUTHORIZATION)
            .call()
            .map_err(http)?;
        response
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .map_err(http)
    }

    /// One call of the IAM query API (`Action=...` and its parameters) as the account's root,
    /// while IAM is not enforced: its XML answer.
    pub fn iam(&self, params: &[(&str, &str)]) -> Result<String, MotoError> {
        let url = format!("{}/", self.endpoint);
        let mut form = vec![("Version", "2010-05-08")];
        form.extend_from_slice(params);
        let http = |e: ureq::Error| MotoError::Http {
            method: "POST",
            url: url.clone(),
            reason: e.to_string(),
        };
        // moto routes a request to a service by the credential scope of its Authorization header.
        ureq::post(&url)
            .header("Authorization", AUTHORIZATION.replace("/s3/", "/iam/"))
            .send_form(form)
            .map_err(http)?
            .body_mut()
            .read_to_string()
            .map_err(http)
    }

    /// Whether moto checks every call's signature and IAM policies from now on (moto's
    /// `INITIAL_NO_AUTH_ACTION_COUNT`: 0, or never). The plain calls above need it off.
    pub fn enforce_iam(&self, on: bool) -> Result<(), MotoError> {
        let url = format!("{}/moto-api/reset-auth", self.endpoint);
        ureq::post(&url)
            .send(if on { "0" } else { "inf" })
            .map_err(|e| MotoError::Http {
                method: "POST",
                url: url.clone(),
                reason: e.to_string(),
            })?;
        Ok(())
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
