//! Prints BENCHMARKS.md's criterion table from the results in `target/criterion` (run after
//! `cargo bench -p scratch --bench conv`): the median per implementation and thread count, and the
//! ratio fast/libtorch at the same thread count.
//!
//! ```sh
//! cargo run -p scratch --example bench_report [-- CRITERION_DIR]
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The benchmark ids of `benches/conv.rs`, in the table's order.
const CASES: &[&str] = &[
    "student 1x3x128x128 16f",
    "resnet 64@32x32 b1",
    "resnet 128@16x16 b1",
    "resnet 256@8x8 b1",
    "resnet 512@4x4 b1",
    "resnet 64@32x32 b32",
    "resnet 128@16x16 b32",
    "resnet 256@8x8 b32",
    "resnet 512@4x4 b32",
];

/// The median in seconds, or `None` when criterion has no result for this combination (the
/// naive loops run at one thread only).
fn median(root: &Path, case: &str, implementation: &str, threads: u32) -> Result<Option<f64>> {
    let path = root
        .join(case.replace('/', "_"))
        .join(implementation)
        .join(threads.to_string())
        .join("new/estimates.json");
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let estimates: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let nanos = estimates["median"]["point_estimate"]
        .as_f64()
        .with_context(|| format!("{}: no median.point_estimate", path.display()))?;
    Ok(Some(nanos * 1e-9))
}

fn format_time(seconds: Option<f64>) -> String {
    match seconds {
        None => "—".into(),
        Some(s) if s < 1.0 => format!("{:.3} ms", s * 1e3),
        Some(s) => format!("{s:.2} s"),
    }
}

fn main() -> Result<()> {
    let root = std::env::args_os()
        .nth(1)
        .map_or_else(|| PathBuf::from("target/criterion"), PathBuf::from);
    println!(
        "| shape | naive (1 thr) | fast 1 thr | libtorch 1 thr | fast/libtorch 1 thr | fast 2 thr | libtorch 2 thr | fast/libtorch 2 thr |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for case in CASES {
        let mut row = vec![case.to_string(), format_time(median(&root, case, "naive", 1)?)];
        for threads in [1, 2] {
            let fast = median(&root, case, "fast", threads)?;
            let libtorch = median(&root, case, "libtorch", threads)?;
            let ratio = match (fast, libtorch) {
                (Some(f), Some(l)) => format!("**{:.2}**", f / l),
                _ => "—".into(),
            };
            row.extend([format_time(fast), format_time(libtorch), ratio]);
        }
        println!("| {} |", row.join(" | "));
    }
    Ok(())
}
