//! The commands themselves.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::env::{Env, Needs, prepare, run_step};
use crate::{arm64_run, lint, package, paths, rehearsal};

pub fn setup() -> Result<Env> {
    prepare(Needs::ALL)
}

/// One step of `cargo xtask test`: its name on the command line, what it needs set up, and
/// what it runs.
#[derive(Debug)]
pub struct Step {
    pub name: &'static str,
    pub about: &'static str,
    needs: Needs,
    run: fn(&Env) -> Result<()>,
}

const NOTHING: Needs = Needs::SERVE;
const TOOLS: Needs = Needs { tools: true, ..NOTHING };

/// Every step of `cargo xtask test`, in the order it runs them; the one list both the runner and
/// `--help` read.
pub const STEPS: &[Step] = &[
    Step {
        name: "rustfmt",
        about: "cargo fmt --check",
        needs: NOTHING,
        run: |env| run_step("rustfmt", env.command("cargo").args(["fmt", "--all", "--check"])),
    },
    Step {
        name: "clippy",
        about: "clippy on every target, -D warnings",
        needs: Needs {
            libtorch: true,
            ..NOTHING
        },
        run: |env| {
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
            )
        },
    },
    Step {
        name: "function-build",
        about: "the function that `cargo lambda watch` runs in the Lambda tests",
        needs: NOTHING,
        // `cargo lambda watch` (in the Lambda tests) builds the function on its own, with
        // `infer`'s features alone rather than the workspace's union: build that once here, in
        // the open, so no test spends its deadline compiling.
        run: |env| {
            run_step(
                "function build for cargo lambda watch",
                env.command("cargo").args(["build", "--package", "infer", "--locked"]),
            )
        },
    },
    Step {
        name: "tests",
        about: "cargo test --workspace (unit, integration, doc tests)",
        needs: Needs {
            libtorch: true,
            tools: true,
            chromium: true,
            ..NOTHING
        },
        run: |env| run_step("tests", env.command("cargo").args(["test", "--workspace", "--locked"])),
    },
    Step {
        name: "deps",
        about: "cargo machete: no crate lists a dependency its code never names",
        needs: Needs {
            machete: true,
            ..NOTHING
        },
        // Run as itself: as `cargo machete` this version takes the subcommand's name for a path.
        // --with-metadata reads each dependency's library name (md-5 is `md5`) from cargo.
        run: |env| run_step("deps", env.command("cargo-machete").arg("--with-metadata")),
    },
    Step {
        name: "lint",
        about: "IaC and workflow linters (cfn-lint, checkov, actionlint, zizmor, hadolint, shellcheck)",
        needs: TOOLS,
        run: lint::run,
    },
    Step {
        name: "package",
        about: "the arm64 Lambda zip, built and checked",
        needs: Needs {
            tools: true,
            ort_aarch64: true,
            rust_aarch64: true,
            ..NOTHING
        },
        // No --model: `infer` embeds models/ at build time, and S3 mode needs none in the zip.
        run: |env| {
            let arch = package::Arch::Arm64;
            package::package(env, arch, None, &package::default_output(arch)).map(drop)
        },
    },
    Step {
        name: "rehearse",
        about: "the deploy rehearsal (needs the package and the debug infer)",
        needs: Needs {
            sam: true,
            tools: true,
            ..NOTHING
        },
        run: rehearsal::run,
    },
    Step {
        name: "arm64",
        about: "the arm64 zip under qemu-aarch64 (needs the package)",
        needs: Needs {
            tools: true,
            ort_aarch64: true,
            arm64_run: true,
            ..NOTHING
        },
        run: arm64_run::run,
    },
];

/// Runs the named steps (every step when none is named) in [`STEPS`]' order, after setting up
/// only what they need.
pub fn test(names: &[String]) -> Result<()> {
    let chosen: Vec<&Step> = STEPS
        .iter()
        .filter(|step| names.is_empty() || names.iter().any(|n| n == step.name))
        .collect();
    let needs = chosen.iter().fold(NOTHING, |acc, step| acc.and(step.needs));
    let env = prepare(needs)?;
    for step in chosen {
        (step.run)(&env)?;
    }
    Ok(())
}

pub fn rehearse() -> Result<()> {
    test(&["rehearse".to_owned()])
}

pub fn rehearse_arm64() -> Result<()> {
    test(&["arm64".to_owned()])
}

pub fn lint() -> Result<()> {
    test(&["lint".to_owned()])
}

pub fn package(arch: package::Arch, model: Option<&Path>, out: Option<PathBuf>) -> Result<()> {
    let needs = Needs {
        tools: true,
        ort_aarch64: arch == package::Arch::Arm64,
        rust_aarch64: arch == package::Arch::Arm64,
        ..NOTHING
    };
    let env = prepare(needs)?;
    package::package(&env, arch, model, &out.unwrap_or_else(|| package::default_output(arch)))?;
    Ok(())
}

pub fn serve(args: &[String]) -> Result<()> {
    let env = prepare(Needs::SERVE)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn needs_of(names: &[&str]) -> Needs {
        STEPS
            .iter()
            .filter(|s| names.contains(&s.name))
            .fold(NOTHING, |acc, s| acc.and(s.needs))
    }

    #[test]
    fn step_names_are_unique() {
        let mut names: Vec<_> = STEPS.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), STEPS.len());
    }

    #[test]
    fn lint_alone_sets_up_only_the_tools() {
        assert_eq!(needs_of(&["lint"]), TOOLS);
        assert_eq!(needs_of(&["rustfmt", "function-build"]), Needs::SERVE);
    }

    #[test]
    fn all_steps_need_everything() {
        let every: Vec<&str> = STEPS.iter().map(|s| s.name).collect();
        assert_eq!(needs_of(&every), Needs::ALL);
    }
}
