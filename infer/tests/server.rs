//! The `infer` binary as a real server on a loopback port, hit by a real HTTP client; SIGTERM
//! while a request is in flight lets that request finish; a bad model stops start-up with a
//! message naming the file; `infer predict` classifies files.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::server::start;
use common::{infer_bin, solid};
use image::ImageFormat;
use infer::testing::{TinyModel, write_with_sidecar};
use serde_json::Value;

fn model_dir() -> Result<(tempfile::TempDir, std::path::PathBuf)> {
    let dir = tempfile::tempdir()?;
    let path = write_with_sidecar(dir.path(), "tiny.onnx", &TinyModel::rgb(32).build())?;
    Ok((dir, path))
}

fn sigterm(child: &Child) -> Result<()> {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status()?;
    ensure!(status.success(), "kill -TERM failed");
    Ok(())
}

fn wait_exit(child: &mut Child, within: Duration) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            bail!("the server did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn serves_over_http_and_finishes_the_request_in_flight_on_sigterm() -> Result<()> {
    let (_dir, model) = model_dir()?;
    let mut server = start(&model, &[])?;
    let url = format!("http://{}", server.addr);

    // A real HTTP client.
    let png = solid([10, 10, 250], 32, 32, ImageFormat::Png);
    let reply: Value = ureq::post(&format!("{url}/v1/predict?top_k=2"))
        .header("Content-Type", "image/png")
        .send(&png[..])?
        .body_mut()
        .read_json()?;
    assert_eq!(reply["predictions"][0]["label"], "blue", "{reply}");
    assert_eq!(reply["model"]["name"], "tiny");
    let ready: Value = ureq::get(&format!("{url}/v2/health/ready"))
        .call()?
        .body_mut()
        .read_json()?;
    assert_eq!(ready["ready"], true);
    // The digest checked against the sidecar is the one the API reports.
    let info: Value = ureq::get(&format!("{url}/v1/model")).call()?.body_mut().read_json()?;
    let digest = onnx::checksum::sha256_hex(&std::fs::read(&model)?);
    assert_eq!(info["sha256"], digest.as_str());
    assert_eq!(info["version"], &digest[..12]);

    // Start a request and leave its body half-sent, then SIGTERM the server.
    let body = solid([250, 10, 10], 32, 32, ImageFormat::Png);
    let mut stream = TcpStream::connect(&server.addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "POST /v1/predict HTTP/1.1\r\nHost: {}\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n",
        server.addr,
        body.len()
    )?;
    let half = body.len() / 2;
    stream.write_all(&body[..half])?;
    stream.flush()?;
    std::thread::sleep(Duration::from_millis(200));
    sigterm(&server.child)?;
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        server.child.try_wait()?.is_none(),
        "the server exited with a request in flight"
    );
    stream.write_all(&body[half..])?;
    stream.flush()?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"label\":\"red\""), "{response}");

    let status = wait_exit(&mut server.child, Duration::from_secs(10))?;
    assert!(status.success(), "exit status {status}");
    // Nothing listens any more.
    assert!(TcpStream::connect(&server.addr).is_err());
    Ok(())
}

fn start_failure(model_arg: Option<&str>) -> Result<String> {
    let mut command = Command::new(infer_bin());
    command.args(["serve", "--addr", "127.0.0.1:0"]).env_remove("MODEL_URI");
    if let Some(model) = model_arg {
        command.args(["--model", model]);
    }
    let output = command.stdout(Stdio::null()).stderr(Stdio::piped()).output()?;
    ensure!(!output.status.success(), "start-up should have failed");
    Ok(String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn a_bad_model_stops_start_up_naming_the_file_and_reason() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let good = TinyModel::rgb(32).build();

    // Corrupted after export: the sidecar no longer matches.
    let corrupted = write_with_sidecar(dir.path(), "corrupted.onnx", &good)?;
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x55;
    std::fs::write(&corrupted, &flipped)?;
    let err = start_failure(corrupted.to_str())?;
    assert!(
        err.contains("corrupted.onnx is corrupted") && err.contains("sha256"),
        "{err}"
    );

    // Not an ONNX file at all.
    let garbage = dir.path().join("garbage.onnx");
    std::fs::write(&garbage, b"definitely not protobuf \xff\xff\xff")?;
    let err = start_failure(garbage.to_str())?;
    assert!(err.contains("garbage.onnx could not be loaded"), "{err}");

    // Incompatible: a fixed 3-class output but labels for two.
    let labelled = write_with_sidecar(
        dir.path(),
        "foreign.onnx",
        &TinyModel {
            with_metadata: false,
            ..TinyModel::rgb(32)
        }
        .build(),
    )?;
    let output = Command::new(infer_bin())
        .args(["serve", "--addr", "127.0.0.1:0", "--labels", "a,b", "--model"])
        .arg(&labelled)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && err.contains("foreign.onnx is incompatible") && err.contains("3 classes"),
        "{err}"
    );

    // No ONNX Runtime library where ORT_DYLIB_PATH points: said once, with where it came from.
    let output = Command::new(infer_bin())
        .args(["serve", "--addr", "127.0.0.1:0", "--no-cache", "--model"])
        .arg(&labelled)
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success()
            && err.contains(
                "/nonexistent/libonnxruntime.so does not exist (from the ORT_DYLIB_PATH environment variable)"
            )
            && !err.contains("loading ONNX Runtime from"),
        "{err}"
    );

    let err = start_failure(Some(&dir.path().join("missing.onnx").display().to_string()))?;
    assert!(err.contains("missing.onnx") && err.contains("No such file"), "{err}");

    if !infer::source::HAS_BUNDLED_MODEL {
        let err = start_failure(None)?;
        assert!(err.contains("no model is bundled") && err.contains("--model"), "{err}");
    }
    Ok(())
}

