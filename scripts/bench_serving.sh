#!/usr/bin/env bash
# The serving benchmark matrix behind infer/BENCHMARKS.md: `infer serve` (release) with
# micro-batching on and off, and the FastAPI + PyTorch server, for each model and image, at
# concurrency 1, 8 and 32, plus peak RSS under load.
#
#   scripts/bench_serving.sh W64.onnx W16.onnx SMALL.png LARGE.jpg [DURATION=5s] [PYTHON]
# PYTHON: an interpreter with torch, fastapi, uvicorn, pillow, python-multipart (skipped if absent).
set -euo pipefail
w64=$1 w16=$2 png=$3 jpg=$4 duration=${5:-5s} python=${6:-}
here=$(cd "$(dirname "$0")" && pwd)
bin=$here/../target/release/infer
port=8181
peak_rss() { awk '/VmHWM/ {printf "%.0f MB", $2 / 1024}' "/proc/$1/status"; }
wait_up() { for _ in $(seq 1 600); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && return 0; sleep 0.05; done; return 1; }

echo "| server | model | image | concurrency | requests/s | p50 ms | p95 ms | p99 ms | errors |"
echo "|---|---|---|---:|---:|---:|---:|---:|---:|"
for model in "$w64" "$w16"; do
  name=$(basename "$model" .onnx)
  for batching in on off; do
    if [ $batching = on ]; then flags=(--max-batch 8); else flags=(--max-batch 1); fi
    "$bin" serve --model "$model" --addr 127.0.0.1:$port "${flags[@]}" >/dev/null 2>&1 &
    pid=$!
    wait_up
    for img in "$png" "$jpg"; do
      ctype=image/png; [[ $img == *.jpg ]] && ctype=image/jpeg
      "$here/loadtest.sh" "http://127.0.0.1:$port/v1/predict" "$img" $ctype "infer batching $batching | $name | $(basename "$img")" "$duration"
    done
    echo "<!-- infer $name batching $batching peak RSS: $(peak_rss $pid) -->"
    kill -TERM $pid; wait $pid || true
  done
  if [ -n "$python" ]; then
    width=${name##*-w}
    "$python" "$here/fastapi_server.py" --width "$width" --port $port >/dev/null 2>&1 &
    pid=$!
    wait_up
    for img in "$png" "$jpg"; do
      ctype=image/png; [[ $img == *.jpg ]] && ctype=image/jpeg
      "$here/loadtest.sh" "http://127.0.0.1:$port/predict" "$img" $ctype "FastAPI+PyTorch | $name | $(basename "$img")" "$duration"
    done
    echo "<!-- fastapi $name peak RSS: $(peak_rss $pid) -->"
    kill -TERM $pid; wait $pid || true
  fi
done
