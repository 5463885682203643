//! Loading the model from `s3://` against a real S3-compatible server (moto, installed into the
//! tools venv by `cargo xtask setup`) started on loopback: serve from S3 and check predictions;
//! a wrong key or a corrupted object stops start-up with a clear message.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::{infer_bin, solid};
use image::ImageFormat;
use infer::testing::TinyModel;
use serde_json::Value;

struct Moto {
    child: Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto() -> Result<Moto> {
    let bin: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.native/tools/bin/moto_server");
    ensure!(bin.exists(), "{} is missing: run `cargo xtask setup`", bin.display());
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = Command::new(&bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("moto_server did not start listening on port {port}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(Moto {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
    })
}

/// Plain S3 REST calls with path-style addressing; moto does not check signatures.
fn put(endpoint: &str, path: &str, body: &[u8]) -> Result<()> {
    ureq::put(&format!("{endpoint}/{path}")).send(body)?;
    Ok(())
}

fn infer_command(endpoint: &str, uri: &str) -> Command {
    let mut command = Command::new(infer_bin());
    command
        .args(["serve", "--addr", "127.0.0.1:0", "--model", uri])
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE");
    command
}

/// Starts `infer serve` on `uri`: the child and the address it listens on, if it did start.
fn serve(endpoint: &str, uri: &str) -> Result<(Child, Result<String>)> {
    let mut child = infer_command(endpoint, uri)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .map(str::to_owned)
        .with_context(|| format!("the server did not start: {line:?}"));
    Ok((child, addr))
}

#[test]
fn serves_a_model_from_s3_and_rejects_wrong_keys_and_corrupted_objects() -> Result<()> {
    let moto = moto()?;
    let model = TinyModel::rgb(32).build();
    put(&moto.endpoint, "models", b"")?;
    put(&moto.endpoint, "models/tiny.onnx", &model)?;
    put(
        &moto.endpoint,
        "models/tiny.onnx.sha256",
        format!("{}  tiny.onnx\n", onnx::checksum::sha256_hex(&model)).as_bytes(),
    )?;

    let (mut child, addr) = serve(&moto.endpoint, "s3://models/tiny.onnx")?;
    let result = (|| -> Result<()> {
        let addr = addr?;
        let png = solid([240, 30, 30], 32, 32, ImageFormat::Png);
        let reply: Value = ureq::post(&format!("http://{addr}/v1/predict"))
            .header("Content-Type", "image/png")
            .send(&png[..])?
            .body_mut()
            .read_json()?;
        assert_eq!(reply["predictions"][0]["label"], "red", "{reply}");
        let info: Value = ureq::get(&format!("http://{addr}/v1/model"))
            .call()?
            .body_mut()
            .read_json()?;
        // The model served is the object's (its sha256), and where it lives is not told.
        assert_eq!(info["sha256"], onnx::checksum::sha256_hex(&model), "{info}");
        assert!(
            info.get("source").is_none(),
            "/v1/model tells where the model lives: {info}"
        );
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    result?;

    // A key that is not there.
    let output = infer_command(&moto.endpoint, "s3://models/absent.onnx").output()?;
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{err}");
    assert!(
        err.contains("s3://models/absent.onnx") && err.contains("absent.onnx is not in bucket models"),
        "{err}"
    );

    // A corrupted object: its sidecar holds the digest of the model as exported. (A new key:
    // moto answers 403 to an unsigned overwrite.)
    let mut corrupted = model.clone();
    corrupted.truncate(model.len() - 7);
    put(&moto.endpoint, "models/bad.onnx", &corrupted)?;
    put(
        &moto.endpoint,
        "models/bad.onnx.sha256",
        format!("{}  bad.onnx\n", onnx::checksum::sha256_hex(&model)).as_bytes(),
    )?;
    let output = infer_command(&moto.endpoint, "s3://models/bad.onnx").output()?;
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{err}");
    assert!(err.contains("s3://models/bad.onnx is corrupted"), "{err}");

    // No sidecar at all (S3 answers 404 for it): the model is served, unverified.
    put(&moto.endpoint, "models/plain.onnx", &model)?;
    let (mut child, addr) = serve(&moto.endpoint, "s3://models/plain.onnx")?;
    let _ = child.kill();
    let _ = child.wait();
    addr?;
    Ok(())
}
