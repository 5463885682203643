#!/usr/bin/env python3
"""The serving benchmark behind infer/BENCHMARKS.md, restated against the physical ceiling: one
command makes its inputs, measures ONNX Runtime alone on each model (the ceiling, before and after
the load), then loads `infer serve`, FastAPI + onnxruntime (scripts/fastapi_ort_server.py, same
.onnx file) and FastAPI + PyTorch (scripts/fastapi_server.py) with `hey`, and prints the results
and the issue's targets computed from the same run. Dev-only; standard library only.

Python because two of the servers it compares are Python's (FastAPI with PyTorch and with
onnxruntime) and share its venv; `hey` does the load and the percentiles.

    python3 scripts/bench_serving.py                                   # the full run, ~9 minutes
    python3 scripts/bench_serving.py --duration 1s --concurrency 8    # a smoke run
    python3 scripts/bench_serving.py --variant 'infer 2 sessions=--sessions 2'   # infer both ways
    python3 scripts/bench_serving.py --servers infer --label 'infer spin off' \\
        --infer-arg=--intra-op-spinning=false --compare-bin /tmp/infer-old

Needs `hey` (apt-get install hey), target/release/infer (cargo build --release -p infer),
target/release/examples/batch_throughput (cargo build --release -p infer --example
batch_throughput) and, for w64, target/release/train (cargo build --release -p train). The Python peers run in a venv made on first use from
scripts/bench-requirements.txt under ~/.cache/resnet-serverless/bench-<hash> (pip needs the
network once), or in the interpreter given by --python.

Inputs, made once into --work-dir: cat-32x32.png (CIFAR-10 test/cat/0000 from --cifar),
road-640x480.jpg (--road resized, JPEG quality 90) and resnet18-w64.onnx (`train export --init
--width 64`: a freshly initialised network, the same cost as a trained one). w16 is the bundled, trained
models/resnet18-cifar10.onnx.

Each server is started alone, waited for on /healthz, warmed up for --warmup per image, then
loaded for --duration at each concurrency; CPU per request is the server's user + system time
(and hey's) over the point divided by the answered requests, and `GET /healthz` at c=8 gives
what HTTP alone costs both. ONNX Runtime alone is measured both ways (one session over every
CPU, one single-threaded session per CPU); the ceiling is the best of either. Peak RSS is VmHWM
of the server process (uvicorn's, for the Python peers). Each infer binary is started and stopped once per model beforehand, so
that its graph cache exists and its peak RSS is a cached start's, as in production. Output: the
markdown on stdout and in --out (default WORK_DIR/serving.md), raw numbers in the same path
with .json.
"""

import argparse
import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"
REQUIREMENTS = SCRIPTS / "bench-requirements.txt"
WIDTHS = {"w16": 16, "w64": 64}
PNG, JPEG = "cat-32x32.png", "road-640x480.jpg"
CTYPES = {PNG: "image/png", JPEG: "image/jpeg"}
INFER, ORT, TORCH = "infer", "FastAPI+ORT", "FastAPI+PyTorch"
START_TIMEOUT_S = 300
# Targets: infer at c=8 on the PNG as a share of ONNX Runtime alone, per model.
CEILING_TARGET = {"w16": 85, "w64": 95}
JPEG_TARGET, RSS_TARGET = 80, 25

PIL_SAVE = """
import sys
from PIL import Image
src, dst, size = sys.argv[1:]
image = Image.open(src).convert("RGB")
if size:
    image = image.resize(tuple(int(n) for n in size.split("x")))
image.save(dst, quality=90)
"""


@dataclasses.dataclass
class Server:
    kind: str  # infer, ort or torch
    label: str
    model: str
    argv: list
    route: str


