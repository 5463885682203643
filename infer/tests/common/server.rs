//! A real `infer serve` on a loopback port, and the tools that tests drive it with.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, ensure};

/// A running `infer serve`, killed on drop.
#[derive(Debug)]
pub struct Server {
    pub child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `infer serve` on a free loopback port with `model` and waits until it listens.
pub fn start(model: &Path, extra: &[&str]) -> Result<Server> {
    let mut child = Command::new(super::infer_bin())
        .args(["serve", "--addr", "127.0.0.1:0", "--model"])
        .arg(model)
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting infer serve")?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .with_context(|| format!("unexpected first line {line:?}"))?
        .to_owned();
    Ok(Server { child, addr })
}

/// The tools venv's python (`cargo xtask setup` installs it, with `tritonclient`).
pub fn tools_python() -> Result<PathBuf> {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.native/tools/bin/python");
    ensure!(
        python.exists(),
        "{} is missing: run `cargo xtask setup`",
        python.display()
    );
    Ok(python)
}
