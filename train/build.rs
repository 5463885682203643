//! Gives binaries and test binaries an rpath to libtorch: torch-sys links it but sets none on the
//! final binary. Also the build script of `scratch` and `e2e` (their `package.build`).
//!
//! For `train` itself it also records the git commit the crate is built from, as
//! `TRAIN_GIT_COMMIT` (see `export::provenance`): an export names the code that made it, not
//! whatever repository the command happens to run in.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What the `train` binary is built from, relative to its manifest: a difference from the
/// commit in any of them marks the commit `-dirty`, and a change to any reruns this script.
const SOURCES: &[&str] = &[
    "src",
    "build.rs",
    "Cargo.toml",
    "../onnx",
    "../Cargo.toml",
    "../Cargo.lock",
];

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Some(dir) = std::env::var_os("LIBTORCH") {
        let lib = Path::new(&dir).join("lib");
        let lib = std::fs::canonicalize(&lib).unwrap_or(lib);
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
    if std::env::var("CARGO_PKG_NAME").as_deref() == Ok("train") {
        record_commit();
    }
}

/// `git` in `dir`, its trimmed standard output when it succeeds.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git").arg("-C").arg(dir).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8(out.stdout).ok()?.trim().to_owned())
}

fn record_commit() {
    let Some(manifest) = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from) else {
        return;
    };
    for source in SOURCES {
        println!("cargo:rerun-if-changed={source}");
    }
    // Outside a git checkout (a source archive) or without git, the commit is unknown: empty,
    // which provenance reads as none, rather than a failed build.
    let commit = git(&manifest, &["rev-parse", "--verify", "HEAD"]).unwrap_or_default();
    if !commit.is_empty() {
        // What moves HEAD: the HEAD file (a checkout), the branch's ref (a commit), the packed
        // refs, and the reflog, which git appends to on every move. Only existing files are
        // watched: cargo reruns a script on every build for a path that does not exist.
        let git_dir = git(&manifest, &["rev-parse", "--absolute-git-dir"]).map(PathBuf::from);
        let common = git(&manifest, &["rev-parse", "--git-common-dir"]).map(|d| manifest.join(d));
        let branch = git(&manifest, &["symbolic-ref", "-q", "HEAD"]);
        let mut watched = Vec::new();
        if let Some(git_dir) = &git_dir {
            watched.push(git_dir.join("HEAD"));
            watched.push(git_dir.join("logs/HEAD"));
        }
        if let Some(common) = &common {
            watched.push(common.join("packed-refs"));
            if let Some(branch) = &branch {
                watched.push(common.join(branch));
            }
        }
        for path in watched.iter().filter(|p| p.exists()) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    let dirty = !commit.is_empty() && {
        let mut args = vec!["diff", "--quiet", "HEAD", "--"];
        args.extend_from_slice(SOURCES);
        // `git diff --quiet` exits 1 for a difference; any other failure says nothing either way.
        Command::new("git")
            .arg("-C")
            .arg(&manifest)
            .args(&args)
            .status()
            .is_ok_and(|s| s.code() == Some(1))
    };
    let recorded = if dirty { format!("{commit}-dirty") } else { commit };
    println!("cargo:rustc-env=TRAIN_GIT_COMMIT={recorded}");
}
