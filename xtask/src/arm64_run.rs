//! The shipped arm64 zip, run: `target/lambda/infer-arm64.zip` is unpacked and its `bootstrap`
//! is started under `qemu-aarch64` (user-mode emulation, Debian's aarch64 C library as its root)
//! against cargo-lambda's local Lambda runtime API; `cargo lambda invoke` sends it an API Gateway
//! HTTP API (v2) event carrying a PNG, and its labels must equal what the x86-64 `infer` answers
//! for the same image with the same model. This is the only check that runs the artifact that
//! ships, rather than a binary built for the machine the tests run on.
//!
//! The function runs in Lambda's sandbox shape (`lambda_sandbox.sh`): the zip unpacked into a
//! read-only `/var/task`, a read-only root, only `/tmp` writable, no `/sys/devices/system/cpu`
//! (Lambda's arm64 sandbox has no CPU lists), and the environment Lambda gives it from the
//! template: the default `MemorySize`, `LoggingConfig.LogFormat` as `AWS_LAMBDA_LOG_FORMAT`, and
//! the Globals' plain variables (`ORT_DYLIB_PATH`). The sandbox is checked first with
//! deliberate writes, so a sandbox that let one through fails the step. The template's three
//! event shapes go in: the function URL's (payload 2.0), the REST API's on its `v1` stage
//! (API_KEY mode), and a Step Functions Distributed Map batch whose one item the worker reads
//! from moto's S3 on loopback; each answer must equal x86-64's. Every log line the function
//! writes must be JSON with a level, and each HTTP request line must carry its invocation's
//! `requestId`.
//!
//! ONNX Runtime reads `/proc/cpuinfo` to pick its kernels. qemu-user 7.2 (Debian 12's) passes
//! the host's through, and ONNX Runtime, finding an x86 file on an aarch64 CPU, dies with
//! SIGSEGV while loading. The function therefore runs in a private mount namespace in which
//! `/proc/cpuinfo` is a Neoverse-N1's (Graviton2, what Lambda's arm64 runs on), and qemu
//! emulates that CPU, so that the features the kernels are picked by are Graviton2's.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use base64::Engine as _;
use serde_json::{Value, json};

use crate::env::Env;
use crate::package::{self, Arch, BOOTSTRAP};
use crate::{debian, paths, tools};

/// Where Debian's cross packages put the aarch64 loader and libraries: qemu's `-L` root.
const SYSROOT: &str = "/usr/aarch64-linux-gnu";

/// Graviton2, the CPU behind Lambda's arm64.
const QEMU_CPU: &str = "neoverse-n1";

/// A Neoverse-N1's `/proc/cpuinfo`, in the repository, bind-mounted over the host's.
const CPUINFO: &str = "xtask/fixtures/neoverse-n1.cpuinfo";

/// The SAM template whose defaults the function runs with.
const TEMPLATE: &str = "infra/template.yaml";

/// Builds the sandbox and runs a command in it (see the script's first lines).
const SANDBOX: &str = include_str!("lambda_sandbox.sh");

/// The model the zip embeds (`infer` bundles it at build time), which the x86-64 side loads too.
const MODEL: &str = "models/resnet18-cifar10.onnx";

/// A 48x40 RGB picture (a sky, a field and a disc between them), larger than the model's 32x32
/// input so that the resize runs too.
const IMAGE: &str = "xtask/fixtures/arm64-run.png";

/// Classes compared, in order: every class of CIFAR-10.
const TOP_K: usize = 10;

/// Largest difference allowed between the two machines' probabilities. Both run the same
/// graph in fp32 with different kernels (NEON against AVX2), whose sums round differently:
/// the largest difference measured was 2.1e-7, while a mean off by 0.01 in preprocessing
/// already moved a probability by 9e-3.
const TOLERANCE: f64 = 1e-4;

/// How long the emulated function may take to load and answer the first event (measured: 3 s
/// to load, 1 s to answer, under emulation on the 2-core machine).
const PATIENCE: Duration = Duration::from_secs(300);

