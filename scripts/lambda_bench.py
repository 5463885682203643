#!/usr/bin/env python3
"""Lambda-shaped serving figures: INIT, warm invoke latency and cost per million predictions.

    cargo xtask package --arch x86_64           # once: target/lambda/infer-x86_64.zip
    cargo build --release -p train              # once, for w64: target/release/train
    python3 scripts/lambda_bench.py [--runs 10] [--invocations 300] [--models "w16 w64"] \
        [--handlers "infer ort torch"] [--memories "512 1024 1769"] [--python PATH] \
        [--bootstrap PATH [--ort-dylib PATH] | --zip PATH] [--work-dir /tmp/lambda-bench]
    python3 scripts/lambda_bench.py --runs 2 --invocations 20        # a quick check, ~2 min

Python because the Python Lambda handlers it compares with `infer` (ONNX Runtime and PyTorch,
under awslambdaric) are, and share its venv. Stdlib only (system python3 >= 3.11); root, for the
CPU-share cgroup and a read-only mount. Uses one core for the function and the others for itself
and the emulator: run it on an otherwise quiet machine. Every function runs against cargo-lambda's
Lambda runtime API emulator (`cargo lambda watch --only-lambda-apis`, from the tools venv that
`cargo xtask setup` makes, as the Lambda tests run it), pinned to one core (`taskset -c CPU`)
with one ONNX Runtime / PyTorch thread: Lambda at 1769 MB.

- INIT: process start to its first `GET /2018-06-01/runtime/invocation/next` (when the emulator
  logs its arrival), `--runs` times.
  `infer` twice: as Lambda runs it by default (no graph cache: optimises the graph at every
  start) and with the optimised graph prepared at package time (`INFER_CACHE_DIR` filled by one
  earlier start of the same binary, then mounted read-only, like /var/task).
- Warm: `--invocations` API Gateway HTTP API (v2) events (`POST /v1/predict`, base64 body) one at
  a time, timed from the invoke POST to the emulator's answer (so the emulator's loopback hops
  are in it); each answer must be a 200 whose JSON names a CIFAR-10 label. Two images: a 32x32
  PNG (the first CIFAR-10 test cat) and a 640x480 JPEG (a road photograph, quality 90). One
  un-timed invoke per image first (reported as "first").
- Below 1769 MB Lambda gives a proportional CPU share: the warm runs are repeated in a cgroup
  whose CFS quota is memory/1769 of one core per 100 ms period (`--cfs-period-us`; Lambda's
  period is not published). Back-to-back invocations use up the quota: the worst case. Without a
  usable cgroup (or with `--no-cgroup`) the one-core durations are scaled by 1769/memory.
- Cost at the arm64 price, like AWS Lambda Power Tuning: the p50 billed in whole ms x memory plus
  the request price, and the same from the mean of the billed durations; and the cost of INIT
  (billed for every configuration since 2025-08-01). x86 durations on this CPU stand in for
  Graviton's.

The Python handlers (scripts/lambda_handler_ort.py, scripts/lambda_handler_torch.py) run through
the official runtime interface client, `python -m awslambdaric`. Their python is, by default,
scripts/bench-requirements.txt's venv (~/.cache/resnet-serverless/bench-<hash>, the one
scripts/bench_serving.py uses; made on first use, torch is large) with awslambdaric installed into
a directory of its own beside it; `--python` names another (with torch, onnxruntime, pillow,
awslambdaric). That python also makes the images (PIL); the width-64 model is a freshly
initialised network from `train export --init --width 64` (--train-bin).

Writes WORK_DIR/lambda.md (the tables, also printed) and WORK_DIR/lambda.json (raw numbers).
"""

import argparse
import base64
import concurrent.futures
import contextlib
import datetime
import hashlib
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"
EVENT_TEMPLATE = REPO / "infer" / "src" / "testing" / "api_gateway_v2_event.json"
BUNDLED_MODEL = REPO / "models" / "resnet18-cifar10.onnx"
CIFAR_TAR = REPO.parent / "shared" / "data" / "cifar10-jpg.tar.gz"
ROAD_JPEG = REPO.parent / "shared" / "data" / "images" / "road-solidWhiteRight.jpg"
CLASSES = {"airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"}

FULL_CORE_MB = 1769  # Lambda: one vCPU at 1769 MB, a proportional share below
CFS_PERIOD_US = 100_000  # the kernel's default; Lambda's is not published
# arm64, us-east-1, first tier (https://aws.amazon.com/lambda/pricing/).
PRICE_GB_SECOND = 0.0000133334
PRICE_PER_REQUEST = 0.20 / 1e6

# The Python handlers' packages: scripts/bench-requirements.txt's venv (the one
# scripts/bench_serving.py makes) and, beside it, the runtime interface client.
REQUIREMENTS = SCRIPTS / "bench-requirements.txt"
AWSLAMBDARIC = "awslambdaric==4.2.2"

REGION = "eu-west-1"
FUNCTION_NAME = "infer-bench"
# cargo-lambda's name for the one function of a project, which the runtime API's bare
# `/.rt/2018-06-01/...` paths serve.
EMULATED_FUNCTION = "_"
CARGO_LAMBDA = REPO / ".native" / "tools" / "bin" / "cargo-lambda"


class BenchError(Exception):
    """A failure that stops the benchmark, with a message for the user."""


def log_tail(path, lines=15):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------
# The Runtime API: cargo-lambda's emulator


@dataclass
class Outcome:
    """The emulator's answer to one invocation; times are perf_counter_ns."""

    kind: str  # "response" or "error"
    body: bytes
    sent_ns: int
    received_ns: int

    @property
    def ms(self):
        return (self.received_ns - self.sent_ns) / 1e6


