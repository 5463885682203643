#!/usr/bin/env python3
"""Prints BENCHMARKS.md's table from criterion's results in target/criterion (run after
`cargo bench -p scratch --bench conv`): median time per implementation and thread count, and the
ratio to libtorch at the same thread count."""
import json
import pathlib
import sys

ROOT = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")
CASES = [
    "student 1x3x128x128 16f",
    "resnet 64@32x32 b1", "resnet 128@16x16 b1", "resnet 256@8x8 b1", "resnet 512@4x4 b1",
    "resnet 64@32x32 b32", "resnet 128@16x16 b32", "resnet 256@8x8 b32", "resnet 512@4x4 b32",
]


def median(case, impl, threads):
    path = ROOT / case.replace("/", "_") / impl / str(threads) / "new" / "estimates.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())["median"]["point_estimate"] * 1e-9


def fmt(s):
    if s is None:
        return "—"
    return f"{s * 1e3:.3f} ms" if s < 1 else f"{s:.2f} s"


print("| shape | naive (1 thr) | fast 1 thr | libtorch 1 thr | fast/libtorch 1 thr "
      "| fast 2 thr | libtorch 2 thr | fast/libtorch 2 thr |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for case in CASES:
    row = [case, fmt(median(case, "naive", 1))]
    for t in (1, 2):
        f, l = median(case, "fast", t), median(case, "libtorch", t)
        row += [fmt(f), fmt(l), f"**{f / l:.2f}**" if f and l else "—"]
    print("| " + " | ".join(row) + " |")
