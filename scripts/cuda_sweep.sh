#!/usr/bin/env bash
# Trains ResNet-18 on one CUDA GPU with a prebuilt `train` binary, several recipes side by side
# within one wall-clock budget, and reports which reached the best test accuracy.
#
# For a GPU machine that has PyTorch but no Rust toolchain: the binary is built elsewhere
# against the CPU libtorch that `cargo xtask` assembles, and runs here against the CUDA
# libtorch inside the installed PyTorch (it must be the same version, 2.11.0). tch links
# libtorch_cuda only when it is built against a CUDA libtorch, so this script preloads it;
# that registers libtorch's CUDA backend before `train` starts.
#
# The runs share the GPU: one ResNet-18 step on 32x32 images leaves most of a large GPU idle
# between kernels, so concurrent runs cost each other little. Each run's epoch count is set
# from a benchmark taken with all of them running at once, so that every schedule completes
# inside BUDGET_S seconds.
#
#   DATA=cifar10-jpg.tar.gz TRAIN_BIN=target/release/train BUDGET_S=400 scripts/cuda_sweep.sh
#
# Dry run on a CPU (seconds): DEVICE=cpu WIDTH=4 N_TRAIN=200 BUDGET_S=20 \
#   EXTRA="--limit-train 200 --limit-test 100" DATA=... scripts/cuda_sweep.sh
set -euo pipefail

DATA=${DATA:?set DATA to a CIFAR-10 directory or .tar.gz}
TRAIN_BIN=${TRAIN_BIN:-target/release/train}
OUT_DIR=${OUT_DIR:-runs/cuda-sweep}
PACK_DIR=${PACK_DIR:-}          # if set: runs.tar.gz and the best model.onnx in 15 MB parts go here
BUDGET_S=${BUDGET_S:-400}       # training time each run is sized to
HARD_S=${HARD_S:-$((BUDGET_S + 150))} # runs still going after this are stopped
WIDTH=${WIDTH:-64}
MAX_EPOCHS=${MAX_EPOCHS:-80}
N_TRAIN=${N_TRAIN:-50000}
DEVICE=${DEVICE:-cuda}
THREADS=${THREADS:-4}
# Epochs per run = budget x benchmarked images/s / (training images x OVERHEAD): evaluation
# with flip TTA and the checkpoint cost about a fifth on top of the steps (measured on an H100;
# it was a third before evaluation stopped waiting for the GPU after every batch).
OVERHEAD=${OVERHEAD:-1.25}
# name:batch:peak-lr:schedule
CONFIGS=${CONFIGS:-"b256-lr0.4-onecycle:256:0.4:one-cycle b128-lr0.2-onecycle:128:0.2:one-cycle b256-lr0.2-cosine:256:0.2:warmup-cosine"}
EXTRA=${EXTRA:-}

mkdir -p "$OUT_DIR"
run_env=()
if [[ $DEVICE == cuda ]]; then
  torch_lib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
  [[ -f $torch_lib/libtorch_cuda.so ]] || { echo "no libtorch_cuda.so in $torch_lib" >&2; exit 1; }
  # The CUDA libraries of a pip-installed PyTorch live in site-packages/nvidia/*/lib.
  nvidia_libs=$(find "$torch_lib/../../nvidia" -maxdepth 3 -type d -name lib 2>/dev/null | paste -sd: -)
  ld_path=$torch_lib${nvidia_libs:+:$nvidia_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  run_env=(env "LD_LIBRARY_PATH=$ld_path" "LD_PRELOAD=$torch_lib/libtorch_cuda.so")
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  fi
  python3 -c 'import torch; print("pytorch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())'
fi
run_train() { "${run_env[@]}" "$TRAIN_BIN" "$@"; }

# Fail in seconds, with the linker's view, if libtorch cannot reach the device.
if ! run_train bench --device "$DEVICE" --width 8 --steps 2 --warmup 1; then
  [[ $DEVICE == cuda ]] && LD_LIBRARY_PATH=$ld_path ldd "$torch_lib/libtorch_cuda.so" | grep -i "not found" >&2
  exit 1
fi

echo "== benchmark, all configurations at once ($(date -u +%T))"
pids=()
for c in $CONFIGS; do
  IFS=: read -r name batch _ _ <<<"$c"
  run_train bench --device "$DEVICE" --width "$WIDTH" --batch-size "$batch" --steps 40 --warmup 10 \
    --threads "$THREADS" --json >"$OUT_DIR/bench-$name.json" 2>"$OUT_DIR/bench-$name.err" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || { cat "$OUT_DIR"/bench-*.err >&2; exit 1; }; done

echo "== training, budget ${BUDGET_S}s per run ($(date -u +%T))"
pids=()
for c in $CONFIGS; do
  IFS=: read -r name batch lr schedule <<<"$c"
  epochs=$(python3 -c "import json,sys; r=json.load(open('$OUT_DIR/bench-$name.json')); \
print(max(1, min($MAX_EPOCHS, int($BUDGET_S*r['images_per_second']/($N_TRAIN*$OVERHEAD)))), \
'%.0f img/s' % r['images_per_second'], file=sys.stdout)")
  read -r epochs note <<<"$epochs"
  echo "$name: batch $batch, peak lr $lr, $schedule: $epochs epochs (bench under contention: $note)"
  # shellcheck disable=SC2086 # EXTRA is a list of flags
  timeout "$HARD_S" "${run_env[@]}" "$TRAIN_BIN" fit --data "$DATA" --out "$OUT_DIR/$name" \
    --device "$DEVICE" --threads "$THREADS" --width "$WIDTH" --epochs "$epochs" \
    --batch-size "$batch" --lr "$lr" --schedule "$schedule" --flip-tta $EXTRA \
    >"$OUT_DIR/$name.log" 2>&1 &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
echo "== done ($(date -u +%T)), exit status ${status}"

# shellcheck disable=SC2086 # one argument per configuration
python3 - "$OUT_DIR" $CONFIGS <<'EOF' | tee "$OUT_DIR/summary.txt"
import json, os, sys
out, configs = sys.argv[1], sys.argv[2:]
best = None
for c in configs:
    name = c.split(":")[0]
    path = os.path.join(out, name, "metrics.jsonl")
    rows = [json.loads(l) for l in open(path)] if os.path.exists(path) else []
    if not rows:
        print(f"{name}: no finished epoch"); continue
    last = rows[-1]
    peak = max(r["test_accuracy"] for r in rows)
    print(f"{name}: {last['epoch']} epochs, {last['elapsed_seconds']:.0f} s, "
          f"{last['images_per_second']:.0f} img/s (last epoch), "
          f"final test accuracy {100*last['test_accuracy']:.2f}% (best epoch {100*peak:.2f}%)")
    if os.path.exists(os.path.join(out, name, "model.onnx")) and (best is None or last["test_accuracy"] > best[1]):
        best = (name, last["test_accuracy"])
print("best:", best[0] if best else "none")
EOF

if [[ -n $PACK_DIR ]]; then
  best=$(sed -n 's/^best: //p' "$OUT_DIR/summary.txt")
  (cd "$OUT_DIR" && tar czf "$PACK_DIR/runs.tar.gz" --exclude='*.pt' --exclude='*.onnx' .)
  if [[ $best != none ]]; then
    sha256sum "$OUT_DIR/$best/model.onnx" | tee "$PACK_DIR/best-model.sha256"
    split -b 15M -d "$OUT_DIR/$best/model.onnx" "$PACK_DIR/best-model.onnx.part-"
  fi
fi
exit "$status"
