#!/usr/bin/env bash
# Dev-only: two release builds side by side, alternated, on the same inputs: `infer serve` under
# `hey -z 5s -c 8` (after a 2 s warm-up) and `train bench` at width 16.
#
#   scripts/bench_before_after.sh OLD_BIN_DIR NEW_BIN_DIR MODEL.onnx IMAGE.jpg [IMAGE.jpg ...]
#
# Each *_BIN_DIR holds `infer` and `train` from `cargo build --release -p infer -p train` of one
# commit. Needs `hey` (Debian package). Prints one line per run; ratios belong in BENCHMARKS.md.
set -euo pipefail

old="${1:?usage: OLD_BIN_DIR NEW_BIN_DIR MODEL IMAGE...}"
new="${2:?usage: OLD_BIN_DIR NEW_BIN_DIR MODEL IMAGE...}"
model="${3:?usage: OLD_BIN_DIR NEW_BIN_DIR MODEL IMAGE...}"
shift 3
port=18231

serve_bench() {
  local dir=$1 image=$2 pid
  "$dir/infer" serve --model "$model" --addr "127.0.0.1:${port}" >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:${port}/readyz" && break
    sleep 0.2
  done
  local url="http://127.0.0.1:${port}/v1/predict"
  hey -z 2s -c 8 -m POST -T image/jpeg -D "$image" "$url" >/dev/null
  local out
  out="$(hey -z 5s -c 8 -m POST -T image/jpeg -D "$image" "$url")"
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  echo "$dir $(basename "$image"): $(grep 'Requests/sec' <<<"$out" | awk '{print $2}') req/s," \
    "p99 $(grep '99% in' <<<"$out" | awk '{print $3}') s"
}

for round in 1 2; do
  for image in "$@"; do
    # Alternate which build goes first: the first of a pair tends to run a little faster.
    if ((round % 2)); then pair=("$old" "$new"); else pair=("$new" "$old"); fi
    for dir in "${pair[@]}"; do serve_bench "$dir" "$image"; done
  done
  for dir in "$old" "$new"; do
    echo "$dir train bench: $("$dir/train" bench --width 16 --steps 5 --warmup 2 --channels-last off | tail -1)"
  done
done