@dataclasses.dataclass
class Point:
    server: str
    model: str
    image: str
    concurrency: int
    rps: float
    p50: float | None
    p95: float | None
    p99: float | None
    errors: int
    server_cpu_ms: float | None = None  # the server's CPU (user + system) per answered request
    hey_cpu_ms: float | None = None  # the load generator's, on the same cores
    peak_rss_mb: float | None = None


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/infer-bench"))
    p.add_argument("--out", type=Path, help="markdown report (default WORK_DIR/serving.md; JSON beside it)")
    p.add_argument("--python", help="interpreter for the Python peers (default: the pinned venv)")
    p.add_argument("--cifar", type=Path, default=REPO.parent / "shared/data/cifar10-jpg.tar.gz")
    p.add_argument("--road", type=Path, default=REPO.parent / "shared/data/images/road-solidWhiteRight.jpg")
    p.add_argument("--duration", default="5s", help="hey -z per load point (default 5s)")
    p.add_argument("--warmup", default="2s", help="hey -z before each image's points (default 2s)")
    p.add_argument("--concurrency", default="1 8 32", help='hey -c values (default "1 8 32")')
    p.add_argument("--models", default="w16,w64")
    p.add_argument("--servers", default="infer,ort,torch")
    p.add_argument("--infer-bin", type=Path, default=REPO / "target/release/infer")
    p.add_argument("--infer-arg", action="append", default=[], metavar="ARG",
                   help="extra argument to infer serve, repeatable: --infer-arg=--max-batch=1")
    p.add_argument("--label", default=INFER, help="name of the --infer-bin rows (default infer)")
    p.add_argument("--compare-bin", type=Path,
                   help="a second infer binary (same --infer-arg), rows named by its path")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL=ARGS",
                   help="another infer configuration, repeatable: --variant 'infer 2 sessions=--sessions 2'")
    p.add_argument("--ceiling-bin", type=Path, default=REPO / "target/release/examples/batch_throughput")
    p.add_argument("--train-bin", type=Path, default=REPO / "target/release/train",
                   help="makes the width-64 model (train export --init)")
    p.add_argument("--ceiling-seconds", default="3", help="batch_throughput seconds per batch size")
    p.add_argument("--port", type=int, default=8181)
    args = p.parse_args()
    args.models = split(args.models, WIDTHS)
    args.servers = split(args.servers, {"infer", "ort", "torch"})
    args.concurrency = [int(c) for c in args.concurrency.replace(",", " ").split()]
    args.out = args.out or args.work_dir / "serving.md"
    args.variant = [parse_variant(v) for v in args.variant]
    return args


def parse_variant(value):
    label, sep, extra = value.partition("=")
    if not sep or not label:
        raise SystemExit(f"bench_serving: --variant {value!r}: write LABEL=ARGS")
    return label, shlex.split(extra)


def split(value, allowed):
    items = [v for v in value.split(",") if v]
    unknown = set(items) - set(allowed)
    if unknown or not items:
        raise SystemExit(f"bench_serving: {value!r}: choose from {', '.join(sorted(allowed))}")
    return items


def log(message):
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def run(argv, quiet=True):
    """Runs a command to completion: its stdout (when quiet), or a clear exit naming the command."""
    argv = [str(a) for a in argv]
    result = subprocess.run(argv, capture_output=quiet, text=True)
    if result.returncode != 0:
        raise SystemExit(f"bench_serving: `{shlex.join(argv)}` failed ({result.returncode})"
                         + (f":\n{result.stderr[-2000:]}" if quiet else ""))
    return result.stdout


def check_tools(args):
    if not shutil.which("hey"):
        raise SystemExit("bench_serving: hey is missing: apt-get install hey")
    needed = [(args.ceiling_bin, "cargo build --release -p infer --example batch_throughput")]
    if "infer" in args.servers:
        needed += [(args.infer_bin, "cargo build --release -p infer")]
        needed += [(args.compare_bin, "a path to an infer binary")] if args.compare_bin else []
    if "w64" in args.models and not (args.work_dir / "resnet18-w64.onnx").exists():
        needed += [(args.train_bin, "cargo build --release -p train")]
    for path, how in needed:
        if not os.access(path, os.X_OK):
            raise SystemExit(f"bench_serving: {path} is missing: {how}")