#[test]
fn a_foreign_model_is_served_with_flags() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let model = write_with_sidecar(
        dir.path(),
        "foreign.onnx",
        &TinyModel {
            with_metadata: false,
            ..TinyModel::rgb(32)
        }
        .build(),
    )?;
    let server = start(
        &model,
        &[
            "--labels",
            "rouge,vert,bleu",
            "--mean",
            "0.5,0.5,0.5",
            "--std",
            "0.25,0.25,0.25",
        ],
    )?;
    let png = solid([5, 240, 5], 50, 50, ImageFormat::Png);
    let reply: Value = ureq::post(&format!("http://{}/v1/predict", server.addr))
        .header("Content-Type", "image/png")
        .send(&png[..])?
        .body_mut()
        .read_json()?;
    assert_eq!(reply["predictions"][0]["label"], "vert", "{reply}");
    Ok(())
}

#[test]
fn predict_classifies_files_offline() -> Result<()> {
    let (dir, model) = model_dir()?;
    let red = dir.path().join("red.jpg");
    let blue = dir.path().join("blue.png");
    std::fs::write(&red, solid([240, 20, 20], 64, 64, ImageFormat::Jpeg))?;
    std::fs::write(&blue, solid([20, 20, 240], 8, 8, ImageFormat::Png))?;
    let output = Command::new(infer_bin())
        .arg("predict")
        .args([&red, &blue])
        .arg("--model")
        .arg(&model)
        .arg("--json")
        .output()?;
    ensure!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let reply: Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(reply["predictions"][0]["top_k"][0]["label"], "red", "{reply}");
    assert_eq!(reply["predictions"][1]["top_k"][0]["label"], "blue", "{reply}");

    let output = Command::new(infer_bin())
        .arg("predict")
        .arg(&blue)
        .arg("--model")
        .arg(&model)
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("blue.png: blue ("), "{text}");
    Ok(())
}

/// ONNX Runtime 1.31 keeps a telemetry device id and event database under the home directory
/// unless told not to; `infer` tells it not to. CI variables would also silence it, so they
/// are removed for the child.
#[test]
fn a_start_leaves_nothing_of_onnx_runtime_telemetry_in_the_home_directory() -> Result<()> {
    let (dir, model) = model_dir()?;
    let image = dir.path().join("red.png");
    std::fs::write(&image, solid([240, 20, 20], 8, 8, ImageFormat::Png))?;
    let home = dir.path().join("home");
    std::fs::create_dir(&home)?;
    let mut command = Command::new(infer_bin());
    command
        .arg("predict")
        .arg(&image)
        .arg("--model")
        .arg(&model)
        .arg("--no-cache")
        .env("HOME", &home)
        .env_remove("XDG_CACHE_HOME")
        .env_remove(infer::runtime::TELEMETRY_VARIABLE);
    for ci in ["CI", "GITHUB_ACTIONS", "TF_BUILD", "GITLAB_CI", "CIRCLECI"] {
        command.env_remove(ci);
    }
    let output = command.output()?;
    ensure!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let left: Vec<_> = walk(&home)?;
    assert!(left.is_empty(), "the start wrote {left:?}");
    Ok(())
}

fn walk(dir: &std::path::Path) -> Result<Vec<std::path::PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            found.extend(walk(&path)?);
        }
        found.push(path);
    }
    Ok(found)
}

