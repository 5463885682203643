#!/usr/bin/env bash
# Load test of an image-classification endpoint with `hey` (Debian package `hey`; oha is not in
# Debian and takes long to build on 2 cores). Prints one markdown row per concurrency:
#   | label | concurrency | requests/s | p50 ms | p95 ms | p99 ms | errors |
#
#   scripts/loadtest.sh URL IMAGE CONTENT_TYPE LABEL [DURATION=10s] [CONCURRENCIES="1 8 32"]
#   scripts/loadtest.sh http://127.0.0.1:8080/v1/predict img.png image/png "infer w64 png"
set -euo pipefail
url=$1 image=$2 ctype=$3 label=$4 duration=${5:-10s} concurrencies=${6:-"1 8 32"}
command -v hey >/dev/null || { echo "hey is missing: apt-get install hey" >&2; exit 1; }
# Warm-up, not counted.
hey -z 2s -c 4 -m POST -T "$ctype" -D "$image" "$url" >/dev/null
for c in $concurrencies; do
  out=$(hey -z "$duration" -c "$c" -m POST -T "$ctype" -D "$image" "$url")
  rps=$(awk '/Requests\/sec:/ {printf "%.1f", $2}' <<<"$out")
  pct() { awk -v p="$1%" '$1 == p && $2 == "in" {printf "%.1f", $3 * 1000}' <<<"$out"; }
  ok=$(awk '/\[200\]/ {print $2}' <<<"$out")
  total=$(awk '/\[[0-9]+\]/ {s += $2} END {print s + 0}' <<<"$out")
  errors=$(( total - ${ok:-0} ))
  echo "| $label | $c | $rps | $(pct 50) | $(pct 95) | $(pct 99) | $errors |"
done
