//! The `infer` command line as users meet it: every `--help` text is pinned by an insta
//! snapshot, so a changed flag, default, environment variable or description shows up in review.

use std::process::Command;

use anyhow::{Result, ensure};

/// `infer ARGS --help` with no inherited environment (clap prints `[env: …]` values) and a fixed
/// width (clap wraps to `COLUMNS`).
fn help(args: &[&str]) -> Result<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_infer"))
        .args(args)
        .arg("--help")
        .env_clear()
        .env("COLUMNS", "100")
        .output()?;
    ensure!(
        out.status.success(),
        "infer {args:?} --help: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

#[test]
fn help_texts_match_their_snapshots() -> Result<()> {
    for command in ["", "serve", "predict"] {
        let args: Vec<&str> = command.split_whitespace().collect();
        let name = if command.is_empty() { "infer" } else { command };
        insta::assert_snapshot!(format!("help_{name}"), help(&args)?);
    }
    Ok(())
}
