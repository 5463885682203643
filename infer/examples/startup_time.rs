//! Time from process start to the first answered prediction: starts COMMAND, POSTs IMAGE to URL
//! every millisecond until a 200 comes back, then stops the process; five runs, the median.
//!
//! ```sh
//! cargo run --release -p infer --example startup_time -- URL IMAGE CONTENT_TYPE -- COMMAND...
//! ```

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const RUNS: usize = 5;

fn once(url: &str, body: &[u8], content_type: &str, command: &[String]) -> Result<Duration> {
    let start = Instant::now();
    let mut child = Command::new(&command[0])
        .args(&command[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", command[0]))?;
    let answered = loop {
        // Refused connections and non-200 answers both mean "not yet".
        if ureq::post(url).header("Content-Type", content_type).send(body).is_ok() {
            break Ok(start.elapsed());
        }
        if let Some(status) = child.try_wait()? {
            break Err(anyhow::anyhow!("{} exited with {status} before answering", command[0]));
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    child.kill().ok();
    child.wait().ok();
    answered
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(sep) = args.iter().position(|a| a == "--") else {
        bail!("usage: startup_time URL IMAGE CONTENT_TYPE -- COMMAND...");
    };
    let ([url, image, content_type], command) = (&args[..sep], &args[sep + 1..]) else {
        bail!("usage: startup_time URL IMAGE CONTENT_TYPE -- COMMAND...");
    };
    if command.is_empty() {
        bail!("no COMMAND after --");
    }
    let body = std::fs::read(image).with_context(|| format!("reading {image}"))?;
    let mut times = (0..RUNS)
        .map(|_| once(url, &body, content_type, command).map(|d| d.as_secs_f64() * 1e3))
        .collect::<Result<Vec<f64>>>()?;
    let runs: Vec<String> = times.iter().map(|t| format!("{t:.1}")).collect();
    times.sort_by(f64::total_cmp);
    println!(
        "first prediction after: median {:.1} ms, runs [{}]",
        times[RUNS / 2],
        runs.join(", ")
    );
    Ok(())
}
