//! Loading the model from `s3://` against a real S3-compatible server (moto, installed into the
//! tools venv by `cargo xtask setup`) started on loopback: serve from S3 and check predictions;
//! a wrong key or a corrupted object stops start-up with a clear message.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};
use common::{infer_bin, solid};
use image::ImageFormat;
use infer::testing::TinyModel;
use infer::testing::moto::Moto;
use serde_json::Value;

fn infer_command(moto: &Moto, uri: &str) -> Command {
    let mut command = Command::new(infer_bin());
    command
        .args(["serve", "--addr", "127.0.0.1:0", "--model", uri])
        .envs(moto.aws_env())
        .env_remove("AWS_PROFILE");
    command
}

/// Starts `infer serve` on `uri`: the child and the address it listens on, if it did start.
fn serve(moto: &Moto, uri: &str) -> Result<(Child, Result<String>)> {
    let mut child = infer_command(moto, uri)
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
    let moto = Moto::start()?;
    let model = TinyModel::rgb(32).build();
    moto.create_bucket("models")?;
    moto.put("models/tiny.onnx", &model)?;
    moto.put(
        "models/tiny.onnx.sha256",
        format!("{}  tiny.onnx\n", onnx::checksum::sha256_hex(&model)).as_bytes(),
    )?;

    let (mut child, addr) = serve(&moto, "s3://models/tiny.onnx")?;
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
    let output = infer_command(&moto, "s3://models/absent.onnx").output()?;
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
    moto.put("models/bad.onnx", &corrupted)?;
    moto.put(
        "models/bad.onnx.sha256",
        format!("{}  bad.onnx\n", onnx::checksum::sha256_hex(&model)).as_bytes(),
    )?;
    let output = infer_command(&moto, "s3://models/bad.onnx").output()?;
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{err}");
    assert!(err.contains("s3://models/bad.onnx is corrupted"), "{err}");

    // No sidecar at all (S3 answers 404 for it): the model is served, unverified.
    moto.put("models/plain.onnx", &model)?;
    let (mut child, addr) = serve(&moto, "s3://models/plain.onnx")?;
    let _ = child.kill();
    let _ = child.wait();
    addr?;
    Ok(())
}
