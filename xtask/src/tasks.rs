//! The commands themselves.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::env::{Env, Needs, prepare, run_step};
use crate::{arm64_run, lint, package, paths, rehearsal};

pub fn setup() -> Result<Env> {
    prepare(Needs::All)
}

pub fn test() -> Result<()> {
    let env = prepare(Needs::All)?;
    run_step("rustfmt", env.command("cargo").args(["fmt", "--all", "--check"]))?;
    run_step(
        "clippy",
        env.command("cargo").args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    // `cargo lambda watch` (in the Lambda tests) builds the function on its own, with `infer`'s
    // features alone rather than the workspace's union: build that once here, in the open, so
    // no test spends its deadline compiling.
    run_step(
        "function build for cargo lambda watch",
        env.command("cargo").args(["build", "--package", "infer", "--locked"]),
    )?;
    run_step("tests", env.command("cargo").args(["test", "--workspace", "--locked"]))?;
    lint::run(&env)?;
    // No --model: `infer` embeds models/ at build time, and S3 mode needs none in the zip.
    let arch = package::Arch::Arm64;
    package::package(&env, arch, None, &package::default_output(arch))?;
    rehearsal::run(&env)?;
    arm64_run::run(&env)
}

pub fn rehearse() -> Result<()> {
    rehearsal::run(&prepare(Needs::All)?)
}

pub fn rehearse_arm64() -> Result<()> {
    arm64_run::run(&prepare(Needs::All)?)
}

pub fn lint() -> Result<()> {
    lint::run(&prepare(Needs::All)?)
}

pub fn package(arch: package::Arch, model: Option<&Path>, out: Option<PathBuf>) -> Result<()> {
    let env = prepare(Needs::All)?;
    package::package(&env, arch, model, &out.unwrap_or_else(|| package::default_output(arch)))?;
    Ok(())
}

pub fn serve(args: &[String]) -> Result<()> {
    let env = prepare(Needs::Serve)?;
    let mut cmd = env.command("cargo");
    cmd.args(["run", "--release", "--locked", "--package", "infer", "--", "serve"])
        .args(args);
    // A real photo to try, where the shared data sits beside the checkout; any image will do.
    let photo = paths::repo_root().join("../shared/data/images/road-solidWhiteRight.jpg");
    let photo = match photo.canonicalize() {
        Ok(path) => path.display().to_string(),
        Err(_) => "photo.jpg".to_owned(),
    };
    eprintln!(
        "xtask: once it says `listening`, classify a photo with:\n  \
         curl --data-binary @{photo} -H 'content-type: image/jpeg' 'http://127.0.0.1:8080/v1/predict?top_k=3'"
    );
    run_step("infer serve", &mut cmd)
}
