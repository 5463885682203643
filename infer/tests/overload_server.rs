//! The `infer` binary under hostile load, on a loopback port: a V2 body of ~6 MB of zeros keeps
//! the server's peak memory within a small multiple of the body, shutdown's grace period answers
//! every request still waiting with 503 instead of cutting it off, and bad flag values stop
//! start-up, naming the flag, before the model is even looked at.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::infer_bin;
use common::server::start;
use infer::testing::slow::SlowModel;
use infer::testing::{TinyModel, write_with_sidecar};

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

/// One HTTP/1.1 request on its own connection; the status line and the rest of the answer.
fn exchange(addr: &str, head: &str, body: &[u8]) -> Result<(String, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        stream,
        "{head}\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let (status, rest) = answer.split_once("\r\n").unwrap_or((&answer, ""));
    Ok((status.to_owned(), rest.to_owned()))
}

#[test]
fn a_v2_body_of_zeros_keeps_peak_memory_bounded() -> Result<()> {
    // ~6 MB of `0,` is 3 million numbers: a `serde_json::Value` tree of them took over 100 MB.
    // Read flat, and no more kept than a request may carry, what is left is the body and the
    // copy it is collected into, in whichever threads' malloc arenas: 2.5 to 4 bodies measured,
    // the bound is six.
    const BODY: usize = 6_000_000;
    const BOUND: u64 = 6 * BODY as u64;
    let dir = tempfile::tempdir()?;
    let model = write_with_sidecar(dir.path(), "tiny.onnx", &TinyModel::rgb(32).build())?;
    let server = start(&model, &["--max-body-bytes", "6291456"])?;
    let head = r#"{"inputs":[{"name":"input","shape":[1,3,32,32],"datatype":"FP32","data":["#;
    let mut body = String::with_capacity(BODY + 64);
    body.push_str(head);
    while body.len() < BODY {
        body.push_str("0,");
    }
    body.push_str("0]}]}");
    // 2,999,965 numbers: the header, then `0,` up to the size, then the last `0`.
    // A small request first, so that the baseline includes what any request costs.
    let (status, _) = exchange(&server.addr, "GET /readyz HTTP/1.1", b"")?;
    ensure!(status.contains("200"), "{status}");
    let before = peak_rss_bytes(server.child.id())?;
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(exchange(
            &server.addr,
            "POST /v2/models/tiny/infer HTTP/1.1\r\nContent-Type: application/json",
            body.as_bytes(),
        )?);
    }
    let grown = peak_rss_bytes(server.child.id())?.saturating_sub(before);
    eprintln!("peak RSS grew by {grown} bytes for a {} byte V2 body", body.len());
    assert!(
        grown < BOUND,
        "peak RSS grew by {grown} bytes for a {} byte V2 body of zeros; the bound is {BOUND}",
        body.len()
    );
    for (status, rest) in answers {
        // Refused: more elements than the shape says, in the protocol's error JSON.
        assert!(status.contains("422"), "{status} {rest}");
        assert!(
            rest.contains("has 2999965 elements; shape [1, 3, 32, 32] needs 3072"),
            "{rest}"
        );
    }
    Ok(())
}

#[test]
fn after_the_grace_period_requests_still_waiting_are_answered_503() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let model = write_with_sidecar(dir.path(), "slow.onnx", &SlowModel::new().build())?;
    let mut server = start(
        &model,
        &[
            "--max-batch",
            "1",
            "--deadline-ms",
            "120000",
            "--shutdown-grace-ms",
            "100",
            "--no-cache",
        ],
    )?;
    let png = common::solid([250, 10, 10], 32, 32, image::ImageFormat::Png);
    let addr = server.addr.clone();
    // Eight requests queue behind one model that runs them one by one.
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (addr, png) = (addr.clone(), png.clone());
            std::thread::spawn(move || exchange(&addr, "POST /v1/predict HTTP/1.1\r\nContent-Type: image/png", &png))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let sent = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()?;
    ensure!(status.success(), "kill -TERM failed");
    let mut answers = Vec::new();
    for client in clients {
        answers.push(client.join().map_err(|_| anyhow::anyhow!("client panicked"))??);
    }
    // Every client got an answer: a 200, or 503 `shutting_down` in the error JSON.
    let mut drained = 0;
    for (status, rest) in &answers {
        if status.contains("503") {
            assert!(rest.contains("\"code\":\"shutting_down\""), "{rest}");
            assert!(rest.to_ascii_lowercase().contains("retry-after: 1"), "{rest}");
            drained += 1;
        } else {
            assert!(status.contains("200"), "{status} {rest}");
        }
    }
    assert!(drained > 0, "{answers:?}");
    let exit = loop {
        if let Some(exit) = server.child.try_wait()? {
            break exit;
        }
        ensure!(
            sent.elapsed() < Duration::from_secs(20),
            "the server did not exit after its grace period"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit}");
    Ok(())
}

#[test]
fn bad_flag_values_stop_start_up_naming_the_flag_before_the_model_loads() -> Result<()> {
    for (flag, value) in [
        ("--batch-wait-ms", "1e300"),
        ("--batch-wait-ms", "18446744073709551615"),
        ("--max-batch", "0"),
        ("--max-in-flight", "0"),
        ("--max-queue", "0"),
        ("--deadline-ms", "0"),
        ("--max-images", "0"),
        ("--max-decoding", "0"),
        ("--max-side", "0"),
    ] {
        // A model that does not exist: an error about it would mean the flags were read too late.
        let output = Command::new(infer_bin())
            .args([
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--model",
                "/nonexistent/model.onnx",
                flag,
                value,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()?;
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{flag} {value} was accepted");
        assert_eq!(output.status.code(), Some(2), "{flag} {value}: {err}");
        assert!(err.contains(flag) && err.contains(value), "{flag} {value}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("nonexistent"),
            "{flag} {value}: {err}"
        );
    }
    Ok(())
}
