#!/usr/bin/env bash
# Dev-only: `train bench` and scripts/bench_train_pytorch.py alternately, channels-last off and on,
# with the load average before each pair. Figures go to train/BENCHMARKS.md.
#   scripts/bench_train_side_by_side.sh TRAIN_BIN WIDTH STEPS WARMUP THREADS [PYTHON]
set -euo pipefail
bin=$1 width=$2 steps=$3 warmup=$4 threads=$5 python=${6:-/tmp/torchvenv/bin/python}
here=$(cd "$(dirname "$0")" && pwd)
ips() { "$python" -c 'import json,sys; print(round(json.load(sys.stdin)["images_per_second"], 1))'; }
for cl in off on; do
  echo "load $(cut -d' ' -f1-3 /proc/loadavg): width $width batch 128 threads $threads channels-last $cl"
  echo "  train bench: $("$bin" bench --width "$width" --batch-size 128 --steps "$steps" --warmup "$warmup" \
      --channels-last "$cl" --threads "$threads" --json 2>/dev/null | ips) images/s"
  flag=(); [ "$cl" = on ] && flag=(--channels-last)
  echo "  pytorch:     $("$python" "$here/bench_train_pytorch.py" --width "$width" --batch-size 128 --steps "$steps" \
      --warmup "$warmup" --threads "$threads" "${flag[@]}" | ips) images/s"
done
echo "load $(cut -d' ' -f1-3 /proc/loadavg): end"