def cache_dir():
    """The project's cache, as xtask finds it."""
    if os.environ.get("RESNET_SERVERLESS_CACHE"):
        return Path(os.environ["RESNET_SERVERLESS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "resnet-serverless"


def ensure_venv():
    """The pinned venv's python, made (or completed) on first use."""
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:12]
    venv = cache_dir() / f"bench-{digest}"
    python, done = venv / "bin/python", venv / ".complete"
    if not done.exists():
        log(f"making the Python peers' venv {venv} from {REQUIREMENTS.name} (once)")
        if not python.exists():
            run([sys.executable, "-m", "venv", venv], quiet=False)
        run([python, "-m", "pip", "install", "-r", REQUIREMENTS], quiet=False)
        done.touch()
    return str(python)


def make_inputs(python, args):
    """{image name: path} and {model: path}, made into the work dir when missing."""
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    png, jpeg, w64 = work / PNG, work / JPEG, work / "resnet18-w64.onnx"
    if not png.exists():
        run(["tar", "xzf", args.cifar, "-C", work, "test/cat/0000.jpg"])
        run([python, "-c", PIL_SAVE, work / "test/cat/0000.jpg", png, ""])
        shutil.rmtree(work / "test")
    if not jpeg.exists():
        run([python, "-c", PIL_SAVE, args.road, jpeg, "640x480"])
    if "w64" in args.models and not w64.exists():
        log("making the width-64 model (random weights)")
        run([args.train_bin, "export", "--init", "--width", "64", "--out", w64])
    models = {"w16": REPO / "models/resnet18-cifar10.onnx", "w64": w64}
    return {PNG: png, JPEG: jpeg}, {m: models[m] for m in args.models}


CEILING_MODES = ("one session", "a session per CPU")


def ceiling(args, models, when):
    """ONNX Runtime alone: {model: {mode: {batch size: images/s}}} from batch_throughput's table,
    one session using every CPU and one single-threaded session per CPU."""
    result = {}
    for name, path in models.items():
        log(f"ONNX Runtime alone, {name}, {when}")
        out = run([args.ceiling_bin, path, args.ceiling_seconds])
        rows = re.findall(r"^\|\s*(\d+)\s*\|\s*([\d.]+)\s*\|\s*[\d.]+\s*\|\s*([\d.]+)\s*\|", out, re.M)
        if not rows:
            raise SystemExit(f"bench_serving: no table in {args.ceiling_bin}'s output:\n{out}")
        result[name] = {mode: {int(row[0]): float(row[1 + i]) for row in rows} for i, mode in enumerate(CEILING_MODES)}
    return result


def best(runs):
    """The highest images/s over modes and batch sizes."""
    return max(ips for by_batch in runs.values() for ips in by_batch.values())


def servers_for(model, path, python, args):
    """The servers to load for one model, in --servers order."""
    port = args.port
    infer_bins = [(args.label, args.infer_bin, [])]
    infer_bins += [(f"infer {args.compare_bin}", args.compare_bin, [])] if args.compare_bin else []
    infer_bins += [(label, args.infer_bin, extra) for label, extra in args.variant]
    infer = [Server("infer", label, model, [b, "serve", "--model", path, "--addr", f"127.0.0.1:{port}",
                                            *args.infer_arg, *extra], "/v1/predict")
             for label, b, extra in infer_bins]
    ort = [Server("ort", ORT, model, [python, SCRIPTS / "fastapi_ort_server.py", "--model", path, "--port", port],
                  "/predict")]
    torch = [Server("torch", TORCH, model, [python, SCRIPTS / "fastapi_server.py", "--width", WIDTHS[model],
                                            "--port", port], "/predict")]
    return [s for kind in args.servers for s in {"infer": infer, "ort": ort, "torch": torch}[kind]]


@contextlib.contextmanager
def serving(server, args):
    """The server's process, up and answering /healthz; always stopped afterwards."""
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", args.port)) == 0:
            raise SystemExit(f"bench_serving: port {args.port} is already in use (pick another with --port)")
    log_path = args.work_dir / "logs" / f"{re.sub(r'[^A-Za-z0-9.+-]+', '_', server.label)}-{server.model}.log"
    log_path.parent.mkdir(exist_ok=True)
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([str(a) for a in server.argv], stdout=log_file, stderr=subprocess.STDOUT)
    try:
        wait_healthy(proc, args.port, log_path)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_healthy(proc, port, log_path):
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"bench_serving: the server exited ({proc.returncode}) before answering; "
                             f"{log_path}:\n{log_path.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        time.sleep(0.1)
    raise SystemExit(f"bench_serving: no answer on /healthz after {START_TIMEOUT_S} s; see {log_path}")


def hey(url, image, c, duration):
    if image is None:
        return run(["hey", "-z", duration, "-c", c, url])
    return run(["hey", "-z", duration, "-c", c, "-m", "POST", "-T", CTYPES[image.name], "-D", image, url])


def cpu_seconds(pid):
    """User + system CPU of a process so far (its own threads; the servers fork no workers)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def load_point(server, pid, url, image, c, duration):
    """One hey run as a Point, with the CPU the server and hey spent per answered request."""
    server_before, hey_before = cpu_seconds(pid), children_cpu_seconds()
    rps, latency, errors = parse_hey(hey(url, image, c, duration))
    server_cpu, hey_cpu = cpu_seconds(pid) - server_before, children_cpu_seconds() - hey_before
    answered = rps * float(duration.rstrip("s"))
    per_request = (lambda cpu: 1e3 * cpu / answered) if answered else (lambda cpu: None)
    return Point(server.label, server.model, image.name if image else "GET /healthz", c, rps,
                 latency.get(50), latency.get(95), latency.get(99), errors,
                 per_request(server_cpu), per_request(hey_cpu))


def parse_hey(out):
    """(requests/s, {percentile: ms}, errors): non-200 responses plus failed requests."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    percentiles = re.findall(r"^\s+(\d+)% in ([\d.]+) secs", out, re.M)
    latency = {int(p): round(float(s) * 1e3, 3) for p, s in percentiles}
    status, _, failures = out.partition("Error distribution:")
    codes = re.findall(r"^\s+\[(\d+)\]\s+(\d+) responses", status, re.M)
    errors = sum(int(n) for code, n in codes if code != "200")
    errors += sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]\s", failures, re.M))
    return rps, latency, errors


