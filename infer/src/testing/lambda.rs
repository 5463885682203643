//! The Lambda path under test: `cargo lambda watch` runs the `infer` binary under a local Lambda
//! runtime emulator, and `cargo lambda invoke` sends it API Gateway HTTP API (v2) events whose
//! bodies are base64-encoded, as API Gateway delivers binary bodies. Shared by `infer`'s own
//! Lambda test and the `e2e` pipeline test.

use std::ffi::OsString;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

/// What went wrong driving `cargo lambda`.
#[derive(Debug, thiserror::Error)]
pub enum LambdaError {
    #[error("{what}: {source} (is cargo-lambda installed? `cargo xtask setup` puts it in .native/tools/bin)")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cargo lambda invoke kept failing for {waited:?}: {stderr}")]
    Invoke { waited: Duration, stderr: String },
    #[error("cargo lambda invoke printed no JSON ({source}): {stdout}")]
    Reply {
        stdout: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A running `cargo lambda watch` serving one model; it and the function it runs are stopped
/// on drop.
#[derive(Debug)]
pub struct LambdaWatch {
    child: Child,
    port: u16,
    path: OsString,
    crate_dir: PathBuf,
}

impl LambdaWatch {
    /// Starts `cargo lambda watch` for the `infer` crate with `MODEL_URI=model`, on a free port.
    /// It builds the function on first use; [`LambdaWatch::invoke`] waits for it.
    pub fn start(model: &Path) -> Result<Self, LambdaError> {
        Self::start_with_env(model, &[])
    }

    /// [`LambdaWatch::start`] with more environment variables for the function (`--env-var`).
    pub fn start_with_env(model: &Path, env: &[(&str, String)]) -> Result<Self, LambdaError> {
        let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let mut paths = vec![crate_dir.join("../.native/tools/bin")];
        paths.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
        let path = std::env::join_paths(paths).map_err(|e| LambdaError::Io {
            what: "building PATH",
            source: std::io::Error::other(e),
        })?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|source| LambdaError::Io {
                what: "finding a free port",
                source,
            })?
            .port();
        let mut command = Command::new("cargo");
        command
            .env("PATH", &path)
            .current_dir(&crate_dir)
            .args([
                "lambda",
                "watch",
                "--invoke-port",
                &port.to_string(),
                "--ignore-changes",
            ])
            .args(["--env-var", &format!("MODEL_URI={}", model.display())])
            .args(
                env.iter()
                    .flat_map(|(k, v)| ["--env-var".to_owned(), format!("{k}={v}")]),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        // Its own process group, so that the function it starts is stopped with it.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command.spawn().map_err(|source| LambdaError::Io {
            what: "starting cargo lambda watch",
            source,
        })?;
        Ok(Self {
            child,
            port,
            path,
            crate_dir,
        })
    }

    /// Sends `event` through `cargo lambda invoke` and returns the function's reply, retrying
    /// while the emulator starts or builds the function, for up to `patience`.
    pub fn invoke(&self, event: &Value, patience: Duration) -> Result<Value, LambdaError> {
        let started = Instant::now();
        loop {
            let output = Command::new("cargo")
                .env("PATH", &self.path)
                .current_dir(&self.crate_dir)
                .args(["lambda", "invoke", "infer", "--invoke-port", &self.port.to_string()])
                .args(["--output-format", "json", "--data-ascii", &event.to_string()])
                .stdin(Stdio::null())
                .output()
                .map_err(|source| LambdaError::Io {
                    what: "running cargo lambda invoke",
                    source,
                })?;
            if output.status.success() {
                return serde_json::from_slice(&output.stdout).map_err(|source| LambdaError::Reply {
                    stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                    source,
                });
            }
            if started.elapsed() > patience {
                return Err(LambdaError::Invoke {
                    waited: started.elapsed(),
                    stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
                });
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for LambdaWatch {
    fn drop(&mut self) {
        // The group id is the child's pid (`process_group(0)`): this reaches the function too.
        // The `--` matters: procps-ng 4.0's kill reads `-TERM -12345` as `kill(-1, SIGTERM)`,
        // every process the user owns, which is how a CI run was once ended from inside a test.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The API Gateway HTTP API (v2) event every Lambda test starts from; `xtask`'s arm64 run
/// reads the same file.
pub const API_GATEWAY_V2_EVENT: &str = include_str!("api_gateway_v2_event.json");

/// An API Gateway HTTP API (v2) `POST` event carrying `body` base64-encoded, as API Gateway
/// delivers binary bodies.
pub fn api_gateway_v2_event(
    path: &str,
    query: &str,
    content_type: &str,
    body: &[u8],
) -> Result<Value, serde_json::Error> {
    let mut event: Value = serde_json::from_str(API_GATEWAY_V2_EVENT)?;
    event["rawPath"] = json!(path);
    event["rawQueryString"] = json!(query);
    event["headers"]["content-type"] = json!(content_type);
    event["requestContext"]["http"]["path"] = json!(path);
    event["body"] = json!(base64::engine::general_purpose::STANDARD.encode(body));
    Ok(event)
}