class RuntimeApi:
    """cargo-lambda's Lambda runtime API (`cargo lambda watch --only-lambda-apis`, the one the
    Lambda tests use) for one function process. INIT ends at the function's first
    `GET .../invocation/next`, timed when the emulator's request log (tower-http's, at debug)
    says it arrived; an invocation is timed from its POST to the emulator's answer. Both on this
    script's monotonic clock."""

    NEXT = b"/.rt/2018-06-01/runtime/invocation/next"

    def __init__(self, cargo_lambda, log_path, timeout_s=60):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._command = [str(cargo_lambda), "lambda", "watch", "--only-lambda-apis",
                         "--invoke-address", "127.0.0.1", "--invoke-port", str(self.port)]
        self._log_path, self._timeout_s = log_path, timeout_s
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self._first_next = threading.Event()
        self.first_next_ns = None

    def address(self, function):
        """AWS_LAMBDA_RUNTIME_API for `function`: awslambdaric puts `http://` before it itself;
        lambda_runtime takes the base URL as it is, and cannot parse a path without a scheme."""
        base = f"127.0.0.1:{self.port}/.rt"
        return f"http://{base}" if function.handler == "infer" else base

    def __enter__(self):
        if not Path(self._command[0]).is_file():
            raise BenchError(f"no {self._command[0]}: `cargo xtask setup` installs cargo-lambda")
        env = os.environ | {"RUST_LOG": "cargo_lambda=info,tower_http=debug", "NO_COLOR": "1"}
        # `cargo lambda watch` reads a cargo project even when it builds nothing: infer's.
        self._proc = subprocess.Popen(self._command, cwd=REPO / "infer", env=env, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self._reader = threading.Thread(target=self._read_log, name="emulator-log", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + self._timeout_s
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                break
            if self._proc.poll() is not None or time.monotonic() > deadline:
                stop(self._proc)
                raise BenchError(f"cargo lambda watch did not listen on {self.port}\n{log_tail(self._log_path)}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self._pool.shutdown(wait=False, cancel_futures=True)
        stop(self._proc)
        self._reader.join(timeout=5)

    def _read_log(self):
        """Copies the emulator's log to its file, noting when the first `/next` arrived."""
        with open(self._log_path, "wb") as log:
            for line in self._proc.stdout:
                if self.first_next_ns is None and self.NEXT in line and b"started processing request" in line:
                    self.first_next_ns = time.perf_counter_ns()
                    self._first_next.set()
                log.write(line)

    def wait_for_init(self, proc, timeout_s, log_path):
        """The perf_counter_ns of the function's first `/next`; raises if it exits first or
        takes longer than `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while not self._first_next.wait(0.005):
            if proc.poll() is not None:
                raise BenchError(f"the function exited ({proc.returncode}) during INIT\n{log_tail(log_path)}")
            if time.monotonic() > deadline:
                raise BenchError(f"no /next within {timeout_s} s of the start\n{log_tail(log_path)}")
        return self.first_next_ns

    def invoke(self, event, timeout_s, proc, log_path):
        """Sends `event` (bytes) and waits for the Outcome, failing at once if the function exits
        meanwhile (the emulator would hold the request for ever)."""
        url = f"http://127.0.0.1:{self.port}/2015-03-31/functions/{EMULATED_FUNCTION}/invocations"

        def post():
            sent = time.perf_counter_ns()
            try:
                with urllib.request.urlopen(urllib.request.Request(url, data=event, method="POST")) as answer:
                    return Outcome("response", answer.read(), sent, time.perf_counter_ns())
            except urllib.error.HTTPError as e:  # the function posted an error
                return Outcome("error", e.read(), sent, time.perf_counter_ns())

        future, deadline = self._pool.submit(post), time.monotonic() + timeout_s
        while True:
            try:
                return future.result(timeout=0.05)
            except concurrent.futures.TimeoutError:
                if proc.poll() is not None:
                    raise BenchError(f"the function exited ({proc.returncode})\n{log_tail(log_path)}") from None
                if time.monotonic() > deadline:
                    raise BenchError(f"no answer within {timeout_s} s\n{log_tail(log_path)}") from None


# ---------------------------------------------------------------------------------------------
# Functions under test


@dataclass
class Model:
    name: str  # "w16" or "w64"
    width: int
    path: Path


@dataclass
class Function:
    """One way of serving one model: a command, its environment, and how INIT is prepared."""

    handler: str  # "infer", "ort", "torch"
    model: Model
    command: list
    env: dict
    cwd: Path
    graph: str = ""  # infer: "optimised at start" or "prepared"

    @property
    def label(self):
        names = {"infer": "infer (Rust)", "ort": "Python ORT", "torch": "Python PyTorch"}
        return names[self.handler]


def lambda_env(memory_mb, task_root, runtime_api):
    """The variables Lambda sets that the runtimes read (lambda_runtime requires the first five)."""
    return {
        "AWS_LAMBDA_FUNCTION_NAME": FUNCTION_NAME,
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory_mb),
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{FUNCTION_NAME}",
        "AWS_LAMBDA_LOG_STREAM_NAME": "2026/01/01/[$LATEST]0123456789abcdef",
        "AWS_LAMBDA_RUNTIME_API": runtime_api,
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        "LAMBDA_TASK_ROOT": str(task_root),
        "LAMBDA_RUNTIME_DIR": str(task_root),
        "LD_LIBRARY_PATH": str(task_root),
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "en_US.UTF-8",
        "TZ": ":UTC",
        # infer turns ONNX Runtime's telemetry off itself; the same for the Python handlers.
        "ORT_DISABLE_TELEMETRY": "1",
    }


def infer_function(bootstrap, model, cache_dir=None):
    env = {
        "MODEL_URI": str(model.path),
        "INFER_THREADS": "1",
        "RUST_LOG": "info",  # infra/template.yaml's
        "_HANDLER": "bootstrap",
    }
    dylib = bootstrap.parent / "libonnxruntime.so"
    if dylib.is_file():
        env["ORT_DYLIB_PATH"] = str(dylib)  # as infra/template.yaml names it
    if cache_dir is not None:
        env["INFER_CACHE_DIR"] = str(cache_dir)
    graph = "prepared at package time" if cache_dir else "optimised at start (default)"
    return Function("infer", model, [str(bootstrap)], env, bootstrap.parent, graph)


def python_function(handler, python, model):
    module = {"ort": "lambda_handler_ort", "torch": "lambda_handler_torch"}[handler]
    env = {
        "_HANDLER": f"{module}.handler",
        "PYTHONPATH": os.pathsep.join(str(p) for p in (SCRIPTS, python.extra_path) if p),
        "MODEL_PATH": str(model.path),
        "MODEL_WIDTH": str(model.width),
        "OMP_NUM_THREADS": "1",
    }
    return Function(handler, model, [str(python.path), "-m", "awslambdaric", f"{module}.handler"], env, SCRIPTS)


# ---------------------------------------------------------------------------------------------
# Processes, CPU share, read-only mounts


class CpuShare:
    """A cgroup with a CFS quota of `fraction` of one core per `period_us` (v2 `cpu.max`, or
    v1 `cpu.cfs_quota_us` where the cpu controller is on v1, as in this container)."""

    def __init__(self, kind, path, fraction, period_us):
        self.kind, self.path, self.fraction, self.period_us = kind, path, fraction, period_us

    @property
    def quota_us(self):
        return round(self.period_us * self.fraction)

    @property
    def procs(self):
        return self.path / "cgroup.procs"

    def describe(self):
        if self.kind == "v2":
            return f"cgroup v2 cpu.max \"{self.quota_us} {self.period_us}\""
        return f"cgroup v1 cpu.cfs_quota_us={self.quota_us} cpu.cfs_period_us={self.period_us}"

    def throttled(self):
        """(periods throttled, total periods) from cpu.stat."""
        try:
            stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines())
            return int(stat.get("nr_throttled", 0)), int(stat.get("nr_periods", 0))
        except (OSError, ValueError):
            return None

    def remove(self):
        with contextlib.suppress(OSError):
            self.path.rmdir()


def cgroup_support():
    """('v2'|'v1', parent directory) where a CPU quota can be set here, else (None, reason)."""
    v2 = Path("/sys/fs/cgroup")
    controllers = v2 / "cgroup.controllers"
    if controllers.is_file() and "cpu" in controllers.read_text().split():
        try:
            subtree = v2 / "cgroup.subtree_control"
            if "cpu" not in subtree.read_text().split():
                subtree.write_text("+cpu")
            probe = make_share("v2", v2, 0.5)
            probe.remove()
            return "v2", v2
        except OSError as e:
            return None, f"cgroup v2 has the cpu controller but it cannot be used here: {e}"
    v1 = Path("/sys/fs/cgroup/cpu")
    if (v1 / "cpu.cfs_quota_us").is_file():
        try:
            make_share("v1", v1, 0.5).remove()
            return "v1", v1
        except OSError as e:
            return None, f"cgroup v1 cpu controller is not writable: {e}"
    return None, "no cgroup cpu controller (neither v2 cpu.max nor v1 cpu.cfs_quota_us)"


def make_share(kind, parent, fraction, period_us=CFS_PERIOD_US):
    path = parent / f"lambda-bench-{os.getpid()}-{round(fraction * 1e4)}"
    path.mkdir(exist_ok=True)
    share = CpuShare(kind, path, fraction, period_us)
    try:
        if kind == "v2":
            (path / "cpu.max").write_text(f"{share.quota_us} {period_us}")
        else:
            (path / "cpu.cfs_period_us").write_text(str(period_us))
            (path / "cpu.cfs_quota_us").write_text(str(share.quota_us))
    except OSError:
        share.remove()
        raise
    return share


@contextlib.contextmanager
def started(function, runtime_api, memory_mb, cpu, log_path, share=None):
    """Starts `function` pinned to `cpu` (in `share`'s cgroup when given) and yields
    (process, perf_counter_ns at the start); kills its process group on the way out."""
    command = ["taskset", "-c", str(cpu), *function.command]
    if share is not None:
        # The shell joins the cgroup, then becomes the function: the function starts inside it.
        command = ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(share.procs), *command]
    env = lambda_env(memory_mb, function.cwd, runtime_api) | function.env
    with open(log_path, "wb") as log:
        start_ns = time.perf_counter_ns()
        proc = subprocess.Popen(
            command,
            env=env,
            cwd=function.cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield proc, start_ns
        finally:
            stop(proc)


def stop(proc):
    """Kills the process group of our own child `proc` (its own session) and reaps it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


@contextlib.contextmanager
def read_only(path):
    """`path` mounted read-only over itself (as /var/task is on Lambda); yields how."""
    mounted = False
    try:
        subprocess.run(["mount", "--bind", str(path), str(path)], check=True, capture_output=True)
        mounted = True
        subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True, capture_output=True)
        how = "read-only bind mount"
    except (OSError, subprocess.CalledProcessError) as e:
        subprocess.run(["chmod", "-R", "a-w", str(path)], check=False)
        how = f"chmod a-w only (mount failed: {getattr(e, 'stderr', b'') or e}); root can still write"
    try:
        yield how
    finally:
        if mounted:
            subprocess.run(["umount", str(path)], check=False, capture_output=True)
        subprocess.run(["chmod", "-R", "u+w", str(path)], check=False)


def unmount_leftovers(path):
    """Undoes mounts that an interrupted earlier run left under `path`."""
    with open("/proc/self/mounts") as mounts:
        targets = [line.split()[1] for line in mounts if line.split()[1].startswith(str(path))]
    for target in sorted(targets, reverse=True):
        subprocess.run(["umount", target], check=False, capture_output=True)


# ---------------------------------------------------------------------------------------------
# Measurements


def init_components(function, log_path):
    """What the function's own log says about its INIT: infer's model load (ms, graph cache
    outcome); the Python handlers' import and model times."""
    text = Path(log_path).read_text(errors="replace")
    if function.handler == "infer":
        for line in text.splitlines():
            if "model loaded and warmed up" in line:
                ms = re.search(r"\bms=([0-9.]+)", line)
                cache = re.search(r"graph_cache=(\w+)", line)
                return {"model_load_ms": float(ms.group(1)) if ms else None, "graph_cache": cache.group(1) if cache else None}
        return {}
    for line in text.splitlines():
        if line.startswith("lambda-bench-init "):
            return json.loads(line.split(" ", 1)[1])
    return {}


def cpu_ms(pid):
    """CPU time (user + system, every thread) of process `pid` so far, in 10 ms clock ticks."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def measure_init(function, memory_mb, cpu, log_path, timeout_s, share=None):
    """One cold start to the first /next: (ms, components)."""
    with RuntimeApi(CARGO_LAMBDA, f"{log_path}.emulator") as api, \
            started(function, api.address(function), memory_mb, cpu, log_path, share) as (proc, start_ns):
        first_next = api.wait_for_init(proc, timeout_s, log_path)
        used = cpu_ms(proc.pid)  # waiting in /next now: this is INIT's
    return (first_next - start_ns) / 1e6, init_components(function, log_path) | {"cpu_ms": used}


def check_answer(outcome, log_path):
    """The answer must be a 200 whose JSON body names a CIFAR-10 label; returns the label."""
    if outcome.kind != "response":
        raise BenchError(f"the function posted an error: {outcome.body[:500]!r}\n{log_tail(log_path)}")
    reply = json.loads(outcome.body)
    body = reply.get("body", "")
    if reply.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    if reply.get("statusCode") != 200:
        raise BenchError(f"statusCode {reply.get('statusCode')}: {body[:500]}")
    label = json.loads(body)["predictions"][0]["label"]
    if label not in CLASSES:
        raise BenchError(f"not a CIFAR-10 label: {label!r}")
    return label


def measure_warm(function, memory_mb, cpu, images, invocations, log_path, timeouts, share=None):
    """INIT, then per image one un-timed invoke and `invocations` timed ones (batch 1)."""
    result = {"memory_mb": memory_mb, "images": {}}
    with RuntimeApi(CARGO_LAMBDA, f"{log_path}.emulator") as api, \
            started(function, api.address(function), memory_mb, cpu, log_path, share) as (proc, start_ns):
        result["init_ms"] = (api.wait_for_init(proc, timeouts["init"], log_path) - start_ns) / 1e6
        result["init_cpu_ms"] = cpu_ms(proc.pid)
        for image in images:
            first = api.invoke(image.event, timeouts["invoke"], proc, log_path)
            label = check_answer(first, log_path)
            times = []
            for _ in range(invocations):
                outcome = api.invoke(image.event, timeouts["invoke"], proc, log_path)
                check_answer(outcome, log_path)
                times.append(outcome.ms)
            result["images"][image.name] = {"first_ms": first.ms, "label": label, "ms": times}
    if share is not None:
        result["cgroup"] = share.describe()
        result["throttled_periods"] = share.throttled()
    result["init_components"] = init_components(function, log_path)
    return result


def prepare_graph_cache(function, cache_dir, cpu, log_path, timeout_s):
    """Fills `cache_dir` with one start of the same binary, as a packaging step would, and drops
    the digest notes: they name the file's inode and times, which a package does not keep."""
    shutil.rmtree(cache_dir, ignore_errors=True)
    cache_dir.mkdir(parents=True)
    filling = Function(function.handler, function.model, function.command, function.env | {"INFER_CACHE_DIR": str(cache_dir)}, function.cwd)
    measure_init(filling, FULL_CORE_MB, cpu, log_path, timeout_s)
    outcome = init_components(filling, log_path).get("graph_cache")
    if outcome != "Stored":
        raise BenchError(f"preparing the graph cache: graph_cache={outcome}, expected Stored\n{log_tail(log_path)}")
    shutil.rmtree(cache_dir / "digests", ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Inputs


@dataclass
class Image:
    name: str
    content_type: str
    path: Path
    event: bytes = field(default=b"", repr=False)


IMAGE_SCRIPT = r"""
import sys
from PIL import Image
cat, road, png, jpeg = sys.argv[1:5]
Image.open(cat).convert("RGB").save(png, format="PNG")
Image.open(road).convert("RGB").resize((640, 480), Image.BILINEAR).save(jpeg, format="JPEG", quality=90)
"""


def prepare_images(python, work):
    """The 32x32 PNG (the first CIFAR-10 test cat) and the 640x480 JPEG, as API Gateway events."""
    png, jpeg = work / "inputs" / "cat-32x32.png", work / "inputs" / "road-640x480.jpg"
    if not (png.is_file() and jpeg.is_file()):
        for source in (CIFAR_TAR, ROAD_JPEG):
            if not source.is_file():
                raise BenchError(f"missing input {source}")
        png.parent.mkdir(parents=True, exist_ok=True)
        member = "test/cat/0000.jpg"
        run(["tar", "xzf", str(CIFAR_TAR), "-C", str(png.parent), member], "extracting the CIFAR-10 cat")
        run([str(python), "-c", IMAGE_SCRIPT, str(png.parent / member), str(ROAD_JPEG), str(png), str(jpeg)], "making the images (PIL)")
    images = [Image("png-32x32", "image/png", png), Image("jpeg-640x480", "image/jpeg", jpeg)]
    template = json.loads(EVENT_TEMPLATE.read_text())
    for image in images:
        image.event = api_gateway_event(template, image)
    return images


def api_gateway_event(template, image):
    event = json.loads(json.dumps(template))
    event["rawPath"] = event["requestContext"]["http"]["path"] = "/v1/predict"
    event["headers"]["content-type"] = image.content_type
    event["body"] = base64.b64encode(image.path.read_bytes()).decode()
    event["isBase64Encoded"] = True
    return json.dumps(event).encode()


def prepare_models(names, train, work):
    """The models as files with their sha256 sidecars under WORK_DIR/models; `train` (export
    --init) makes the width-64 one once."""
    models = []
    for name in names:
        if name == "w16":
            models.append(Model(name, 16, copy_with_sidecar(BUNDLED_MODEL, work / "models")))
        elif name == "w64":
            out = work / "models" / "resnet18-w64.onnx"
            if not (out.is_file() and Path(f"{out}.sha256").is_file()):
                out.parent.mkdir(parents=True, exist_ok=True)
                if not os.access(train, os.X_OK):
                    raise BenchError(f"{train} is missing for making the width-64 model: cargo build --release -p train, or pass --train-bin")
                run([str(train), "export", "--init", "--width", "64", "--out", str(out)], "making the width-64 model", cwd=work)
            models.append(Model(name, 64, out))
        else:
            raise BenchError(f"unknown model {name!r}: w16 (bundled) or w64")
    return models


def copy_with_sidecar(model, directory):
    directory.mkdir(parents=True, exist_ok=True)
    for source in (model, Path(f"{model}.sha256")):
        target = directory / source.name
        if not target.is_file() or target.read_bytes() != source.read_bytes():
            shutil.copyfile(source, target)
    return directory / model.name


@dataclass
class Python:
    """The handlers' interpreter, and a directory to put on PYTHONPATH (awslambdaric) or None."""

    path: Path
    extra_path: Path = None

    def __str__(self):
        return f"{self.path}" + (f" + {self.extra_path}" if self.extra_path else "")


def cache_dir():
    """The project's cache, as xtask finds it."""
    if os.environ.get("RESNET_SERVERLESS_CACHE"):
        return Path(os.environ["RESNET_SERVERLESS_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "resnet-serverless"


def prepare_python(args):
    """--python as it is; by default scripts/bench-requirements.txt's venv, made on first use
    under the same name as scripts/bench_serving.py gives it, with awslambdaric installed into a
    directory of its own beside it (the shared venv is left as that file describes it)."""
    if args.python:
        return Python(Path(args.python))
    if not REQUIREMENTS.is_file():
        raise BenchError(f"no {REQUIREMENTS}: pass --python (torch, onnxruntime, pillow, awslambdaric)")
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:12]
    venv = cache_dir() / f"bench-{digest}"
    python = venv / "bin" / "python"
    if not (venv / ".complete").exists():
        progress(f"making the Python venv {venv} from {REQUIREMENTS.name} (once; torch is large)")
        if not python.exists():
            run([sys.executable, "-m", "venv", str(venv)], "making the venv")
        run([str(python), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)], "pip install -r bench-requirements.txt")
        (venv / ".complete").touch()
    ric = cache_dir() / f"lambda-ric-{hashlib.sha256(f'{digest} {AWSLAMBDARIC}'.encode()).hexdigest()[:12]}"
    if not (ric / ".complete").exists():
        progress(f"installing {AWSLAMBDARIC} into {ric} (once)")
        run([str(python), "-m", "pip", "install", "-q", "--target", str(ric), AWSLAMBDARIC], f"pip install {AWSLAMBDARIC}")
        (ric / ".complete").touch()
    return Python(python, ric)


def prepare_bootstrap(args, work):
    """WORK_DIR/task laid out as the Lambda zip is (`bootstrap` and `libonnxruntime.so` side by
    side): the packaged zip unzipped, or --bootstrap and --ort-dylib copied there."""
    task = work / "task"
    shutil.rmtree(task, ignore_errors=True)
    task.mkdir(parents=True)
    if args.bootstrap:
        binary, dylib = Path(args.bootstrap), Path(args.ort_dylib).resolve()
        for path in (binary, dylib):
            if not path.is_file():
                raise BenchError(f"no such file: {path}")
        shutil.copy2(binary, task / "bootstrap")
        shutil.copy2(dylib, task / "libonnxruntime.so")
        return task / "bootstrap", f"{binary} as bootstrap, with {dylib} (not the packaged zip)"
    archive = Path(args.zip)
    if not archive.is_file():
        raise BenchError(f"no {archive}: run `cargo xtask package --arch x86_64` first, or pass --bootstrap")
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(task)
        names = zf.namelist()
        for info in zf.infolist():  # extractall does not keep the executable bit
            (task / info.filename).chmod(((info.external_attr >> 16) & 0o777) or 0o755)
    if not (task / "bootstrap").is_file():
        raise BenchError(f"{archive} has no bootstrap (holds {names})")
    return task / "bootstrap", f"{archive} ({', '.join(sorted(names))})"


def run(command, what, cwd=None):
    # Not from the repository root by default: its `onnx/` (a Rust crate) imports as a namespace package.
    done = subprocess.run(command, capture_output=True, text=True, cwd=cwd or "/")
    if done.returncode != 0:
        raise BenchError(f"{what} failed ({done.returncode}): {shlex.join(command)}\n{done.stderr[-2000:]}")
    return done.stdout


# ---------------------------------------------------------------------------------------------
# Statistics, cost, report


def percentile(values, q):
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def summary(values):
    return {
        "n": len(values),
        "p50": statistics.median(values),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values),
        "mean": statistics.fmean(values),
    }


def cost_per_million(billed_ms, memory_mb, requests=True):
    """Dollars per million invocations billed `billed_ms` each (whole ms) at `memory_mb`."""
    duration = billed_ms / 1000 * memory_mb / 1024 * PRICE_GB_SECOND
    return 1e6 * (duration + (PRICE_PER_REQUEST if requests else 0.0))


def environment_facts(args):
    def output(command):
        try:
            return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    cpu = next(
        (line.split(":", 1)[1].strip() for line in output(["lscpu"]).splitlines() if line.startswith("Model name")),
        platform.processor() or "unknown",
    )
    commit = output(["git", "rev-parse", "--short=12", "HEAD"]) or "unknown"
    dirty = bool(output(["git", "status", "--porcelain", "--untracked-files=no"]))
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "cpu": cpu,
        "commit": commit + ("+dirty" if dirty else ""),
        "command": shlex.join(["python3", *sys.argv]),
    }


def fmt(value, digits=1):
    return "-" if value is None else f"{value:.{digits}f}"


def render(report):
    facts, lines = report["facts"], []
    add = lines.append
    add("# Lambda-shaped serving: INIT, warm latency, cost")
    add("")
    add(f"{facts['date_utc']} UTC · {facts['cpu']} · commit {facts['commit']}  ")
    add(f"`{facts['command']}`")
    add("")
    add(f"- Bootstrap: {report['bootstrap']}; Python handlers: {report['python']} ({report['python_versions']}) via awslambdaric.")
    add(f"- One core (`taskset -c {report['cpu']}`), `INFER_THREADS=1` / 1 intra-op thread: Lambda at {FULL_CORE_MB} MB. "
        "cargo-lambda's runtime API emulator; times from this script's monotonic clock.")
    add(f"- CPU share below {FULL_CORE_MB} MB: {report['cpu_share']}.")
    add("- x86-64 durations on this CPU stand in for Graviton (arm64) ones; prices are arm64's.")
    add("")
    add(f"## INIT at {FULL_CORE_MB} MB (process start to first `/next`, {report['runs']} runs)")
    add("")
    add("| handler | model | graph | median ms | p90 ms | max ms | components (median) |")
    add("| --- | --- | --- | ---: | ---: | ---: | --- |")
    for row in report["init"]:
        s = row["summary"]
        add(f"| {row['label']} | {row['model']} | {row['graph'] or '-'} | {fmt(s['p50'])} | {fmt(s['p90'])} | {fmt(s['max'])} | {row['components']} |")
    add("")
    add(f"## Warm invoke latency, batch 1 ({report['invocations']} invocations; invoke POST to answer)")
    add("")
    add("| handler | model | image | memory MB | CPU share | p50 ms | p99 ms | mean ms | first ms | INIT ms (1 run) |")
    add("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in report["warm"]:
        s = row["summary"]
        add(f"| {row['label']} | {row['model']} | {row['image']} | {row['memory_mb']} | {row['share']} | {fmt(s['p50'], 2)} | "
            f"{fmt(s['p99'], 2)} | {fmt(s['mean'], 2)} | {fmt(row['first_ms'], 2)} | {fmt(row['init_ms'])} |")
    add("")
    add("## Cost (arm64 price)")
    add("")
    add(f"Per million predictions: billed ms x memory (GB = MB/1024) x ${PRICE_GB_SECOND:.10f}/GB-s + "
        f"${PRICE_PER_REQUEST * 1e6:.2f} per million requests; billed ms = ceil(p50) as Power Tuning does, and the mean of "
        "ceil(each duration), the bill of the measured run. Per cold start: ceil(INIT ms) x memory x the same rate, per "
        "million cold starts (INIT is billed for every configuration since 2025-08-01; it always was for custom runtimes "
        "such as `provided.al2023`). INIT below 1769 MB is the one run under that quota.")
    add("")
    add("| handler | model | image | memory MB | billed p50 ms | billed mean ms | p99 ms | $/1M (p50) | $/1M (billed mean) | INIT ms | $/1M cold starts |")
    add("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in report["cost"]:
        add(f"| {row['label']} | {row['model']} | {row['image']} | {row['memory_mb']} | {row['billed_p50_ms']} | "
            f"{row['billed_mean_ms']:.2f} | {fmt(row['p99'], 2)} | {row['per_million']:.3f} | {row['per_million_mean']:.3f} | "
            f"{fmt(row['init_ms'])} | {row['per_million_cold']:.2f} |")
    add("")
    add(f"**Recommendation.** {report['recommendation']}")
    add("")
    add("Prices: AWS Lambda pricing, arm64, US East (N. Virginia), first tier: $0.0000133334 per GB-second, "
        "$0.20 per million requests (https://aws.amazon.com/lambda/pricing/); INIT billing: AWS Compute Blog, "
        "\"AWS Lambda standardizes billing for INIT Phase\" (2025). GB = MB/1024.")
    return "\n".join(lines) + "\n"


def cost_rows(warm_rows, init_rows):
    """Per warm row: the bill per million predictions from the p50 (as Power Tuning does) and from
    the mean of the billed durations (each rounded up to 1 ms: the actual bill of the measured
    run), and the bill of one cold start's INIT per million."""
    init_default = {(r["handler"], r["model"]): r["summary"]["p50"] for r in init_rows if "prepared" not in r["graph"]}
    rows = []
    for row in warm_rows:
        memory, p50 = row["memory_mb"], row["summary"]["p50"]
        billed_mean = statistics.fmean(math.ceil(t) for t in row["ms"])
        # The cold start at this share: measured (1 run) under a quota, the median at one core.
        init_ms = row["init_ms"] if memory < FULL_CORE_MB else init_default.get((row["handler"], row["model"]), row["init_ms"])
        rows.append({
            "handler": row["handler"], "label": row["label"], "model": row["model"], "image": row["image"],
            "memory_mb": memory, "billed_p50_ms": math.ceil(p50), "billed_mean_ms": billed_mean, "p99": row["summary"]["p99"],
            "per_million": cost_per_million(math.ceil(p50), memory),
            "per_million_mean": cost_per_million(billed_mean, memory),
            "init_ms": init_ms, "per_million_cold": cost_per_million(math.ceil(init_ms), memory, requests=False),
        })
    return rows


def recommend(cost, budget_ms):
    """The cheapest memory (by the p50 bill, the worse of the two images) at which the bundled
    model (infer w16) keeps p99 under `budget_ms` for both images."""
    candidates = {}
    for row in cost:
        if row["handler"] == "infer" and row["model"] == "w16":
            c = candidates.setdefault(row["memory_mb"], {"p99": 0.0, "cost": 0.0, "cost_mean": 0.0})
            for key, value in (("p99", row["p99"]), ("cost", row["per_million"]), ("cost_mean", row["per_million_mean"])):
                c[key] = max(c[key], value)
    if not candidates:
        return "no figures for infer with the bundled model (w16): run with --handlers infer --models w16."
    figures = "; ".join(
        f"{m} MB: ${c['cost']:.2f} per 1M by p50 (${c['cost_mean']:.2f} by billed mean), worst p99 {c['p99']:.1f} ms"
        for m, c in sorted(candidates.items())
    )
    ok = {m: c for m, c in candidates.items() if c["p99"] < budget_ms}
    if not ok:
        return f"no measured memory keeps p99 under {budget_ms:g} ms for infer w16 ({figures})."
    best = min(ok, key=lambda m: (round(ok[m]["cost"], 4), m))
    by_mean = min(ok, key=lambda m: (round(ok[m]["cost_mean"], 4), m))
    also = "" if by_mean == best else f" By the billed mean (the saturated worst case) it would be {by_mean} MB."
    return (f"MemorySize {best} MB: the cheapest per million predictions (p50 bill) at which infer with the bundled "
            f"model keeps p99 under {budget_ms:g} ms at batch 1 for both images ({figures}).{also}")


# ---------------------------------------------------------------------------------------------
# Main


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10, help="cold starts per INIT figure (default 10)")
    parser.add_argument("--invocations", type=int, default=300, help="timed warm invocations per image (default 300)")
    parser.add_argument("--models", default="w16 w64", help='"w16" (bundled) and/or "w64" (made with train export --init)')
    parser.add_argument("--handlers", default="infer ort torch", help='any of "infer ort torch"')
    parser.add_argument("--memories", default="512 1024 1769", help="Lambda memory sizes in MB (default \"512 1024 1769\")")
    parser.add_argument("--python", help="python with torch, onnxruntime, pillow, awslambdaric "
                        "[default: scripts/bench-requirements.txt's venv, made once, plus awslambdaric]")
    parser.add_argument("--train-bin", default=str(REPO / "target" / "release" / "train"),
                        help="the train binary that makes the width-64 model (default target/release/train)")
    parser.add_argument("--bootstrap", help="an x86-64 infer binary to run instead of the packaged zip's bootstrap")
    parser.add_argument("--ort-dylib", default=str(REPO / ".native" / "onnxruntime" / "x86_64" / "libonnxruntime.so"),
                        help="with --bootstrap: the libonnxruntime.so put beside it (default .native/onnxruntime/x86_64/)")
    parser.add_argument("--zip", default=str(REPO / "target" / "lambda" / "infer-x86_64.zip"), help="the packaged function (default target/lambda/infer-x86_64.zip)")
    parser.add_argument("--work-dir", default="/tmp/lambda-bench", help="where inputs, the unzipped task and the results go")
    parser.add_argument("--cpu", type=int, default=1, help="the core every function is pinned to (default 1)")
    parser.add_argument("--cfs-period-us", type=int, default=CFS_PERIOD_US, help="CFS period of the CPU quota (default 100000)")
    parser.add_argument("--no-cgroup", action="store_true", help="scale one-core durations by 1769/memory instead of setting a CPU quota")
    parser.add_argument("--p99-budget-ms", type=float, default=100.0, help="p99 the recommendation must stay under (default 100)")
    parser.add_argument("--init-timeout", type=float, default=120.0, help="seconds one INIT may take")
    parser.add_argument("--invoke-timeout", type=float, default=30.0, help="seconds one invocation may take")
    args = parser.parse_args()
    args.models = args.models.split()
    args.handlers = args.handlers.split()
    args.memories = sorted({int(m) for m in args.memories.split()})
    unknown = set(args.handlers) - {"infer", "ort", "torch"}
    if unknown:
        parser.error(f"unknown handlers {sorted(unknown)}: choose from infer, ort, torch")
    if args.runs < 1 or args.invocations < 1 or not args.memories or min(args.memories) < 128:
        parser.error("--runs and --invocations must be positive, --memories at least 128")
    return args


def python_versions(python):
    """The handlers' python and its packages, e.g. "Python 3.11.7, torch 2.11.0, ..."."""
    env = os.environ | ({"PYTHONPATH": str(python.extra_path)} if python.extra_path else {})
    code = """
import importlib.metadata as m, platform
def version(p):
    try:
        return m.version(p)
    except m.PackageNotFoundError:
        return "absent"
print(f"Python {platform.python_version()}, " + ", ".join(
    f"{p} {version(p)}" for p in ("torch", "onnxruntime", "awslambdaric", "pillow", "onnx", "numpy")))
"""
    done = subprocess.run([str(python.path), "-c", code], capture_output=True, text=True, cwd="/", env=env)
    if done.returncode != 0:
        raise BenchError(f"running {python.path} failed: {done.stderr[-1000:]}")
    return done.stdout.strip()


def build_functions(args, bootstrap, python, models, work):
    """(INIT variants, warm variants): infer's INIT also with the prepared graph cache."""
    init, warm = [], []
    for model in models:
        for handler in args.handlers:
            if handler == "infer":
                default = infer_function(bootstrap, model)
                init += [default, infer_function(bootstrap, model, work / "graph-cache" / model.name)]
                warm.append(default)
            else:
                function = python_function(handler, python, model)
                init.append(function)
                warm.append(function)
    return init, warm


def progress(text):
    print(text, file=sys.stderr, flush=True)


def bench(args):
    work = Path(args.work_dir).resolve()
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    unmount_leftovers(work / "graph-cache")
    report = {"facts": environment_facts(args), "runs": args.runs, "invocations": args.invocations, "cpu": args.cpu}
    python = prepare_python(args)
    report["python"] = str(python)
    report["python_versions"] = python_versions(python)
    bootstrap, report["bootstrap"] = prepare_bootstrap(args, work) if "infer" in args.handlers else (None, "not run")
    images = prepare_images(python.path, work)
    models = prepare_models(args.models, args.train_bin, work)
    init_functions, warm_functions = build_functions(args, bootstrap, python, models, work)
    cgroup = cgroup_support() if not args.no_cgroup else (None, "--no-cgroup")
    report["cpu_share"] = describe_cpu_share(*cgroup, args.cfs_period_us)

    report["init"] = [init_figures(function, args, logs) for function in init_functions]
    report["warm"] = [row for function in warm_functions for row in warm_figures(function, args, images, cgroup, logs)]
    report["warm"].sort(key=lambda r: (r["handler"], r["model"], r["image"], r["memory_mb"]))
    report["cost"] = cost_rows(report["warm"], report["init"])
    report["recommendation"] = recommend(report["cost"], args.p99_budget_ms)

    markdown = render(report)
    (work / "lambda.md").write_text(markdown)
    (work / "lambda.json").write_text(json.dumps(report, indent=1, default=str))
    print(markdown)
    progress(f"wrote {work / 'lambda.md'} and {work / 'lambda.json'}")


def describe_cpu_share(kind, parent_or_reason, period_us):
    if kind:
        return (f"measured in a cgroup {kind} with a CFS quota of memory/{FULL_CORE_MB} of one core per "
                f"{period_us} us period (Lambda's real period is not published). The invocations come back to "
                "back, so the function uses its whole quota: the worst case. With idle gaps between requests, "
                "as in light traffic, a short request runs at full speed")
    return (f"NOT measured ({parent_or_reason}): one-core durations scaled by {FULL_CORE_MB}/memory, an assumption "
            "(Lambda's CPU share is proportional to memory)")


def init_figures(function, args, logs):
    """`--runs` cold starts of `function` at one core; with a prepared graph cache, each must
    load the cached graph."""
    prepared = "INFER_CACHE_DIR" in function.env
    name = f"{function.handler}-{function.model.name}" + ("-prepared" if prepared else "")
    log = logs / f"init-{name}.log"
    samples, components, how = [], [], ""
    with contextlib.ExitStack() as stack:
        if prepared:
            cache_dir = Path(function.env["INFER_CACHE_DIR"])
            progress(f"INIT {name}: preparing the graph cache")
            prepare_graph_cache(function, cache_dir, args.cpu, logs / f"fill-{name}.log", args.init_timeout)
            how = stack.enter_context(read_only(cache_dir))
        for i in range(args.runs):
            ms, parts = measure_init(function, FULL_CORE_MB, args.cpu, log, args.init_timeout)
            if prepared and parts.get("graph_cache") != "Hit":
                raise BenchError(f"{name}: graph_cache={parts.get('graph_cache')} with the prepared cache, expected Hit\n{log_tail(log)}")
            samples.append(ms)
            components.append(parts)
            progress(f"INIT {name} run {i + 1}/{args.runs}: {ms:.1f} ms {parts}")
    return {
        "handler": function.handler, "label": function.label, "model": function.model.name,
        "graph": function.graph + (f"; {how}" if how else ""),
        "ms": samples, "summary": summary(samples), "components_raw": components,
        "components": describe_components(components),
    }


def warm_figures(function, args, images, cgroup, logs):
    """Warm latency rows of `function` at every memory: under a CFS quota below a full core, or
    scaled from the one-core run when there is no cgroup to set one in."""
    kind, parent = cgroup
    below = [m for m in args.memories if m < FULL_CORE_MB]
    measured = args.memories if kind else sorted({m for m in args.memories if m >= FULL_CORE_MB} | {FULL_CORE_MB})
    timeouts = {"init": args.init_timeout, "invoke": args.invoke_timeout}
    rows = []
    for memory in measured:
        fraction = min(1.0, memory / FULL_CORE_MB)
        share = make_share(kind, parent, fraction, args.cfs_period_us) if memory < FULL_CORE_MB else None
        name = f"{function.handler}-{function.model.name}-{memory}"
        progress(f"warm {name}: {args.invocations} invocations per image")
        try:
            result = measure_warm(function, memory, args.cpu, images, args.invocations, logs / f"warm-{name}.log", timeouts, share)
        finally:
            if share:
                share.remove()
        rows += warm_rows(function, result, f"{fraction:.3f}" + (" (cgroup)" if share else ""))
    if not kind and below:
        rows += scaled_rows(rows, function, below)
    return rows


def describe_components(components):
    """Median of each numeric field of the functions' own INIT logs, and the graph cache outcomes."""
    numeric = {k for c in components for k, v in c.items() if isinstance(v, (int, float))}
    parts = [f"{k} {statistics.median(c[k] for c in components if k in c):.1f}" for k in sorted(numeric)]
    caches = sorted({c["graph_cache"] for c in components if c.get("graph_cache")})
    if caches:
        parts.append("graph_cache " + "/".join(caches))
    return ", ".join(parts) or "-"


def warm_rows(function, result, share):
    rows = []
    for image, data in result["images"].items():
        rows.append({
            "handler": function.handler, "label": function.label, "model": function.model.name, "image": image,
            "memory_mb": result["memory_mb"], "share": share, "summary": summary(data["ms"]), "ms": data["ms"],
            "first_ms": data["first_ms"], "answer": data["label"], "init_ms": result["init_ms"],
            "init_cpu_ms": result["init_cpu_ms"],
            "init_components": result.get("init_components"), "cgroup": result.get("cgroup"),
            "throttled_periods": result.get("throttled_periods"),
        })
    return rows


def scaled_rows(rows, function, memories):
    """Rows for `memories` below a full core from the one-core rows, durations x 1769/memory."""
    scaled = []
    full = [r for r in rows if (r["handler"], r["model"], r["memory_mb"]) == (function.handler, function.model.name, FULL_CORE_MB)]
    for row in full:
        for memory in memories:
            factor = FULL_CORE_MB / memory
            ms = [t * factor for t in row["ms"]]
            scaled.append(row | {
                "memory_mb": memory, "share": f"{memory / FULL_CORE_MB:.3f} (scaled)", "summary": summary(ms), "ms": ms,
                "first_ms": row["first_ms"] * factor, "init_ms": row["init_ms"] * factor,
            })
    return scaled


def interrupted(signum, frame):
    """SIGTERM unwinds like Ctrl-C, so that every `finally` kills its function and unmounts."""
    raise KeyboardInterrupt


def keep_off_cpu(cpu):
    """This script and the emulator it starts run on the other cores, leaving `cpu` to the function."""
    others = os.sched_getaffinity(0) - {cpu}
    if cpu not in os.sched_getaffinity(0):
        raise BenchError(f"--cpu {cpu} is not available here (cores {sorted(os.sched_getaffinity(0))})")
    if others:
        os.sched_setaffinity(0, others)


def main():
    args = parse_args()
    signal.signal(signal.SIGTERM, interrupted)
    try:
        keep_off_cpu(args.cpu)
        bench(args)
    except BenchError as e:
        sys.exit(f"lambda_bench: {e}")
    except KeyboardInterrupt:
        sys.exit("lambda_bench: interrupted")


if __name__ == "__main__":
    main()
