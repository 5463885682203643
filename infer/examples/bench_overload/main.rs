//! The overload run behind infer/BENCHMARKS.md ("Overload"): `infer serve` on loopback, driven by
//! `hey` far past what the CPU can do, for each input (a 640x480 JPEG, a ~5 MB photo, a V2 JSON
//! tensor).
//!
//! ```sh
//! cargo run --release -p infer --example bench_overload -- --bin target/release/infer --images DIR [--duration 20s]
//! cargo run --release -p infer --example bench_overload -- --cost --images DIR --concurrency 1024 --duration 10s
//! ```
//!
//! For each input: c=8 first (the goodput the server can do), then each of --concurrency (default
//! "256 1024"). Per point: goodput (200s per second), the p99 of the 200s against the deadline,
//! the other statuses (expected: only 503 and 504), peak RSS (VmHWM of the server process), and
//! recovery: after the load stops, the time until a single request of the same input is answered
//! 200 again (a few probes; the first one sent at once). While the load runs, a few requests sent
//! from here check that every non-200 body is the error JSON (`{"error": {"code", "message"}}` or
//! the V2 `{"error": "<message>"}`). Every run is bounded: hey -z, and hey's own -t timeout.
//! Also per point: the CPU cores of the server and of `hey`, and what the kernel's TCP stack went
//! through (`kernel.rs`: time under TCP memory pressure, segments dropped and sent again), since
//! `hey`'s send queues share the server's kernel. `--rounds N` runs it all N times, each round
//! with its own c=8, so that a ratio always compares points minutes apart.
//!
//! `--cost`: the CPU seconds `infer serve` and `hey` spend per answered 200 and per shed 503.
//! Per input, run 1 (only 200s): a fresh `infer serve` with the --serve-arg flags, hey at c=8;
//! then per --concurrency C, run 2 (only 503s): the same with --max-in-flight 1
//! --admission-wait-ms 0 (and a long deadline), its one place held by a request whose body is
//! never finished, hey at c=C: every request is shed. Server CPU is utime+stime from
//! /proc/PID/stat over hey's run; hey's from this process's children's rusage.
//!
//! DIR holds road-640x480.jpg and photo-5mb.jpg (any JPEGs of those kinds: they are not made
//! here). The V2 body is made here: the model's input tensor of zeros as JSON numbers.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde::Serialize;
use serde_json::Value;

mod cost;
mod kernel;
use cost::{CostRun, cost_run};
use kernel::{Counters, TcpStack};

#[derive(Parser, Debug)]
#[command(about = "The overload run behind infer/BENCHMARKS.md: infer serve driven by hey")]
struct Args {
    /// The `infer` binary to serve with.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/infer"))]
    bin: PathBuf,
    /// --model for infer serve (default: the bundled one).
    #[arg(long)]
    model: Option<String>,
    /// Folder with road-640x480.jpg and photo-5mb.jpg (needed for the inputs jpeg and photo).
    #[arg(long)]
    images: Option<PathBuf>,
    /// hey -z per point, in seconds ("20s").
    #[arg(long, default_value = "20s")]
    duration: String,
    /// The concurrency points after c=8, space-separated.
    #[arg(long, default_value = "256 1024")]
    concurrency: String,
    /// Inputs to run, space-separated: jpeg, photo, v2.
    #[arg(long, default_value = "jpeg photo v2")]
    inputs: String,
    /// An extra infer serve flag (repeat it; `--serve-arg=--max-batch=1`).
    #[arg(long = "serve-arg", allow_hyphen_values = true)]
    serve_arg: Vec<String>,
    /// --deadline-ms for infer serve, and the probes' and hey's timeout (plus 5 s); not --cost.
    #[arg(long, default_value_t = 10_000)]
    deadline_ms: u64,
    /// Write the results as a JSON array here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// CPU per 200 and per 503 instead of the overload points.
    #[arg(long)]
    cost: bool,
    /// Run the points this many times over, each round with its own c=8 to compare against;
    /// not --cost.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
}

/// One input: the request hey and the probes send.
#[derive(Debug)]
struct Input {
    label: String,
    path: String,
    body_file: PathBuf,
    body: Vec<u8>,
    content_type: &'static str,
    v2: bool,
}

