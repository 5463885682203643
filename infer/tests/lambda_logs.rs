//! The template asks Lambda for JSON logs (`LoggingConfig.LogFormat: JSON`), which Lambda hands
//! the function as `AWS_LAMBDA_LOG_FORMAT=JSON`. The real `infer` binary runs against
//! cargo-lambda's runtime API (`cargo lambda watch --only-lambda-apis`) with that variable, its
//! stderr captured: every line must be a JSON object with Lambda's `timestamp` and `level`, and
//! every line written while an invocation runs must carry that invocation's `requestId`.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::solid;
use image::ImageFormat;
use infer::testing::lambda::api_gateway_v2_event;
use infer::testing::{TinyModel, write_with_sidecar};
use serde_json::Value;

/// A process group stopped on drop (`cargo lambda` starts children of its own).
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        // cargo-lambda's graceful shutdown can outlive the test: the group goes, whatever it does.
        std::thread::sleep(Duration::from_millis(200));
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(mut command: Command) -> Result<Group> {
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    Ok(Group(command.spawn().context("spawning")?))
}

#[test]
fn json_log_lines_carry_level_and_request_id() -> Result<()> {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut paths = vec![crate_dir.join("../.native/tools/bin")];
    paths.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
    let path = std::env::join_paths(paths)?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port().to_string();

    let mut watch = Command::new("cargo");
    watch
        .env("PATH", &path)
        .current_dir(&crate_dir)
        .args(["lambda", "watch", "--only-lambda-apis", "--invoke-address", "127.0.0.1"])
        .args(["--invoke-port", &port])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _watch = spawn(watch)?;
    // The runtime client gives up when its first poll finds no API: wait for the emulator.
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>()?)).is_err() {
        ensure!(
            started.elapsed() < Duration::from_secs(120),
            "cargo lambda watch never listened"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let dir = tempfile::tempdir()?;
    let model = write_with_sidecar(dir.path(), "tiny.onnx", &TinyModel::rgb(32).build())?;
    let mut function = Command::new(env!("CARGO_BIN_EXE_infer"));
    function
        .env("AWS_LAMBDA_RUNTIME_API", format!("http://127.0.0.1:{port}/.rt"))
        .env("AWS_LAMBDA_FUNCTION_NAME", "infer")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_LOG_FORMAT", "JSON")
        // The template's level: ONNX Runtime's own INFO lines must come out as JSON too.
        .env("RUST_LOG", "info")
        .env("MODEL_URI", &model)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped());
    let mut function = spawn(function)?;
    let stderr = function.0.stderr.take().context("the function's stderr")?;
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().map(|mut l| l.push(line)).ok();
            }
        })
    };
    let snapshot = || lines.lock().map(|l| l.len()).unwrap_or(0);

    // Each invocation's lines are those written between its start and its reply.
    let png = solid([20, 240, 20], 32, 32, ImageFormat::Png);
    let event = api_gateway_v2_event("/v1/predict", "top_k=1", "image/png", &png)?.to_string();
    let mut windows = Vec::new();
    for _ in 0..2 {
        let started = Instant::now();
        loop {
            let before = snapshot();
            let out = Command::new("cargo")
                .env("PATH", &path)
                .current_dir(&crate_dir)
                .args([
                    "lambda",
                    "invoke",
                    "--invoke-address",
                    "127.0.0.1",
                    "--invoke-port",
                    &port,
                ])
                .args(["--output-format", "json", "--data-ascii", &event])
                .stdin(Stdio::null())
                .output()?;
            if out.status.success() {
                let reply: Value = serde_json::from_slice(&out.stdout)?;
                ensure!(reply["statusCode"] == 200, "{reply}");
                // The reader thread may still be behind the pipe.
                std::thread::sleep(Duration::from_millis(300));
                windows.push((before, snapshot()));
                break;
            }
            ensure!(
                started.elapsed() < Duration::from_secs(300),
                "cargo lambda invoke kept failing: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    drop(function);
    let _ = reader.join();
    let lines = lines.lock().map(|l| l.clone()).unwrap_or_default();

    let parsed: Vec<Value> = lines
        .iter()
        .map(|line| {
            let value: Value = serde_json::from_str(line).with_context(|| format!("not a JSON line: {line}"))?;
            ensure!(value.is_object(), "not a JSON object: {line}");
            let level = value["level"].as_str().unwrap_or_default();
            ensure!(
                ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level),
                "no Lambda level in {line}"
            );
            ensure!(value["timestamp"].is_string(), "no timestamp in {line}");
            Ok(value)
        })
        .collect::<Result<_>>()?;

    let mut ids = Vec::new();
    for (from, to) in windows {
        // The first invocation's window may open on the end of start-up, which has no id.
        let window = &parsed[from..to];
        let first = window
            .iter()
            .position(|l| l["requestId"].is_string())
            .with_context(|| format!("no line with a requestId among {window:?}"))?;
        ensure!(
            window[..first].iter().all(|l| l["spans"].is_null()),
            "lines inside spans without a requestId: {window:?}"
        );
        let window = &window[first..];
        ensure!(
            window.iter().any(|l| l["message"] == "done"),
            "no request line among {window:?}"
        );
        let id = window[0]["requestId"]
            .as_str()
            .context("a line without requestId")?
            .to_owned();
        ensure!(
            window.iter().all(|l| l["requestId"] == id.as_str()),
            "lines of one invocation with other request ids: {window:?}"
        );
        ids.push(id);
    }
    ensure!(
        ids[0] != ids[1],
        "two invocations logged the same request id {}",
        ids[0]
    );
    Ok(())
}