def peak_rss_mb(pid):
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def measure(server, images, args):
    """The server's points for every image and concurrency, each carrying its peak RSS."""
    points = []
    with serving(server, args) as proc:
        url = f"http://127.0.0.1:{args.port}{server.route}"
        for image in images.values():
            hey(url, image, 4, args.warmup)
            for c in args.concurrency:
                point = load_point(server, proc.pid, url, image, c, args.duration)
                points.append(point)
                log(f"{server.label} {server.model} {image.name} c={c}: {point.rps:.1f} req/s, {point.errors} errors")
        if server.kind == "infer" and 8 in args.concurrency:
            # What HTTP alone costs both sides: the floor under any model's request.
            points.append(load_point(server, proc.pid, f"http://127.0.0.1:{args.port}/healthz", None, 8,
                                     args.duration))
        if proc.poll() is not None:
            raise SystemExit(f"bench_serving: {server.label} ({server.model}) exited ({proc.returncode}) "
                             f"under load; see {args.work_dir}/logs")
        rss = peak_rss_mb(proc.pid)
    for point in points:
        point.peak_rss_mb = rss
    return points


def prime_cache(server, args):
    """Starts and stops an infer server once so its graph cache exists before the measured start."""
    with serving(server, args):
        pass


def header(python):
    def git(*a):
        return run(["git", "-C", REPO, *a]).strip()

    model_name = re.search(r"Model name:\s*(.+)", run(["lscpu"]))
    dirty = " (dirty tree)" if git("status", "--porcelain") else ""
    versions = run([python, "-c", "import importlib.metadata as m; print(*(f'{p} {m.version(p)}' for p in "
                    "('onnxruntime', 'torch', 'fastapi', 'uvicorn')), sep=', ')"])
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": model_name.group(1).strip() if model_name else "unknown CPU",
        "cpus": os.cpu_count(),
        "commit": git("rev-parse", "--short", "HEAD") + dirty,
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "python": f"{python} ({versions.strip()})",
        "load_start": os.getloadavg()[0],
    }


def fmt(value, digits=1):
    return "-" if value is None else f"{value:.{digits}f}"


def results_table(points):
    lines = ["| server | model | image | c | req/s | p50 ms | p95 ms | p99 ms | errors | server CPU ms/req "
             "| hey CPU ms/req | peak RSS MB |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {p.server} | {p.model} | {p.image} | {p.concurrency} | {fmt(p.rps)} | {fmt(p.p50)} "
              f"| {fmt(p.p95)} | {fmt(p.p99)} | {p.errors} | {fmt(p.server_cpu_ms, 3)} | {fmt(p.hey_cpu_ms, 3)} "
              f"| {fmt(p.peak_rss_mb, 0)} |" for p in points]
    return lines


def ceiling_table(before, after):
    batches = sorted({b for runs in before.values() for by_batch in runs.values() for b in by_batch})
    lines = ["| model | ONNX Runtime | " + " | ".join(f"batch {b}" for b in batches) + " |",
             "|---|---|" + "---:|" * len(batches)]
    for model in before:
        for mode in CEILING_MODES:
            cells = [f"{fmt(before[model][mode].get(b))} / {fmt(after[model][mode].get(b))}" for b in batches]
            lines.append(f"| {model} | {mode} | " + " | ".join(cells) + " |")
    return lines


def targets(points, before, after, labels):
    """Rows (what, measured, goal, met: bool or None) for whatever this run measured, all at c=8."""
    return [row for label in labels for row in targets_of(points, before, after, label)]