#[test]
fn a_second_start_loads_the_optimised_graph_from_the_cache_dir() -> Result<()> {
    let (dir, model) = model_dir()?;
    let image = dir.path().join("green.png");
    std::fs::write(&image, solid([20, 230, 20], 8, 8, ImageFormat::Png))?;
    let cache = dir.path().join("graph-cache");
    let run = || {
        Command::new(infer_bin())
            .arg("predict")
            .arg(&image)
            .arg("--model")
            .arg(&model)
            .arg("--cache-dir")
            .arg(&cache)
            .env("RUST_LOG", "info")
            .output()
    };
    let (first, second) = (run()?, run()?);
    for out in [&first, &second] {
        ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(String::from_utf8_lossy(&first.stderr).contains("graph_cache=Stored"));
    assert!(String::from_utf8_lossy(&second.stderr).contains("graph_cache=Hit"));
    assert_eq!(first.stdout, second.stdout);
    assert!(String::from_utf8_lossy(&second.stdout).contains("green.png: green ("));

    let off = Command::new(infer_bin())
        .arg("predict")
        .arg(&image)
        .arg("--model")
        .arg(&model)
        .args(["--no-cache"])
        .env("RUST_LOG", "info")
        .output()?;
    assert!(String::from_utf8_lossy(&off.stderr).contains("graph_cache=Off"));
    assert_eq!(off.stdout, first.stdout);
    Ok(())
}

fn peak_rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .context("VmHWM in /proc/PID/status")?
        .trim()
        .parse()?;
    Ok(kib * 1024)
}

#[test]
fn concurrent_large_images_are_decoded_a_few_at_a_time() -> Result<()> {
    // Each 1536x1536 image decodes to 6.75 MiB of RGB from a JPEG of a few KiB, and decoding
    // one takes about 2.5 times that (the decoder's planes too): six at once grow the peak by
    // ~7x, one at a time by ~2.5x. (Small enough for the unoptimised test build of the resize.)
    const SIDE: u32 = 1536;
    const CLIENTS: usize = 6;
    let decoded = u64::from(SIDE * SIDE * 3);
    let jpeg = solid([10, 240, 10], SIDE, SIDE, ImageFormat::Jpeg);
    let (_dir, model) = model_dir()?;
    let server = start(&model, &["--max-decoding", "1", "--intra-op-spinning", "false"])?;
    let url = format!("http://{}/v1/predict", server.addr);
    ureq::post(&url)
        .header("Content-Type", "image/png")
        .send(&solid([0, 0, 250], 8, 8, ImageFormat::Png)[..])?;
    let before = peak_rss_bytes(server.child.id())?;

    let labels = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                scope.spawn(|| -> Result<String> {
                    let reply: Value = ureq::post(&url)
                        .header("Content-Type", "image/jpeg")
                        .send(&jpeg[..])?
                        .body_mut()
                        .read_json()?;
                    Ok(reply["predictions"][0]["label"].to_string())
                })
            })
            .collect();
        clients
            .into_iter()
            .map(|c| c.join().map_err(|_| anyhow::anyhow!("client thread panicked"))?)
            .collect::<Result<Vec<_>>>()
    })?;
    assert!(labels.iter().all(|l| l == "\"green\""), "{labels:?}");
    let grown = peak_rss_bytes(server.child.id())?.saturating_sub(before);
    assert!(
        grown < 4 * decoded,
        "peak RSS grew by {grown} bytes for {CLIENTS} concurrent {SIDE}x{SIDE} images, limit {}",
        4 * decoded
    );
    Ok(())
}

/// What a first start prints with the default log filter (`RUST_LOG` unset): no warning when
/// nothing needs action (ONNX Runtime's note that a stored optimised graph is hardware-specific
/// is handled by the graph cache's key), and durations to the microsecond, without float noise.
#[test]
fn a_first_start_warns_of_nothing_and_logs_rounded_durations() -> Result<()> {
    use std::io::{BufRead, BufReader};

    let (dir, model) = model_dir()?;
    let mut child = Command::new(infer_bin())
        .args(["serve", "--addr", "127.0.0.1:0", "--model"])
        .arg(&model)
        .arg("--cache-dir")
        .arg(dir.path().join("graph-cache"))
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    // A request or two, so that their "done" lines are among those checked.
    let url = line.trim().strip_prefix("listening on ").map(str::to_owned);
    if let Some(url) = &url {
        let png = solid([10, 10, 250], 32, 32, ImageFormat::Png);
        ureq::post(&format!("{url}/v1/predict"))
            .header("Content-Type", "image/png")
            .send(&png[..])?;
        ureq::get(&format!("{url}/healthz")).call()?;
    }
    sigterm(&child)?;
    let mut log = String::new();
    child.stderr.take().context("stderr")?.read_to_string(&mut log)?;
    child.wait()?;
    ensure!(url.is_some(), "{line:?}: {log}");
    assert!(log.contains("graph_cache=Stored"), "{log}");
    let done = log
        .lines()
        .filter(|l| l.contains(" done ") && l.contains("ms="))
        .count();
    assert_eq!(done, 2, "a done line with its duration per request: {log}");
    for line in log.lines() {
        assert!(!line.contains(" WARN "), "a warning on a first start: {line}");
        for value in line
            .split_whitespace()
            .filter_map(|w| w.split_once("ms=").map(|(_, v)| v))
        {
            let decimals = value.split_once('.').map_or(0, |(_, d)| d.len());
            assert!(
                value.parse::<f64>().is_ok() && decimals <= 3,
                "not a duration to the microsecond: {value} in {line}"
            );
        }
    }
    Ok(())
}
