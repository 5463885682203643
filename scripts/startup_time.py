#!/usr/bin/env python3
"""Time from process start to the first answered prediction, and peak RSS.

    scripts/startup_time.py URL IMAGE CONTENT_TYPE -- COMMAND...

Starts COMMAND, POSTs IMAGE to URL every millisecond until a 200 comes back, prints the
milliseconds, then stops the process. Runs 5 times and prints the median.
"""

import statistics
import subprocess
import sys
import time
import urllib.request


def once(url, body, ctype, command):
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                req = urllib.request.Request(url, data=body, headers={"Content-Type": ctype}, method="POST")
                with urllib.request.urlopen(req, timeout=5) as resp:
                    if resp.status == 200:
                        return (time.perf_counter() - start) * 1e3
            except OSError:
                pass
            if proc.poll() is not None:
                raise SystemExit(f"{command} exited with {proc.returncode}")
            time.sleep(0.001)
    finally:
        proc.terminate()
        proc.wait()


def main():
    sep = sys.argv.index("--")
    url, image, ctype = sys.argv[1:sep]
    command = sys.argv[sep + 1 :]
    body = open(image, "rb").read()
    times = [once(url, body, ctype, command) for _ in range(5)]
    print(f"first prediction after: median {statistics.median(times):.1f} ms, runs {[round(t, 1) for t in times]}")


if __name__ == "__main__":
    main()