/// `infer serve` on a free loopback port, sent SIGTERM when dropped.
#[derive(Debug)]
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(args: &Args, extra: &[&str], deadline: bool) -> Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut command = Command::new(&args.bin);
        command.args(["serve", "--addr", &format!("127.0.0.1:{port}")]);
        if deadline {
            command.args(["--deadline-ms", &args.deadline_ms.to_string()]);
        }
        command.args(&args.serve_arg).args(extra);
        if let Some(model) = &args.model {
            command.args(["--model", model]);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", args.bin.display()))?;
        let stdout = child.stdout.take().context("infer serve's stdout")?;
        let mut server = Server { child, port };
        // Its first line ("listening on ...") says it is ready; the rest is drained so that a
        // full pipe never blocks it.
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            let status = server.child.wait()?;
            bail!("{} serve exited ({status}) before it was listening", args.bin.display());
        }
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        Ok(server)
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = libc::pid_t::try_from(self.pid())?;
        // SAFETY: kill(2) takes no pointers; the pid is our own unreaped child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop().ok();
    }
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

/// The status and body, or None where the connection broke: a shed upload, answered 503 and
/// closed before the body was all sent, may show the client the broken pipe instead.
fn post(agent: &ureq::Agent, url: &str, input: &Input) -> Option<(u16, Vec<u8>)> {
    let mut reply = agent
        .post(url)
        .header("Content-Type", input.content_type)
        .send(&input.body[..])
        .ok()?;
    let status = reply.status().as_u16();
    let body = reply.body_mut().read_to_vec().ok()?;
    Some((status, body))
}

fn is_error_json(body: &[u8], v2: bool) -> bool {
    let Ok(doc) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    match doc.get("error") {
        Some(Value::String(_)) => v2,
        Some(Value::Object(err)) => !v2 && err.contains_key("code") && err.contains_key("message"),
        _ => false,
    }
}

fn peak_rss_mb(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .with_context(|| format!("no VmHWM in /proc/{pid}/status"))?;
    Ok(kib.parse::<f64>()? / 1024.0)
}

/// utime + stime of a process, in seconds.
fn cpu_s(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .with_context(|| format!("/proc/{pid}/stat has no ')'"))?
        .1
        .split_whitespace()
        .collect();
    let field = |i: usize| -> Result<f64> {
        Ok(fields
            .get(i)
            .with_context(|| format!("/proc/{pid}/stat field {i}"))?
            .parse()?)
    };
    // SAFETY: sysconf takes no pointers.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((field(11)? + field(12)?) / tick)
}

/// CPU seconds (user + system) of this process's children that have been waited for.
fn children_cpu_s() -> f64 {
    // SAFETY: getrusage writes one rusage into the zeroed value it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    s(usage.ru_utime) + s(usage.ru_stime)
}

/// hey's CSV rows as (status code, response time in seconds); a request that got no answer has
/// no row.
fn hey(url: &str, input: &Input, c: usize, duration: &str, timeout_s: u64) -> Result<Vec<(String, f64)>> {
    let out = Command::new("hey")
        .args(["-z", duration, "-c", &c.to_string(), "-t", &timeout_s.to_string()])
        .args(["-m", "POST", "-T", input.content_type, "-D"])
        .arg(&input.body_file)
        .args(["-o", "csv", url])
        .stderr(Stdio::null())
        .output()
        .context("running hey")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return Ok(Vec::new());
    };
    let column = |name: &str| {
        header
            .split(',')
            .position(|h| h == name)
            .with_context(|| format!("hey's CSV has no {name} column: {header}"))
    };
    let (status, time) = (column("status-code")?, column("response-time")?);
    lines
        .filter(|l| !l.is_empty())
        .map(|line| {
            let cells: Vec<&str> = line.split(',').collect();
            let (Some(code), Some(t)) = (cells.get(status), cells.get(time)) else {
                bail!("hey's CSV row is short: {line}");
            };
            Ok((
                code.to_string(),
                t.parse().with_context(|| format!("hey's response-time {t}"))?,
            ))
        })
        .collect()
}

fn count(rows: &[(String, f64)]) -> BTreeMap<String, usize> {
    let mut statuses = BTreeMap::new();
    for (code, _) in rows {
        *statuses.entry(code.clone()).or_default() += 1;
    }
    statuses
}