/// `cargo xtask rehearse-arm64`, and the last step of `cargo xtask test`.
pub fn run(env: &Env) -> Result<()> {
    eprintln!("xtask: == arm64 zip under qemu-aarch64 ==");
    let started = Instant::now();
    let zip = package::default_output(Arch::Arm64);
    ensure!(
        zip.is_file(),
        "{} does not exist: `cargo xtask package --arch arm64` writes it",
        zip.display()
    );
    let sysroot_loader = Path::new(SYSROOT).join("lib/ld-linux-aarch64.so.1");
    ensure!(
        sysroot_loader.exists(),
        "{} is missing: the Debian packages {} provide it (`cargo xtask setup` installs them)",
        sysroot_loader.display(),
        tools::ARM64_DEBIAN_PACKAGES.join(" ")
    );

    let work = paths::repo_root().join("target/lambda/arm64-run");
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("emptying {}", work.display()))?;
    }
    let task_root = work.join("task");
    unzip(&zip, &task_root)?;
    let bootstrap = task_root.join(BOOTSTRAP);
    ensure!(bootstrap.is_file(), "{} holds no {BOOTSTRAP}", zip.display());

    let image = work.join("image.png");
    std::fs::copy(paths::repo_root().join(IMAGE), &image).with_context(|| format!("copying {IMAGE}"))?;

    let x86_started = Instant::now();
    let expected = x86_answer(env, &image)?;
    let x86_time = x86_started.elapsed();

    let lambda_env = template_environment(
        &std::fs::read_to_string(paths::repo_root().join(TEMPLATE)).with_context(|| format!("reading {TEMPLATE}"))?,
    )?;
    let cpuinfo = paths::repo_root().join(CPUINFO);
    ensure!(cpuinfo.is_file(), "{} is missing", cpuinfo.display());
    check_sandbox(&work, &task_root, &cpuinfo)?;

    let arm_started = Instant::now();
    let replies = arm64_answers(env, &work, &bootstrap, &image, &cpuinfo, &lambda_env)?;
    let arm_time = arm_started.elapsed();

    for (shape, reply) in &replies {
        compare(&expected, reply).with_context(|| format!("the {shape} event"))?;
    }
    let reply = &replies[0].1;
    eprintln!(
        "xtask: the arm64 zip answered like x86-64 ({}, ... {} classes, largest probability difference \
         {:.1e}, model {}, events: {}); x86-64 {:.1?}, arm64 under qemu {:.1?} (start, load, answer)",
        expected
            .scores
            .iter()
            .take(3)
            .map(|(label, p)| format!("{label} {p:.4}"))
            .collect::<Vec<_>>()
            .join(", "),
        expected.scores.len(),
        largest_difference(&expected, reply),
        expected.version,
        replies.iter().map(|(shape, _)| *shape).collect::<Vec<_>>().join(", "),
        x86_time,
        arm_time,
    );
    eprintln!(
        "xtask: arm64 zip under qemu-aarch64 passed in {:.1?}",
        started.elapsed()
    );
    Ok(())
}

/// Unpacks `zip` into `dest`, keeping the members' Unix modes (`bootstrap` must stay executable).
fn unzip(zip: &Path, dest: &Path) -> Result<()> {
    let file = std::fs::File::open(zip).with_context(|| format!("opening {}", zip.display()))?;
    let mut archive = zip::ZipArchive::new(file).with_context(|| format!("reading {}", zip.display()))?;
    archive
        .extract(dest)
        .with_context(|| format!("unpacking {} into {}", zip.display(), dest.display()))
}

/// One model's answer for one image: the model version and its classes, most probable first.
#[derive(Debug)]
struct Answer {
    version: String,
    scores: Vec<(String, f64)>,
}

impl Answer {
    /// Reads `{"model": {"version"}, "predictions": [{"top_k": [{label, probability}]}]}`, the
    /// shape both `infer predict --json` and `POST /v1/predict` answer in.
    fn parse(doc: &Value, what: &str) -> Result<Self> {
        let version = doc["model"]["version"]
            .as_str()
            .with_context(|| format!("{what}: no model.version in {doc}"))?
            .to_owned();
        let predictions = doc["predictions"]
            .as_array()
            .with_context(|| format!("{what}: no predictions in {doc}"))?;
        ensure!(
            predictions.len() == 1,
            "{what}: {} predictions for one image",
            predictions.len()
        );
        let scores = predictions[0]["top_k"]
            .as_array()
            .with_context(|| format!("{what}: no top_k in {doc}"))?
            .iter()
            .map(|s| {
                let label = s["label"]
                    .as_str()
                    .with_context(|| format!("{what}: a score without a label: {s}"))?;
                let p = s["probability"]
                    .as_f64()
                    .with_context(|| format!("{what}: a score without a probability: {s}"))?;
                Ok((label.to_owned(), p))
            })
            .collect::<Result<Vec<_>>>()?;
        ensure!(!scores.is_empty(), "{what}: an empty top_k in {doc}");
        Ok(Self { version, scores })
    }
}

