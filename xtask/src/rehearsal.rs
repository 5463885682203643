//! The deploy rehearsal: `infra/rehearsal/rehearse.py`, run with the SAM CLI's virtual
//! environment first on PATH, so that `infra/deploy.sh` finds the pinned `sam`. What it checks
//! and what only a real AWS account can show is in that script's docs and `infra/README.md`.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, Result, ensure};

use crate::env::{Env, run_step};
use crate::{package, paths};

/// The x86-64 `infer` that `cargo build` / `cargo test` left in the target directory.
fn debug_infer() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| paths::repo_root().join("target"));
    target.join("debug/infer")
}

pub fn run(env: &Env) -> Result<()> {
    let sam = env.sam.as_ref().context("the SAM CLI's environment is not set up")?;
    let infer = debug_infer();
    ensure!(
        infer.exists(),
        "{} is missing: run `cargo build -p infer` first",
        infer.display()
    );
    let zip = package::default_output(package::Arch::Arm64);
    ensure!(
        zip.exists(),
        "{} is missing: run `cargo xtask package` first",
        zip.display()
    );
    let tools = env.tools.as_ref().context("the tools' environment is not set up")?;
    // SAM's venv first (its `sam`), then the tools' (`cargo lambda` for the PreTraffic hook's run).
    let mut path = OsString::from(sam.join("bin"));
    path.push(":");
    path.push(tools.join("bin"));
    if let Some(old) = std::env::var_os("PATH") {
        path.push(":");
        path.push(old);
    }
    let mut cmd = env.command(&sam.join("bin/python").to_string_lossy());
    cmd.env("PATH", path)
        .env("PYTHONUNBUFFERED", "1")
        .arg(paths::repo_root().join("infra/rehearsal/rehearse.py"))
        .arg("--infer")
        .arg(&infer)
        .arg("--package")
        .arg(&zip);
    run_step("deploy rehearsal", &mut cmd)
}
