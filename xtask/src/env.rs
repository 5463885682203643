//! What every task starts from: the set-up (native runtimes, tools) and the environment its
//! commands run in.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::{debian, native, paths, tools};

/// What set-up produced; every task runs its commands with this environment.
#[derive(Debug)]
pub struct Env {
    pub libtorch: Option<PathBuf>,
    pub ort_dir: PathBuf,
    pub tools: Option<PathBuf>,
    /// The SAM CLI's virtual environment (the deploy rehearsal's).
    pub sam: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// ONNX Runtime only: serving.
    Serve,
    /// Everything: libtorch, ONNX Runtime for both architectures, tools and targets.
    All,
}

pub fn prepare(needs: Needs) -> Result<Env> {
    let started = Instant::now();
    let cache = paths::cache_dir()?;
    let link = paths::native_link();
    std::fs::create_dir_all(&link).with_context(|| format!("creating {}", link.display()))?;

    let ort_dir = native::onnxruntime(&cache)?;
    relink(&ort_dir, &link.join("onnxruntime"))?;

    let (mut libtorch, mut tools_dir, mut sam_dir) = (None, None, None);
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
        let sam = tools::sam_venv(&cache)?;
        relink(&sam, &link.join("sam"))?;
        sam_dir = Some(sam);
        tools::rust_target("aarch64-unknown-linux-gnu")?;
        debian::ensure(tools::ARM64_DEBIAN_PACKAGES)?;
        tools::chromium()?;
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
        sam: sam_dir,
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
