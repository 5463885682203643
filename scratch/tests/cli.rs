//! The `scratch` binary end to end: the edge demo on a generated image, and `bench --json`.

use std::process::Command;

use anyhow::{Context, Result, anyhow};
use image::{GrayImage, Luma};

/// Mirrors `LABEL_H` in the binary: the label band above the panels.
const LABEL_H: u32 = 28;

fn scratch() -> Command {
    Command::new(env!("CARGO_BIN_EXE_scratch"))
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().context("starting scratch")?;
    let stdout = String::from_utf8(out.stdout)?;
    anyhow::ensure!(
        out.status.success(),
        "scratch failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

#[test]
fn edges_writes_three_labelled_panels_that_agree_with_libtorch() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // A bright square on a dark field: edges along its border, nothing inside or outside.
    let (w, h) = (48u32, 32u32);
    let photo = GrayImage::from_fn(w, h, |x, y| {
        Luma([if (12..36).contains(&x) && (8..24).contains(&y) {
            220
        } else {
            20
        }])
    });
    let input = dir.path().join("square.png");
    photo.save(&input)?;
    let output = dir.path().join("panel.png");

    let stdout = run(scratch().arg("edges").arg(&input).arg("-o").arg(&output))?;
    let diff: f32 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("max abs diff: "))
        .ok_or_else(|| anyhow!("no max abs diff in {stdout}"))?
        .parse()?;
    assert!(diff <= 1e-5, "scratch and libtorch edges differ by {diff}");

    let panel = image::open(&output)?.to_rgb8();
    assert_eq!(panel.dimensions(), (3 * w, h + LABEL_H));
    // Middle panel (scratch): bright on the square's left border, black in its middle and outside.
    let px = |x: u32, y: u32| panel.get_pixel(w + x, LABEL_H + y)[0];
    assert!(px(12, 16) > 200, "no edge on the border: {}", px(12, 16));
    assert_eq!(px(24, 16), 0, "edge inside the flat square");
    assert_eq!(px(3, 3), 0, "edge in the flat background");
    // Right panel (libtorch) renders the same responses.
    assert_eq!(
        panel.get_pixel(2 * w + 12, LABEL_H + 16),
        panel.get_pixel(w + 12, LABEL_H + 16)
    );
    // The label band holds some drawn text (not just the background fill).
    let band_colours: std::collections::HashSet<_> = (0..3 * w).map(|x| panel.get_pixel(x, LABEL_H / 2)).collect();
    assert!(band_colours.len() > 2, "label band looks empty");
    Ok(())
}

#[test]
fn edges_names_a_missing_file() -> Result<()> {
    let out = scratch().args(["edges", "/nonexistent/photo.jpg"]).output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr)?;
    assert!(stderr.contains("/nonexistent/photo.jpg"), "{stderr}");
    Ok(())
}

#[test]
fn bench_json_reports_all_three_timings() -> Result<()> {
    let stdout = run(scratch().args(["bench", "--json", "--threads", "1", "--runs", "2", "--naive-runs", "1"]))?;
    let v: serde_json::Value = serde_json::from_str(stdout.trim())?;
    assert_eq!(v["shape"]["input"], serde_json::json!([1, 3, 128, 128]));
    assert_eq!(v["shape"]["weight"], serde_json::json!([16, 3, 3, 3]));
    assert_eq!(v["threads"], 1);
    for key in ["naive_s", "fast_s", "libtorch_s"] {
        let t = v[key].as_f64().ok_or_else(|| anyhow!("{key} missing in {v}"))?;
        assert!(t > 0.0, "{key} = {t}");
    }
    let diff = v["max_abs_diff"]
        .as_f64()
        .ok_or_else(|| anyhow!("max_abs_diff missing"))?;
    assert!(diff <= 1e-5, "max abs diff {diff}");
    Ok(())
}