#[derive(Serialize, Debug)]
struct Point {
    input: String,
    c: usize,
    goodput: f64,
    p99_ok_s: Option<f64>,
    statuses: BTreeMap<String, usize>,
    peak_rss_mb: f64,
    recovery_s: Option<f64>,
    probe_non200: usize,
    probe_not_error_json: usize,
    probe_cut: usize,
    /// The server's lingering closes during the point, by outcome (`infer_lingering_closes_total`).
    lingering: BTreeMap<String, u64>,
    /// CPU cores the server and `hey` used over hey's run.
    server_cores: f64,
    hey_cores: f64,
    /// The kernel's TCP stack over hey's run (`kernel.rs`).
    tcp: TcpStack,
    round: usize,
    wall_s: f64,
}

#[derive(Default, Debug)]
struct Probes {
    seen: usize,
    bad: usize,
    cut: usize,
}

/// The server's `infer_lingering_closes_total` counts, by outcome.
fn lingering(agent: &ureq::Agent, server: &Server) -> Result<BTreeMap<String, u64>> {
    let text = agent
        .get(format!("{}/metrics", server.base()))
        .call()?
        .body_mut()
        .read_to_string()?;
    Ok(infer::metrics::lingering_closes(&text)?)
}

fn point(args: &Args, span_s: f64, server: &Server, input: &Input, c: usize, round: usize) -> Result<Point> {
    let deadline = Duration::from_millis(args.deadline_ms);
    let url = format!("{}{}", server.base(), input.path);
    let agent = agent(deadline + Duration::from_secs(5));
    let before = lingering(&agent, server)?;
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let prober = scope.spawn(|| {
            let mut probes = Probes::default();
            while !stop.load(Ordering::Relaxed) {
                match post(&agent, &url, input) {
                    None => probes.cut += 1,
                    Some((200, _)) => {}
                    Some((status, reply)) => {
                        probes.seen += 1;
                        if !matches!(status, 503 | 504) || !is_error_json(&reply, input.v2) {
                            probes.bad += 1;
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            probes
        });
        let (counters, server_cpu, hey_cpu) = (Counters::read(), cpu_s(server.pid()), children_cpu_s());
        let start = Instant::now();
        let rows = hey(&url, input, c, &args.duration, deadline.as_secs() + 5);
        let wall_s = start.elapsed().as_secs_f64();
        let tcp = TcpStack::between(&counters?, &Counters::read()?);
        let server_cores = (cpu_s(server.pid())? - server_cpu?) / wall_s;
        let hey_cores = (children_cpu_s() - hey_cpu) / wall_s;
        stop.store(true, Ordering::Relaxed);
        // Recovery: the first 200 for one request after the load.
        let after = Instant::now();
        let recovery_s = (0..20)
            .find(|_| matches!(post(&agent, &url, input), Some((200, _))))
            .map(|_| after.elapsed().as_secs_f64());
        let probes = prober
            .join()
            .map_err(|_| anyhow::anyhow!("the probe thread panicked"))?;
        let rows = rows?;
        let mut lingered = lingering(&agent, server)?;
        for (outcome, n) in &mut lingered {
            *n -= before.get(outcome).copied().unwrap_or(0);
        }
        lingered.retain(|_, n| *n > 0);
        let mut ok: Vec<f64> = rows.iter().filter(|(code, _)| code == "200").map(|r| r.1).collect();
        ok.sort_by(f64::total_cmp);
        let p99_ok_s = (!ok.is_empty()).then(|| ok[(0.99 * (ok.len() - 1) as f64) as usize]);
        Ok(Point {
            input: input.label.clone(),
            c,
            goodput: ok.len() as f64 / span_s,
            p99_ok_s,
            statuses: count(&rows),
            peak_rss_mb: peak_rss_mb(server.pid())?,
            recovery_s,
            probe_non200: probes.seen,
            probe_not_error_json: probes.bad,
            probe_cut: probes.cut,
            lingering: lingered,
            server_cores,
            hey_cores,
            tcp,
            round,
            wall_s,
        })
    })
}

/// The inputs named by --inputs, the V2 body written into `work` from the served model's input.
fn inputs(args: &Args, server: &Server, work: &Path) -> Result<Vec<Input>> {
    let meta: Value = agent(Duration::from_secs(30))
        .get(format!("{}/v1/model", server.base()))
        .call()?
        .body_mut()
        .read_json()?;
    let field = |v: &Value, name: &str| v.get(name).cloned().with_context(|| format!("/v1/model has no {name}"));
    let input = field(&meta, "input")?;
    let (h, w) = (field(&input, "height")?, field(&input, "width")?);
    let (h, w) = (h.as_u64().context("input.height")?, w.as_u64().context("input.width")?);
    let name = field(&meta, "name")?;
    let name = name.as_str().context("name")?;
    // Python's json.dumps spacing, so that the body (and its size in the label) stays what the
    // earlier runs in BENCHMARKS.md sent.
    let zeros = vec!["0"; (3 * h * w) as usize].join(", ");
    let v2 = format!(
        r#"{{"inputs": [{{"name": {}, "shape": [1, 3, {h}, {w}], "datatype": "FP32", "data": [{zeros}]}}]}}"#,
        field(&input, "name")?
    );
    let v2_file = work.join("v2.json");
    std::fs::write(&v2_file, &v2)?;
    let image = |file: &str| -> Result<(PathBuf, Vec<u8>)> {
        let dir = args
            .images
            .as_ref()
            .with_context(|| format!("--images DIR (with {file}) is needed"))?;
        let path = dir.join(file);
        let body = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok((path, body))
    };
    args.inputs
        .split_whitespace()
        .map(|key| {
            Ok(match key {
                "jpeg" | "photo" => {
                    let (label, file) = match key {
                        "jpeg" => ("640x480 JPEG", "road-640x480.jpg"),
                        _ => ("5 MB photo", "photo-5mb.jpg"),
                    };
                    let (body_file, body) = image(file)?;
                    Input {
                        label: label.into(),
                        path: "/v1/predict".into(),
                        body_file,
                        body,
                        content_type: "image/jpeg",
                        v2: false,
                    }
                }
                "v2" => Input {
                    label: format!("V2 JSON {} KiB", v2.len() / 1024),
                    path: format!("/v2/models/{name}/infer"),
                    body_file: v2_file.clone(),
                    body: v2.clone().into_bytes(),
                    content_type: "application/json",
                    v2: true,
                },
                other => bail!("--inputs: unknown input {other:?} (jpeg, photo, v2)"),
            })
        })
        .collect()
}

#[derive(Serialize, Debug)]
#[serde(untagged)]
enum Row {
    Point(Point),
    Cost(CostRun),
}

fn print_line(row: Row, results: &mut Vec<Row>) -> Result<()> {
    println!("{}", serde_json::to_string(&row)?);
    results.push(row);
    Ok(())
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !on_path("hey") {
        bail!("hey is missing: apt-get install hey");
    }
    let span_s: f64 = args
        .duration
        .strip_suffix('s')
        .unwrap_or(&args.duration)
        .parse()
        .with_context(|| format!("--duration {:?}: seconds, as in 20s", args.duration))?;
    let concurrency = args
        .concurrency
        .split_whitespace()
        .map(|c| {
            c.parse::<usize>()
                .with_context(|| format!("--concurrency: {c:?} is not a count"))
        })
        .collect::<Result<Vec<_>>>()?;
    let work = tempfile::Builder::new().prefix("bench-overload-").tempdir()?;
    let mut results = Vec::new();
    if args.cost {
        let shed = [
            "--max-in-flight",
            "1",
            "--admission-wait-ms",
            "0",
            "--deadline-ms",
            "600000",
        ];
        // Every run has a fresh server; the first one also says what the V2 body is.
        let mut first = Some(Server::start(&args, &[], false)?);
        let inputs = inputs(&args, first.as_ref().context("the first server")?, work.path())?;
        for input in &inputs {
            let mut run = |server: Option<Server>, c, hold| -> Result<()> {
                let mut server = match server {
                    Some(server) => server,
                    None => Server::start(&args, if hold { &shed } else { &[] }, false)?,
                };
                let result = cost_run(&args, &server, input, c, hold);
                server.stop()?;
                print_line(Row::Cost(result?), &mut results)
            };
            run(first.take(), 8, false)?;
            for &c in &concurrency {
                run(None, c, true)?;
            }
        }
    } else {
        let server = Server::start(&args, &[], true)?;
        let inputs = inputs(&args, &server, work.path())?;
        for round in 1..=args.rounds {
            for input in &inputs {
                for c in std::iter::once(8).chain(concurrency.iter().copied()) {
                    let point = point(&args, span_s, &server, input, c, round)?;
                    print_line(Row::Point(point), &mut results)?;
                }
            }
        }
    }
    if let Some(out) = &args.out {
        let mut text = Vec::new();
        let formatter = serde_json::ser::PrettyFormatter::with_indent(b" ");
        results.serialize(&mut serde_json::Serializer::with_formatter(&mut text, formatter))?;
        std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}
