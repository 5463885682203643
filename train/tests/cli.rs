//! The `train` command line as users meet it: every `--help` text is pinned by an insta
//! snapshot, so a changed flag, default or description shows up in review.

use std::process::Command;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// `train ARGS --help` with no inherited environment (clap prints `[env: …]` values) and a fixed
/// width (clap wraps to `COLUMNS`).
fn help(args: &[&str]) -> Result<String, Box<dyn std::error::Error>> {
    let out = Command::new(env!("CARGO_BIN_EXE_train"))
        .args(args)
        .arg("--help")
        .env_clear()
        .env("COLUMNS", "100")
        .output()?;
    if !out.status.success() {
        return Err(format!("train {args:?} --help: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

#[test]
fn help_texts_match_their_snapshots() -> TestResult {
    for command in ["", "fit", "eval", "export", "summary", "bench", "download"] {
        let args: Vec<&str> = command.split_whitespace().collect();
        let name = if command.is_empty() { "train" } else { command };
        insta::assert_snapshot!(format!("help_{name}"), help(&args)?);
    }
    Ok(())
}