/// `infer predict` of the x86-64 debug build, on the model the zip embeds.
fn x86_answer(env: &Env, image: &Path) -> Result<Answer> {
    // Fresh after `cargo xtask test`'s own builds (nothing is compiled then); alone, it builds.
    let build = env
        .command("cargo")
        .args(["build", "--quiet", "--package", "infer", "--bin", "infer", "--locked"])
        .status()
        .context("could not start cargo build")?;
    ensure!(build.success(), "cargo build --package infer failed ({build})");
    let infer = paths::repo_root().join("target/debug/infer");
    let top_k = TOP_K.to_string();
    let out = env
        .command(&infer.to_string_lossy())
        .args(["predict", "--json", "--no-cache", "--top-k", &top_k, "--model", MODEL])
        .arg(image)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start {}", infer.display()))?;
    ensure!(
        out.status.success(),
        "{} predict failed ({}): {}",
        infer.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "infer predict printed no JSON: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    Answer::parse(&doc, "x86-64 infer predict")
}

/// A process started as the leader of its own process group, stopped with everything it
/// started when the rehearsal ends, however it ends.
#[derive(Debug)]
struct Running(Child);

impl Running {
    fn spawn(mut cmd: Command, what: &str) -> Result<Self> {
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        Ok(Self(cmd.spawn().with_context(|| format!("could not start {what}"))?))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // The `--` keeps procps-ng's kill from reading `-TERM -PGID` as "every process".
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill")
            .args(["-TERM", "--", &group])
            .stderr(Stdio::null())
            .status();
        // Under sudo the function is root's and only sudo may be signalled: it relays SIGTERM,
        // but would die of SIGKILL without passing it on, so give it a moment first.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.0.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits for `invoke`, failing at once if the function it talks to dies meanwhile (a crash
/// under emulation would otherwise look like an emulator that is slow to start), and at
/// `deadline` if the function hangs (the invocation would wait for it for ever).
fn wait_watching(mut invoke: Child, function: &mut Child, deadline: Instant) -> Result<Output> {
    loop {
        if Instant::now() > deadline {
            let _ = invoke.kill();
            let _ = invoke.wait();
            bail!("the arm64 bootstrap under qemu-aarch64 did not answer within {PATIENCE:?}; its log is above");
        }
        if let Some(status) = function.try_wait().context("watching the emulated function")? {
            let _ = invoke.kill();
            let _ = invoke.wait();
            let hint = if std::os::unix::process::ExitStatusExt::signal(&status) == Some(11) {
                " (SIGSEGV: did ONNX Runtime read a /proc/cpuinfo that is not an aarch64 one?)"
            } else {
                ""
            };
            bail!(
                "the arm64 bootstrap under qemu-aarch64 exited ({status}) before answering{hint}; \
                 its log is above"
            );
        }
        if invoke.try_wait().context("waiting for cargo lambda invoke")?.is_some() {
            return invoke
                .wait_with_output()
                .context("reading cargo lambda invoke's output");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The template's defaults as Lambda hands them to the function: `MemorySize`'s default as
/// `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`, `LoggingConfig.LogFormat` as `AWS_LAMBDA_LOG_FORMAT`, and
/// the Globals' plain environment variables (an intrinsic such as `MODEL_URI`'s is left out: S3
/// mode is not what the zip runs here). Read line by line: `!Ref` tags are not plain YAML.
fn template_environment(template: &str) -> Result<Vec<(String, String)>> {
    let lines: Vec<&str> = template.lines().collect();
    let after = |start: usize, key: &str, indent: usize| {
        lines[start..]
            .iter()
            .position(|l| l.len() - l.trim_start().len() == indent && l.trim_start().starts_with(key))
            .map(|i| start + i)
    };
    let value = |line: &str| line.split_once(':').map(|(_, v)| v.trim().trim_matches('"').to_owned());
    let parameters = after(0, "Parameters:", 0).context("the template has no Parameters")?;
    let memory = after(parameters, "MemorySize:", 2).context("the template has no MemorySize parameter")?;
    let default = after(memory, "Default:", 4)
        .and_then(|i| value(lines[i]))
        .context("MemorySize has no Default")?;
    ensure!(
        default.parse::<u32>().is_ok(),
        "MemorySize's Default is no number: {default}"
    );
    let mut env = vec![("AWS_LAMBDA_FUNCTION_MEMORY_SIZE".to_owned(), default)];
    let globals = after(0, "Globals:", 0).context("the template has no Globals")?;
    let format = after(globals, "LogFormat:", 6)
        .and_then(|i| value(lines[i]))
        .context("the Globals' LoggingConfig has no LogFormat")?;
    env.push(("AWS_LAMBDA_LOG_FORMAT".to_owned(), format));
    let variables = after(globals, "Variables:", 6).context("the Globals have no Environment.Variables")?;
    for line in &lines[variables + 1..] {
        let indent = line.len() - line.trim_start().len();
        if line.trim().is_empty() || line.trim_start().starts_with('#') || indent > 8 {
            continue;
        }
        if indent < 8 {
            break;
        }
        if let Some((name, v)) = line.trim().split_once(':') {
            let v = v.trim();
            if !v.is_empty() && !v.starts_with('!') {
                env.push((name.to_owned(), v.trim_matches('"').to_owned()));
            }
        }
    }
    Ok(env)
}

/// The sandbox command: `unshare` a private mount namespace and run `lambda_sandbox.sh` with
/// `command` in it. Mounting needs root: as anyone else it goes through `sudo -n`.
fn sandboxed(work: &Path, task_root: &Path, cpuinfo: &Path, env: &[(String, String)], command: &[&str]) -> Command {
    let mut cmd = if debian::is_root() {
        Command::new("env")
    } else {
        let mut cmd = Command::new("sudo");
        cmd.args(["-n", "env"]);
        cmd
    };
    // A clean environment, as Lambda's: xtask's own holds the x86-64 ORT_DYLIB_PATH (cargo's
    // [env]), which `infer` would load before the library beside it.
    cmd.arg("-i")
        .arg("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .args(env.iter().map(|(k, v)| format!("{k}={v}")));
    cmd.args([
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        SANDBOX,
        "sh",
    ])
    .arg(work.join("root"))
    .arg(task_root)
    .arg(cpuinfo)
    .arg("1")
    .args(command);
    cmd
}

/// Runs host tools inside the sandbox: every write outside `/tmp` must fail and the CPU lists
/// must be gone, or the function's run below would prove nothing about Lambda's.
fn check_sandbox(work: &Path, task_root: &Path, cpuinfo: &Path) -> Result<()> {
    std::fs::create_dir_all(work.join("root")).context("creating the sandbox root")?;
    let probe = "for f in /var/task/probe /probe /usr/probe /etc/probe; do \
                 if touch \"$f\" 2>/dev/null; then echo \"wrote $f\"; fi; done; \
                 touch /tmp/probe && echo tmp-writable; \
                 for f in possible present online; do \
                 if [ -e /sys/devices/system/cpu/$f ]; then echo \"cpu list $f\"; fi; done";
    let out = sandboxed(work, task_root, cpuinfo, &[], &["/bin/sh", "-c", probe])
        .stdin(Stdio::null())
        .output()
        .context("could not start the sandbox check")?;
    let said = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && said.trim() == "tmp-writable",
        "the sandbox is not Lambda's shape ({}): {said}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The zip's `bootstrap` under qemu in the sandbox, answering each of the template's HTTP event
/// shapes through cargo-lambda's runtime API; its log lines are checked afterwards.
fn arm64_answers(
    env: &Env,
    work: &Path,
    bootstrap: &Path,
    image: &Path,
    cpuinfo: &Path,
    lambda_env: &[(String, String)],
) -> Result<Vec<(&'static str, Answer)>> {
    let port = free_port()?;
    let port_arg = port.to_string();
    // `cargo lambda watch` reads a cargo project even when it builds nothing: `infer`'s.
    let project = paths::repo_root().join("infer");
    let mut watch = env.command("cargo");
    watch
        .current_dir(&project)
        .args(["lambda", "watch", "--only-lambda-apis", "--invoke-address", "127.0.0.1"])
        .args(["--invoke-port", &port_arg])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let _watch = Running::spawn(watch, "cargo lambda watch")?;
    // The runtime client gives up when its first poll finds no API: wait for the emulator.
    wait_listening(port, "cargo lambda watch")?;

    // The Distributed Map worker reads its batch's objects from S3: moto on loopback holds one.
    let moto = map_bucket(work, image)?;
    let task_root = bootstrap.parent().unwrap_or(work);
    let mut function_env = lambda_env.to_vec();
    function_env.extend(
        [
            ("AWS_ENDPOINT_URL", moto.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    function_env.extend(
        [
            ("AWS_LAMBDA_RUNTIME_API", format!("http://127.0.0.1:{port}/.rt")),
            ("AWS_LAMBDA_FUNCTION_NAME", "infer".to_owned()),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".to_owned()),
            ("LAMBDA_TASK_ROOT", "/var/task".to_owned()),
            ("TZ", ":UTC".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    let log_path = work.join("function.log");
    let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let boot = format!("/var/task/{BOOTSTRAP}");
    let mut function = sandboxed(
        work,
        task_root,
        cpuinfo,
        &function_env,
        &["qemu-aarch64", "-cpu", QEMU_CPU, "-L", SYSROOT, &boot],
    );
    function
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(log.try_clone().context("sharing the log file")?);
    let mut function = Running::spawn(function, "the emulated function")?;
    let show_log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let png = std::fs::read(image).with_context(|| format!("reading {}", image.display()))?;
    let top_k = format!("top_k={TOP_K}");
    let events = [
        (
            "function URL",
            function_url_event("/v1/predict", &top_k, "image/png", &png)?,
        ),
        (
            "REST API v1 stage",
            rest_api_event("/v1/predict", TOP_K, "image/png", &png),
        ),
        (
            "Distributed Map batch",
            json!({"BatchInput": {"bucket": MAP_BUCKET, "top_k": TOP_K},
                   "Items": [{"Key": MAP_KEY, "Etag": moto.etag, "Size": png.len(),
                              "LastModified": 1_795_000_000, "StorageClass": "STANDARD"}]}),
        ),
    ];
    // Each HTTP request logs one `done` line; the Map batch logs its own.
    let http_events = events.iter().filter(|(_, e)| e.get("Items").is_none()).count();
    let started = Instant::now();
    let mut answers = Vec::new();
    for (shape, event) in events {
        let file = work.join("event.json");
        std::fs::write(&file, event.to_string()).with_context(|| format!("writing {}", file.display()))?;
        let output = loop {
            let mut invoke = env.command("cargo");
            invoke
                .current_dir(&project)
                .args([
                    "lambda",
                    "invoke",
                    "--invoke-address",
                    "127.0.0.1",
                    "--invoke-port",
                    &port_arg,
                ])
                .args(["--output-format", "json", "--data-file"])
                .arg(&file)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let child = invoke.spawn().context("could not start cargo lambda invoke")?;
            let output = wait_watching(child, &mut function.0, started + PATIENCE)
                .map_err(|e| anyhow::anyhow!("{e:#}\nthe function's log:\n{}", show_log()))?;
            if output.status.success() {
                break output;
            }
            // The emulator may not listen yet: retry until the function has had its time.
            if started.elapsed() > PATIENCE {
                bail!(
                    "cargo lambda invoke kept failing for {:.0?}: {}\nthe function's log:\n{}",
                    started.elapsed(),
                    String::from_utf8_lossy(&output.stderr),
                    show_log()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        let reply: Value = serde_json::from_slice(&output.stdout).with_context(|| {
            format!(
                "cargo lambda invoke printed no JSON: {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })?;
        if let Some(results) = reply["results"].as_array() {
            // The Map worker's reply: one record per item, no model block; the same process
            // answered the HTTP events, whose model is compared below.
            ensure!(
                results.len() == 1 && results[0]["error"].is_null() && results[0]["key"] == MAP_KEY,
                "the arm64 function answered the {shape} event with {reply}"
            );
            let version = answers
                .first()
                .map_or(String::new(), |(_, a): &(&str, Answer)| a.version.clone());
            let doc = json!({"model": {"version": version}, "predictions": [results[0].clone()]});
            answers.push((shape, Answer::parse(&doc, "arm64 function")?));
            continue;
        }
        ensure!(
            reply["statusCode"] == 200,
            "the arm64 function answered the {shape} event with {reply}"
        );
        let body = reply["body"]
            .as_str()
            .with_context(|| format!("no body in the arm64 function's reply {reply}"))?;
        let body: Value =
            serde_json::from_str(body).with_context(|| format!("the arm64 function's body is not JSON: {body}"))?;
        answers.push((shape, Answer::parse(&body, "arm64 function")?));
    }
    drop(function);
    drop(moto);
    check_log(&show_log(), http_events)?;
    Ok(answers)
}

/// A loopback port nothing listens on now.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("finding a free port")?
        .port())
}

/// Waits until something listens on `port` (`what`, for the error), at most [`PATIENCE`].
fn wait_listening(port: u16, what: &str) -> Result<()> {
    let listening = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        ensure!(listening.elapsed() < PATIENCE, "{what} never listened on port {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

const MAP_BUCKET: &str = "map-input";
const MAP_KEY: &str = "in/image.png";

/// `moto_server` on loopback (the tools' venv) holding the test image as the Map's one item.
struct MapBucket {
    _server: Running,
    endpoint: String,
    etag: String,
}

fn map_bucket(work: &Path, image: &Path) -> Result<MapBucket> {
    let port = free_port()?;
    let mut cmd = Command::new(paths::native_link().join("tools/bin/moto_server"));
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let server = Running::spawn(cmd, "moto_server")?;
    wait_listening(port, "moto_server")?;
    let endpoint = format!("http://127.0.0.1:{port}");
    // moto takes the account from the credential and checks no signature.
    let auth = "Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, \
                SignedHeaders=host, Signature=0";
    let headers = work.join("put-headers.txt");
    for (url, body) in [
        (format!("{endpoint}/{MAP_BUCKET}"), None),
        (format!("{endpoint}/{MAP_BUCKET}/{MAP_KEY}"), Some(image)),
    ] {
        let mut curl = Command::new("curl");
        curl.args(["-sS", "-f", "-X", "PUT", "-H", auth, "-D"])
            .arg(&headers)
            .arg(&url);
        if let Some(file) = body {
            // Without a type curl says form data, which moto's server parses away.
            curl.args(["-H", "Content-Type: image/png", "--data-binary"])
                .arg(format!("@{}", file.display()));
        }
        let out = curl.output().context("could not start curl")?;
        ensure!(
            out.status.success(),
            "PUT {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let etag = std::fs::read_to_string(&headers)
        .with_context(|| format!("reading {}", headers.display()))?
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with("etag:")
                .then(|| l[5..].trim().to_owned())
        })
        .context("moto answered the PUT without an ETag")?;
    Ok(MapBucket {
        _server: server,
        endpoint,
        etag,
    })
}

/// Lines that ONNX Runtime's bundled libraries write to stderr themselves, outside any logger:
/// pytorch/cpuinfo's errors and ORT's own warnings while its library loads, before `infer` can
/// install its logger. In Lambda they reach CloudWatch as text lines (INFO to Lambda's filter).
const NATIVE_PREFIXES: [&str; 2] = ["Error in cpuinfo:", "onnxruntime cpuid_info warning:"];

/// Every line `infer` wrote is a JSON object with a level Lambda knows, and each request line
/// (`done`) carries a request id, one per invocation.
fn check_log(log: &str, invocations: usize) -> Result<()> {
    let mut ids = std::collections::BTreeSet::new();
    for line in log
        .lines()
        .filter(|l| !NATIVE_PREFIXES.iter().any(|p| l.starts_with(p)))
    {
        let value: Value = serde_json::from_str(line).with_context(|| {
            format!("the function wrote a line that is not JSON (AWS_LAMBDA_LOG_FORMAT=JSON): {line}")
        })?;
        let level = value["level"].as_str().unwrap_or_default();
        ensure!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level),
            "a log line without a Lambda level: {line}"
        );
        if value["message"] == "done" {
            let id = value["requestId"]
                .as_str()
                .with_context(|| format!("a request line without requestId: {line}"))?;
            ids.insert(id.to_owned());
        }
    }
    ensure!(
        ids.len() == invocations,
        "{invocations} invocations but request lines with {} request ids ({ids:?}):\n{log}",
        ids.len()
    );
    Ok(())
}

/// Labels in the same order and probabilities within [`TOLERANCE`], from the same model. Two
/// neighbours whose probabilities lie within the tolerance of each other may swap: which comes
/// first is then rounding, not behaviour.
fn compare(expected: &Answer, got: &Answer) -> Result<()> {
    ensure!(
        expected.version == got.version,
        "the arm64 zip serves model {} but x86-64 loaded {} ({MODEL}): package the zip again",
        got.version,
        expected.version
    );
    ensure!(
        expected.scores.len() == got.scores.len(),
        "x86-64 answered {} classes, arm64 {}",
        expected.scores.len(),
        got.scores.len()
    );
    let mismatch = || {
        format!(
            "the arm64 zip under qemu answered differently from x86-64:\n  x86-64: {:?}\n  arm64:  {:?}",
            expected.scores, got.scores
        )
    };
    for (i, ((want_label, want_p), (got_label, _))) in expected.scores.iter().zip(&got.scores).enumerate() {
        if want_label == got_label {
            continue;
        }
        let tied = [i.checked_sub(1), Some(i + 1)].into_iter().flatten().any(|j| {
            expected
                .scores
                .get(j)
                .is_some_and(|(label, p)| label == got_label && (p - want_p).abs() <= TOLERANCE)
        });
        ensure!(tied, "{}", mismatch());
    }
    for (label, want_p) in &expected.scores {
        let got_p = got.scores.iter().find(|(l, _)| l == label).map(|(_, p)| *p);
        ensure!(
            got_p.is_some_and(|p| (p - want_p).abs() <= TOLERANCE),
            "{label}: probability {want_p} on x86-64, {got_p:?} on arm64 (tolerance {TOLERANCE})\n{}",
            mismatch()
        );
    }
    Ok(())
}

fn largest_difference(expected: &Answer, got: &Answer) -> f64 {
    expected
        .scores
        .iter()
        .filter_map(|(label, p)| got.scores.iter().find(|(l, _)| l == label).map(|(_, q)| (p - q).abs()))
        .fold(0.0, f64::max)
}

/// A function URL `POST` (payload format 2.0, as AWS documents it: the URL's own domain, stage
/// `$default`, an IAM caller as the default `AWS_IAM` auth type sees it) carrying `body`
/// base64-encoded, built on `infer`'s test event (one file for both).
fn function_url_event(path: &str, query: &str, content_type: &str, body: &[u8]) -> Result<Value> {
    let mut event: Value = serde_json::from_str(include_str!("../../infer/src/testing/api_gateway_v2_event.json"))
        .context("reading infer's API Gateway test event")?;
    let domain = "a1b2c3d4e5f6g7h8i9j0k1l2m3.lambda-url.eu-west-1.on.aws";
    event["rawPath"] = json!(path);
    event["rawQueryString"] = json!(query);
    event["queryStringParameters"] = query.split_once('=').map_or(json!({}), |(k, v)| json!({ k: v }));
    event["headers"]["content-type"] = json!(content_type);
    event["headers"]["host"] = json!(domain);
    event["requestContext"]["domainName"] = json!(domain);
    event["requestContext"]["domainPrefix"] = json!("a1b2c3d4e5f6g7h8i9j0k1l2m3");
    event["requestContext"]["apiId"] = json!("a1b2c3d4e5f6g7h8i9j0k1l2m3");
    event["requestContext"]["authorizer"] = json!({"iam": {
        "accessKey": "AKIAIOSFODNN7EXAMPLE", "accountId": "123456789012",
        "callerId": "AIDACKCEVSQ6C2EXAMPLE", "principalOrgId": null,
        "userArn": "arn:aws:iam::123456789012:user/smoke", "userId": "AIDACKCEVSQ6C2EXAMPLE"
    }});
    event["requestContext"]["http"]["path"] = json!(path);
    event["body"] = json!(base64::engine::general_purpose::STANDARD.encode(body));
    Ok(event)
}

/// An API Gateway REST API proxy event (`AWS_PROXY` on `{proxy+}`, as AWS documents it) on the
/// template's `v1` stage with an API key, as API_KEY mode delivers it: `path` without the stage,
/// `requestContext.path` with it, the binary body base64-encoded (`BinaryMediaTypes: */*`).
fn rest_api_event(path: &str, top_k: usize, content_type: &str, body: &[u8]) -> Value {
    let top_k = top_k.to_string();
    json!({
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": "POST",
        "headers": {
            "Content-Type": content_type, "Host": "abcdef1234.execute-api.eu-west-1.amazonaws.com",
            "x-api-key": "k3y0000000000000000000000000000000000000", "X-Forwarded-Proto": "https"
        },
        "multiValueHeaders": {
            "Content-Type": [content_type], "Host": ["abcdef1234.execute-api.eu-west-1.amazonaws.com"],
            "x-api-key": ["k3y0000000000000000000000000000000000000"], "X-Forwarded-Proto": ["https"]
        },
        "queryStringParameters": {"top_k": top_k},
        "multiValueQueryStringParameters": {"top_k": [top_k]},
        "pathParameters": {"proxy": path.trim_start_matches('/')},
        "stageVariables": null,
        "requestContext": {
            "accountId": "123456789012", "apiId": "abcdef1234", "resourceId": "a1b2c3",
            "resourcePath": "/{proxy+}", "httpMethod": "POST", "stage": "v1",
            "path": format!("/v1{path}"), "protocol": "HTTP/1.1",
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef", "extendedRequestId": "abcdEFGHijk=",
            "requestTime": "06/Dec/2026:12:00:00 +0000", "requestTimeEpoch": 1_796_558_400_000_i64,
            "domainName": "abcdef1234.execute-api.eu-west-1.amazonaws.com", "domainPrefix": "abcdef1234",
            "identity": {"sourceIp": "192.0.2.1", "userAgent": "smoke", "apiKey": "k3y0000000000000000000000000000000000000", "apiKeyId": "keyid1"}
        },
        "body": base64::engine::general_purpose::STANDARD.encode(body),
        "isBase64Encoded": true
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(scores: &[(&str, f64)]) -> Answer {
        Answer {
            version: "abc".into(),
            scores: scores.iter().map(|(l, p)| ((*l).to_owned(), *p)).collect(),
        }
    }

    #[test]
    fn the_template_gives_the_memory_size_log_format_and_plain_variables() -> Result<()> {
        let template = std::fs::read_to_string(paths::repo_root().join(TEMPLATE))?;
        let env = template_environment(&template)?;
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert!(get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE").is_some_and(|m| m.parse::<u32>().is_ok()));
        assert_eq!(get("AWS_LAMBDA_LOG_FORMAT"), Some("JSON"));
        assert!(get("ORT_DYLIB_PATH").is_some_and(|p| p.starts_with("/var/task/")));
        assert_eq!(get("MODEL_URI"), None);
        Ok(())
    }

    #[test]
    fn equal_answers_within_tolerance_pass() {
        let x86 = answer(&[("cat", 0.7), ("dog", 0.2), ("frog", 0.1)]);
        let arm = answer(&[("cat", 0.700_001), ("dog", 0.199_999), ("frog", 0.1)]);
        assert!(compare(&x86, &arm).is_ok());
    }

    #[test]
    fn another_order_or_probability_fails() {
        let x86 = answer(&[("cat", 0.7), ("dog", 0.2), ("frog", 0.1)]);
        assert!(compare(&x86, &answer(&[("dog", 0.7), ("cat", 0.2), ("frog", 0.1)])).is_err());
        assert!(compare(&x86, &answer(&[("cat", 0.69), ("dog", 0.21), ("frog", 0.1)])).is_err());
        assert!(compare(&x86, &answer(&[("cat", 0.7), ("dog", 0.2)])).is_err());
        let mut other_model = answer(&[("cat", 0.7), ("dog", 0.2), ("frog", 0.1)]);
        other_model.version = "def".into();
        assert!(compare(&x86, &other_model).is_err());
    }

    #[test]
    fn a_tie_within_tolerance_may_swap() {
        let x86 = answer(&[("cat", 0.5), ("dog", 0.499_99), ("frog", 0.000_01)]);
        let arm = answer(&[("dog", 0.499_995), ("cat", 0.499_995), ("frog", 0.000_01)]);
        assert!(compare(&x86, &arm).is_ok());
    }
}
