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
    /// cargo-machete's install root (the dependency check's).
    pub machete: Option<PathBuf>,
}

/// What a task needs set up; each task asks for its own parts, so that `lint` does not fetch
/// libtorch and `serve` installs no tools.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// libtorch, for building and testing `train`, `scratch` and the end-to-end tests.
    pub libtorch: bool,
    /// ONNX Runtime for aarch64 (the Lambda package); x86-64's is always set up.
    pub ort_aarch64: bool,
    /// The tools' virtual environment (cargo-lambda, zig, the linters, moto, tritonclient).
    pub tools: bool,
    /// The SAM CLI's virtual environment (the deploy rehearsal).
    pub sam: bool,
    /// The aarch64 Rust target (cross-building the package).
    pub rust_aarch64: bool,
    /// qemu-user and the aarch64 C and C++ runtimes (running the package).
    pub arm64_run: bool,
    /// A Chromium (infer's page test).
    pub chromium: bool,
    /// cargo-machete (the unused-dependency check).
    pub machete: bool,
}

impl Needs {
    /// ONNX Runtime for this machine only: serving.
    pub const SERVE: Self = Self {
        libtorch: false,
        ort_aarch64: false,
        tools: false,
        sam: false,
        rust_aarch64: false,
        arm64_run: false,
        chromium: false,
        machete: false,
    };
    pub const ALL: Self = Self {
        libtorch: true,
        ort_aarch64: true,
        tools: true,
        sam: true,
        rust_aarch64: true,
        arm64_run: true,
        chromium: true,
        machete: true,
    };

    /// Everything either needs.
    pub const fn and(self, other: Self) -> Self {
        Self {
            libtorch: self.libtorch || other.libtorch,
            ort_aarch64: self.ort_aarch64 || other.ort_aarch64,
            tools: self.tools || other.tools,
            sam: self.sam || other.sam,
            rust_aarch64: self.rust_aarch64 || other.rust_aarch64,
            arm64_run: self.arm64_run || other.arm64_run,
            chromium: self.chromium || other.chromium,
            machete: self.machete || other.machete,
        }
    }
}

pub fn prepare(needs: Needs) -> Result<Env> {
    let started = Instant::now();
    let cache = paths::cache_dir()?;
    let link = paths::native_link();
    std::fs::create_dir_all(&link).with_context(|| format!("creating {}", link.display()))?;

    let ort_dir = native::onnxruntime(&cache, needs.ort_aarch64)?;
    relink(&ort_dir, &link.join("onnxruntime"))?;

    let mut libtorch = None;
    if needs.libtorch {
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
    }
    let tools_dir = if needs.tools {
        let venv = tools::venv(&cache)?;
        relink(&venv, &link.join("tools"))?;
        Some(venv)
    } else {
        None
    };
    let sam_dir = if needs.sam {
        let sam = tools::sam_venv(&cache)?;
        relink(&sam, &link.join("sam"))?;
        Some(sam)
    } else {
        None
    };
    if needs.rust_aarch64 {
        tools::rust_target("aarch64-unknown-linux-gnu")?;
    }
    if needs.arm64_run {
        debian::ensure(tools::ARM64_DEBIAN_PACKAGES)?;
    }
    if needs.chromium {
        tools::chromium()?;
    }
    let machete = if needs.machete {
        Some(tools::cargo_tool(&cache, tools::CARGO_MACHETE)?)
    } else {
        None
    };
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
        machete,
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
        let ours: Vec<PathBuf> = [&self.tools, &self.machete]
            .into_iter()
            .flatten()
            .map(|dir| dir.join("bin"))
            .collect();
        if !ours.is_empty() {
            let old = std::env::var_os("PATH").unwrap_or_default();
            let mut path = OsString::new();
            for dir in ours {
                path.push(dir);
                path.push(":");
            }
            path.push(old);
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
