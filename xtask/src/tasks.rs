//! The commands themselves.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::{arm64_run, debian, lint, native, package, paths, tools};

/// What set-up produced; every task runs its commands with this environment.
#[derive(Debug)]
pub struct Env {
    pub libtorch: Option<PathBuf>,
    pub ort_dir: PathBuf,
    pub tools: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// ONNX Runtime only: serving.
    Serve,
    /// Everything: libtorch, ONNX Runtime for both architectures, tools and targets.
    All,
}

pub fn setup() -> Result<Env> {
    prepare(Needs::All)
}

pub fn prepare(needs: Needs) -> Result<Env> {
    let started = Instant::now();
    let cache = paths::cache_dir()?;
    let link = paths::native_link();
    std::fs::create_dir_all(&link).with_context(|| format!("creating {}", link.display()))?;

    let ort_dir = native::onnxruntime(&cache)?;
    relink(&ort_dir, &link.join("onnxruntime"))?;

    let (mut libtorch, mut tools_dir) = (None, None);
    if needs == Needs::All {
        let ours = link.join("libtorch");
        match std::env::var_os("LIBTORCH").map(PathBuf::from) {
            // cargo's [env] hands every process our own link; anything else is the user's.
            Some(user) if user != ours => {
                eprintln!("xtask: using your LIBTORCH={}", user.display());
                libtorch = Some(user);
            }
            _ => {
                let dir = native::libtorch(&cache)?;
                relink(&dir, &ours)?;
                libtorch = Some(ours);
            }
        }
        let venv = tools::venv(&cache)?;
        relink(&venv, &link.join("tools"))?;
        tools_dir = Some(venv);
        tools::rust_target("aarch64-unknown-linux-gnu")?;
        debian::ensure(arm64_run::DEBIAN_PACKAGES)?;
    }
    eprintln!(
        "xtask: set-up ready in {:.1?} (cache {})",
        started.elapsed(),
        cache.display()
    );
    Ok(Env {
        libtorch,
        ort_dir,
        tools: tools_dir,
    })
}

/// Points the symlink `link` at `target`, replacing whatever was there.
fn relink(target: &Path, link: &Path) -> Result<()> {
    if std::fs::read_link(link).is_ok_and(|t| t == target) {
        return Ok(());
    }
    if link.symlink_metadata().is_ok() {
        std::fs::remove_file(link).with_context(|| format!("replacing {}", link.display()))?;
    }
    std::os::unix::fs::symlink(target, link).with_context(|| format!("linking {}", link.display()))
}

impl Env {
    /// Tells the user where everything is, for use outside cargo (an IDE, a plain shell).
    pub fn print(&self) {
        if let Some(dir) = &self.libtorch {
            println!("LIBTORCH={}", dir.display());
        }
        println!(
            "ORT_DYLIB_PATH={}",
            self.ort_dir.join("x86_64/libonnxruntime.so").display()
        );
        if let Some(dir) = &self.tools {
            println!("tools: {}", dir.join("bin").display());
        }
    }

    /// A command run from the repository root with the tools first on PATH.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(paths::repo_root());
        if let Some(tools) = &self.tools {
            let mut path = OsString::from(tools.join("bin"));
            if let Some(old) = std::env::var_os("PATH") {
                path.push(":");
                path.push(old);
            }
            cmd.env("PATH", path);
        }
        cmd
    }
}

pub fn run_step(name: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: == {name} ==");
    let started = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("{name}: could not start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{name} failed ({status})");
    }
    eprintln!("xtask: {name} passed in {:.1?}", started.elapsed());
    Ok(())
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
    arm64_run::run(&env)
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
