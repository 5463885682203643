//! The Lambda path: `cargo lambda watch` runs the `infer` binary under a local Lambda runtime
//! emulator, and `cargo lambda invoke` sends it an API Gateway HTTP API (v2) event whose image
//! body is base64-encoded, as API Gateway delivers binary bodies.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use common::solid;
use image::ImageFormat;
use infer::testing::{TinyModel, write_with_sidecar};
use serde_json::{Value, json};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tools_path() -> Result<std::ffi::OsString> {
    let tools = repo_root().join(".native/tools/bin");
    let mut paths = vec![tools];
    paths.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
    Ok(std::env::join_paths(paths)?)
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct Watch(Child);

impl Drop for Watch {
    fn drop(&mut self) {
        // cargo lambda watch runs the function as a child: end the whole process group.
        let _ = Command::new("kill")
            .args(["-TERM", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn event(path: &str, query: &str, content_type: &str, body: &[u8]) -> Value {
    json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": {"content-type": content_type, "host": "abc.execute-api.eu-west-1.amazonaws.com"},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc",
            "domainName": "abc.execute-api.eu-west-1.amazonaws.com",
            "domainPrefix": "abc",
            "http": {"method": "POST", "path": path, "protocol": "HTTP/1.1", "sourceIp": "192.0.2.1", "userAgent": "test"},
            "requestId": "req-lambda-1",
            "routeKey": "$default",
            "stage": "$default",
            "time": "25/Nov/2026:18:00:00 +0000",
            "timeEpoch": 1_795_000_000_000_i64
        },
        "body": base64::engine::general_purpose::STANDARD.encode(body),
        "isBase64Encoded": true
    })
}

fn invoke(port: u16, data: &Value, deadline: Instant) -> Result<Value> {
    loop {
        let output = Command::new("cargo")
            .env("PATH", tools_path()?)
            .current_dir(repo_root().join("infer"))
            .args([
                "lambda",
                "invoke",
                "infer",
                "--invoke-port",
                &port.to_string(),
                "--output-format",
                "json",
            ])
            .args(["--data-ascii", &data.to_string()])
            .output()?;
        if output.status.success() {
            return serde_json::from_slice(&output.stdout)
                .with_context(|| format!("invoke output {}", String::from_utf8_lossy(&output.stdout)));
        }
        if Instant::now() > deadline {
            bail!(
                "cargo lambda invoke kept failing: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        // The emulator is still starting or compiling the function.
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn cargo_lambda_watch_serves_api_gateway_events() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let model = write_with_sidecar(dir.path(), "tiny.onnx", &TinyModel::rgb(32).build())?;
    let port = free_port()?;
    let mut command = Command::new("cargo");
    command
        .env("PATH", tools_path()?)
        .current_dir(repo_root().join("infer"))
        .args([
            "lambda",
            "watch",
            "--invoke-port",
            &port.to_string(),
            "--ignore-changes",
        ])
        .args(["--env-var", &format!("MODEL_URI={}", model.display())])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    // Its own process group, so that the function it starts is stopped with it.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let _watch = Watch(
        command
            .spawn()
            .context("starting cargo lambda watch (run `cargo xtask setup`)")?,
    );

    let deadline = Instant::now() + Duration::from_secs(300);
    let png = solid([20, 240, 20], 32, 32, ImageFormat::Png);
    let reply = invoke(port, &event("/v1/predict", "top_k=2", "image/png", &png), deadline)?;
    assert_eq!(reply["statusCode"], 200, "{reply}");
    let body: Value = serde_json::from_str(reply["body"].as_str().context("body")?)?;
    assert_eq!(body["predictions"][0]["label"], "green", "{body}");
    assert_eq!(body["predictions"][0]["top_k"].as_array().map(Vec::len), Some(2));

    // Errors travel the same way.
    let reply = invoke(port, &event("/v1/predict", "", "image/png", b"not an image"), deadline)?;
    assert_eq!(reply["statusCode"], 400, "{reply}");
    let body: Value = serde_json::from_str(reply["body"].as_str().context("body")?)?;
    assert_eq!(body["error"]["code"], "unknown_image_format");
    Ok(())
}