def targets_of(points, before, after, label):
    at = {(p.server, p.model, p.image, p.concurrency): p for p in points}
    rows = []
    for model in before:
        mine = at.get((label, model, PNG, 8))
        if not mine:
            continue
        for peer in (ORT, TORCH):
            other = at.get((peer, model, PNG, 8))
            if other:
                rows.append((f"{model} PNG c=8: {label} / {peer}",
                             f"{mine.rps / other.rps:.2f}x ({mine.rps:.1f} vs {other.rps:.1f} req/s; "
                             f"p99 {fmt(mine.p99)} vs {fmt(other.p99)} ms)", "-", None))
        best_before, best_after = best(before[model]), best(after[model])
        ceiling_ips = max(best_before, best_after)
        share = 100 * mine.rps / ceiling_ips
        rows.append((f"{model} PNG c=8: {label} / ONNX Runtime alone (best mode and batch)",
                     f"{100 * mine.rps / best_before:.0f}% / {100 * mine.rps / best_after:.0f}% "
                     f"(of {best_before:.1f} / {best_after:.1f} images/s, before / after)",
                     f">= {CEILING_TARGET[model]}% of the higher", share >= CEILING_TARGET[model]))
        floor = at.get((label, model, "GET /healthz", 8))
        if floor and floor.server_cpu_ms and mine.hey_cpu_ms:
            # CPU per request if the server did nothing but run the model at ONNX Runtime's best
            # and answer HTTP, with hey on the same cores: the most any server could reach here.
            model_ms = 1e3 * (os.cpu_count() or 1) / ceiling_ips
            bound = 1e3 * (os.cpu_count() or 1) / (model_ms + floor.server_cpu_ms + mine.hey_cpu_ms)
            rows.append((f"{model} PNG c=8: bound with hey on the same cores",
                         f"{100 * bound / ceiling_ips:.0f}% ({bound:.0f} req/s = {os.cpu_count()} CPUs / "
                         f"(model {model_ms:.3f} + HTTP {floor.server_cpu_ms:.3f} + hey {mine.hey_cpu_ms:.3f} ms)); "
                         f"{label} spends {mine.server_cpu_ms:.3f} ms/request", "-", None))
        jpeg = at.get((label, model, JPEG, 8))
        if model == "w16" and jpeg:
            share = 100 * jpeg.rps / mine.rps
            rows.append((f"w16 c=8, {label}: 640x480 JPEG / 32x32 PNG",
                         f"{share:.0f}% ({jpeg.rps:.1f} vs {mine.rps:.1f} req/s)", f">= {JPEG_TARGET}%",
                         share >= JPEG_TARGET))
        ort = at.get((ORT, model, PNG, 8))
        if ort:
            share = 100 * mine.peak_rss_mb / ort.peak_rss_mb
            rows.append((f"{model}: peak RSS {label} / {ORT}",
                         f"{share:.0f}% ({mine.peak_rss_mb:.0f} vs {ort.peak_rss_mb:.0f} MB)",
                         f"<= {RSS_TARGET}%", share <= RSS_TARGET))
    return rows


def yes(met):
    return {True: "yes", False: "**no**", None: "-"}[met]


def report(head, models, points, before, after, rows):
    model_lines = [f"{name} = {path} ({path.stat().st_size / 1e6:.1f} MB)" for name, path in models.items()]
    lines = [f"# Serving benchmark, {head['date']}", "",
             f"Machine: {head['cpu']}, {head['cpus']} CPUs, load average {head['load_start']:.2f} at the start "
             f"and {head['load_end']:.2f} at the end. Commit {head['commit']}.",
             f"Command: `{head['command']}`", f"Python peers: {head['python']}",
             "Models: " + "; ".join(model_lines) + ".", "",
             "## Results", "", *results_table(points), "",
             "`-`: hey printed no such percentile (it needs about 100 requests for p99).", "",
             "## ONNX Runtime alone (images/s, before / after the load)", "", *ceiling_table(before, after), "",
             "## Targets", "", "| target | measured | goal | met |", "|---|---|---|---|",
             *(f"| {what} | {measured} | {goal} | {yes(met)} |" for what, measured, goal, met in rows)]
    return "\n".join(lines) + "\n"


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args = parse_args()
    check_tools(args)
    python = args.python or ensure_venv()
    head = header(python)
    images, models = make_inputs(python, args)
    before = ceiling(args, models, "before")
    points = []
    for model, path in models.items():
        for server in servers_for(model, path, python, args):
            if server.kind == "infer":
                prime_cache(server, args)
            points += measure(server, images, args)
    after = ceiling(args, models, "after")
    head["load_end"] = os.getloadavg()[0]
    labels = [args.label] + [label for label, _ in args.variant]
    rows = targets(points, before, after, labels)
    text = report(head, models, points, before, after, rows)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    raw = {"header": head, "models": {m: str(p) for m, p in models.items()},
           "ceiling": {"before": before, "after": after},
           "points": [dataclasses.asdict(p) for p in points],
           "targets": [dict(zip(("target", "measured", "goal", "met"), row)) for row in rows]}
    args.out.with_suffix(".json").write_text(json.dumps(raw, indent=2) + "\n")
    log(f"wrote {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("bench_serving: interrupted (servers stopped)")
