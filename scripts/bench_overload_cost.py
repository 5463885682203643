#!/usr/bin/env python3
"""CPU seconds `infer serve` and `hey` spend per answered 200 and per shed 503, behind the
cost analysis in infer/BENCHMARKS.md ("Overload"). Python as bench_overload.py is: a dev-only
driver around `hey`, standard library only.

    python3 scripts/bench_overload_cost.py BIN BODY_FILE CONTENT_TYPE PATH C DURATION [serve flags...]

Run 1 (only 200s): `infer serve` with the given flags, hey at c=8 for DURATION.
Run 2 (only 503s): the same with --max-in-flight 1 --admission-wait-ms 0 (and a long deadline),
its one place held by a request whose body is never finished, hey at c=C: every request is shed.
Server CPU is utime+stime from /proc/PID/stat over hey's run; hey's from its rusage.
"""
import csv
import io
import json
import os
import resource
import socket
import subprocess
import sys
import time

def ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def run(bin_, flags, body_path, body, ctype, path, c, duration, hold):
    port = free_port()
    srv = subprocess.Popen([bin_, "serve", "--addr", f"127.0.0.1:{port}", *flags],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    srv.stdout.readline()
    holder = None
    if hold:
        holder = socket.create_connection(("127.0.0.1", port))
        holder.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)+10}\r\n\r\n".encode() + body[:10])
        time.sleep(0.5)
    before_srv = ticks(srv.pid)
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    out = subprocess.run(["hey", "-z", duration, "-c", str(c), "-t", "20", "-m", "POST", "-T", ctype,
                          "-D", body_path, "-o", "csv", f"http://127.0.0.1:{port}{path}"],
                         capture_output=True, text=True)
    wall = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    srv_cpu = ticks(srv.pid) - before_srv
    hey_cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    srv.terminate()
    srv.wait(timeout=30)
    if holder:
        holder.close()
    statuses = {}
    for row in csv.DictReader(io.StringIO(out.stdout)):
        statuses[row["status-code"]] = statuses.get(row["status-code"], 0) + 1
    return {"c": c, "hold": hold, "wall_s": round(wall, 1), "statuses": statuses,
            "server_cpu_s": round(srv_cpu, 2), "hey_cpu_s": round(hey_cpu, 2)}

bin_, body_path, ctype, path, c, duration, *flags = sys.argv[1:]
body = open(body_path, "rb").read()
ok = run(bin_, flags, body_path, body, ctype, path, 8, duration, False)
n = ok["statuses"].get("200", 0)
ok["server_ms_per_200"] = round(1e3 * ok["server_cpu_s"] / max(n, 1), 3)
ok["hey_ms_per_200"] = round(1e3 * ok["hey_cpu_s"] / max(n, 1), 3)
print(json.dumps(ok), flush=True)
shed = run(bin_, [*flags, "--max-in-flight", "1", "--admission-wait-ms", "0", "--deadline-ms", "600000"], body_path, body, ctype, path, int(c), duration, True)
n = shed["statuses"].get("503", 0)
shed["server_ms_per_503"] = round(1e3 * shed["server_cpu_s"] / max(n, 1), 4)
shed["hey_ms_per_503"] = round(1e3 * shed["hey_cpu_s"] / max(n, 1), 4)
print(json.dumps(shed), flush=True)
