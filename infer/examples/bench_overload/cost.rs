//! `--cost`: the CPU seconds of the server and of `hey` per answered 200 and per shed 503.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

use super::{Args, Input, Server, children_cpu_s, count, cpu_s, hey};

#[derive(Serialize, Debug)]
pub(super) struct CostRun {
    input: String,
    c: usize,
    hold: bool,
    wall_s: f64,
    statuses: BTreeMap<String, usize>,
    server_cpu_s: f64,
    hey_cpu_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_ms_per_200: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hey_ms_per_200: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_ms_per_503: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hey_ms_per_503: Option<f64>,
}

fn round(x: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (x * scale).round() / scale
}

/// One run of --cost on a fresh server; `hold` fills its one place with a request whose body
/// never ends, so that every other is shed.
pub(super) fn cost_run(args: &Args, server: &Server, input: &Input, c: usize, hold: bool) -> Result<CostRun> {
    let holder = if hold {
        let mut stream = TcpStream::connect(("127.0.0.1", server.port))?;
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: x\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n",
            input.path,
            input.content_type,
            input.body.len() + 10
        );
        stream.write_all(head.as_bytes())?;
        stream.write_all(&input.body[..input.body.len().min(10)])?;
        std::thread::sleep(Duration::from_millis(500));
        Some(stream)
    } else {
        None
    };
    let server_before = cpu_s(server.pid())?;
    let hey_before = children_cpu_s();
    let start = Instant::now();
    let rows = hey(
        &format!("{}{}", server.base(), input.path),
        input,
        c,
        &args.duration,
        20,
    )?;
    let wall_s = start.elapsed().as_secs_f64();
    let hey_cpu_s = children_cpu_s() - hey_before;
    let server_cpu_s = cpu_s(server.pid())? - server_before;
    drop(holder);
    let statuses = count(&rows);
    let (code, places) = if hold { ("503", 4) } else { ("200", 3) };
    let n = statuses.get(code).copied().unwrap_or(0).max(1) as f64;
    let per = |cpu_s: f64| Some(round(1e3 * cpu_s / n, places));
    let (server_ms, hey_ms) = (per(server_cpu_s), per(hey_cpu_s));
    Ok(CostRun {
        input: input.label.clone(),
        c,
        hold,
        wall_s: round(wall_s, 1),
        statuses,
        server_cpu_s: round(server_cpu_s, 2),
        hey_cpu_s: round(hey_cpu_s, 2),
        server_ms_per_200: if hold { None } else { server_ms },
        hey_ms_per_200: if hold { None } else { hey_ms },
        server_ms_per_503: if hold { server_ms } else { None },
        hey_ms_per_503: if hold { hey_ms } else { None },
    })
}
