#!/usr/bin/env python3
"""The overload run behind infer/BENCHMARKS.md ("Overload"): `infer serve` on loopback, driven by
`hey` far past what the CPU can do, for each input (a 640x480 JPEG, a ~5 MB photo, a V2 JSON
tensor). Python as bench_serving.py is: a dev-only driver around `hey`, standard library only.

    python3 scripts/bench_overload.py --bin target/release/infer --images DIR [--duration 20s]

For each input: c=8 first (the goodput the server can do), then each of --concurrency (default
"256 1024"). Per point: goodput (200s per second), the p99 of the 200s against the deadline, the
other statuses (expected: only 503 and 504), peak RSS (VmHWM of the server process), and
recovery: after the load stops, the time until a single request of the same input is answered
200 again (a few probes; the first one sent at once). While the load runs, a few requests sent by
this script check that every non-200 body is the error JSON (`{"error": {"code", "message"}}` or
the V2 `{"error": "<message>"}`). Every run is bounded: hey -z, and hey's own -t timeout.

DIR holds road-640x480.jpg and photo-5mb.jpg (any JPEGs of those kinds: the script does not make
them). The V2 body is made here: the model's input tensor of zeros as JSON numbers.
"""

import argparse
import csv
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def post(url, body, ctype, timeout=30):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": ctype}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError) as e:
        # A shed upload: the server answered 503 and closed before the body was all sent, so
        # the client may see the broken pipe instead of the answer.
        return None, str(e).encode()


def is_error_json(status, body, v2):
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    if v2:
        return isinstance(doc.get("error"), str)
    err = doc.get("error")
    return isinstance(err, dict) and {"code", "message"} <= set(err)


def hey(url, body_path, ctype, c, duration, timeout_s):
    out = subprocess.run(
        ["hey", "-z", duration, "-c", str(c), "-t", str(timeout_s), "-m", "POST", "-T", ctype,
         "-D", str(body_path), "-o", "csv", url],
        capture_output=True, text=True, check=False)
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    return rows


def point(args, name, url, body_path, ctype, v2, c, pid, deadline_s):
    probes = {"bad": 0, "seen": 0, "cut": 0}
    stop = threading.Event()
    body = Path(body_path).read_bytes()

    def probe():
        while not stop.is_set():
            status, reply = post(url, body, ctype, timeout=deadline_s + 5)
            if status is None:
                probes["cut"] += 1
            elif status != 200:
                probes["seen"] += 1
                if status not in (503, 504) or not is_error_json(status, reply, v2):
                    probes["bad"] += 1
            time.sleep(0.2)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    start = time.monotonic()
    rows = hey(url, body_path, ctype, c, args.duration, int(deadline_s) + 5)
    wall = time.monotonic() - start
    stop.set()
    # Recovery: the first 200 for one request after the load.
    after = time.monotonic()
    recovered = None
    for _ in range(20):
        status, _ = post(url, body, ctype, timeout=deadline_s + 5)
        if status == 200:
            recovered = time.monotonic() - after
            break
    t.join(timeout=deadline_s + 5)
    statuses = {}
    ok_latency = []
    for row in rows:
        code = row.get("status-code", "")
        statuses[code] = statuses.get(code, 0) + 1
        if code == "200":
            ok_latency.append(float(row["response-time"]))
    ok_latency.sort()
    p99 = ok_latency[int(0.99 * (len(ok_latency) - 1))] if ok_latency else float("nan")
    span = float(args.duration.rstrip("s"))
    return {
        "input": name, "c": c, "goodput": len(ok_latency) / span, "p99_ok_s": p99,
        "statuses": statuses, "peak_rss_mb": peak_rss_mb(pid), "recovery_s": recovered,
        "probe_non200": probes["seen"], "probe_not_error_json": probes["bad"], "probe_cut": probes["cut"], "wall_s": wall,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", type=Path, default=REPO / "target/release/infer")
    p.add_argument("--model", help="--model for infer serve (default: the bundled one)")
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--duration", default="20s", help="hey -z per point (default 20s)")
    p.add_argument("--concurrency", default="256 1024")
    p.add_argument("--inputs", default="jpeg photo v2")
    p.add_argument("--serve-arg", action="append", default=[], help="extra infer serve flag")
    p.add_argument("--deadline-ms", type=int, default=10000)
    p.add_argument("--out", type=Path, help="JSON results")
    args = p.parse_args()
    if not shutil.which("hey"):
        raise SystemExit("bench_overload: hey is missing: apt-get install hey")
    port = free_port()
    cmd = [str(args.bin), "serve", "--addr", f"127.0.0.1:{port}", "--deadline-ms", str(args.deadline_ms),
           *args.serve_arg]
    if args.model:
        cmd += ["--model", args.model]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        server.stdout.readline()
        base = f"http://127.0.0.1:{port}"
        meta = json.load(urllib.request.urlopen(f"{base}/v1/model"))
        h, w, name = meta["input"]["height"], meta["input"]["width"], meta["name"]
        work = Path(tempfile.mkdtemp(prefix="bench-overload-"))
        v2 = work / "v2.json"
        v2.write_text(json.dumps({"inputs": [{"name": meta["input"]["name"], "shape": [1, 3, h, w],
                                              "datatype": "FP32", "data": [0] * (3 * h * w)}]}))
        inputs = {
            "jpeg": ("640x480 JPEG", f"{base}/v1/predict", args.images / "road-640x480.jpg", "image/jpeg", False),
            "photo": ("5 MB photo", f"{base}/v1/predict", args.images / "photo-5mb.jpg", "image/jpeg", False),
            "v2": (f"V2 JSON {v2.stat().st_size // 1024} KiB", f"{base}/v2/models/{name}/infer", v2,
                   "application/json", True),
        }
        results = []
        for key in args.inputs.split():
            label, url, body, ctype, is_v2 = inputs[key]
            for c in [8, *map(int, args.concurrency.split())]:
                r = point(args, label, url, body, ctype, is_v2, c, server.pid, args.deadline_ms / 1000)
                results.append(r)
                print(json.dumps(r), flush=True)
        if args.out:
            args.out.write_text(json.dumps(results, indent=1))
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    sys.exit(main())
