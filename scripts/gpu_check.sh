#!/usr/bin/env bash
# GPU check on a lent NVIDIA machine (PyTorch and Triton preinstalled, nothing downloadable):
# the group-attention kernel's CUDA parity tests (fp32, fp16, bf16) and its benchmark.
#
#   OUT=/path/to/results bash scripts/gpu_check.sh      # from the repository root
#   STEPS="bench e2e" OUT=... bash scripts/gpu_check.sh  # only these steps (a rerun)
#
# Budget: about 7 minutes on an H100 in all. Each step runs under its own timeout and a failed
# step does not stop the next; the exit status is non-zero if any step failed. Results in $OUT
# (a lent machine returns at most 8 files: bundle them, e.g. tar, when there are more):
#   summary.md            one row per step: exit status, seconds
#   setup.log             GPU, versions, how amnet was made importable
#   kernel_tests.log      pytest tests/test_kernel.py on CUDA (interpreter-only tests skip)
#   train_cuda.log/.json  amnet-train on CUDA (tests/test_train_cuda.py): Triton path under
#                         autocast, a killed run resumed, run-to-run weight differences
#   bench.log             benchmark progress
#   attention_bench.json  benchmark results (rewritten after every measurement)
#   attention_bench.md    the same as a markdown table
#   train_memory.log/.json  training-step time and peak CUDA memory (D 512, D 1024, 8 heads)
#   heads.log             the heads joined into one pass vs one pass per level (ms)
#   tune.log, attention_tuning.json/.md  (opt-in step "tune") candidate kernel tile sizes:
#                         parity and speed next to SDPA, the table default_block_sizes follows
#   e2e.log               the 212-video THUMOS14-shaped test set end to end on CUDA, PyTorch
#                         fp32 and bf16: one JSON line per measurement
#   tensorrt.json         TensorRT fp32 and fp16 engines (the fp16 graph, strongly typed; the
#                         FP16 flag where TensorRT 10 has it) vs ONNX Runtime (with tensorrt)
set -uo pipefail
: "${OUT:?set OUT to the results folder}"
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
PY=${PYTHON:-python3}

# Compiled kernels, not the interpreter. tests/conftest.py only setdefault()s TRITON_INTERPRET
# to 1, so this explicit value wins. Triton reads the variable as a boolean ("1", "true" and
# "on" enable the interpreter; "0" or unset leave it off) when the kernels are defined, i.e.
# when amnet.kernels.group_attention_triton is imported.
export TRITON_INTERPRET=0
export PYTHONUNBUFFERED=1
unset AMNET_ATTENTION

STEPS=" ${STEPS:-kernel_tests train_cuda bench train_memory heads e2e tensorrt} "
wanted() { [[ $STEPS == *" $1 "* ]]; }

summary="$OUT/summary.md"
printf '| step | exit | seconds |\n|---|---|---|\n' >"$summary"
failed=0

# step NAME SECONDS COMMAND...: run COMMAND under a timeout, logging to $OUT/NAME.log and stdout.
step() {
  local name=$1 limit=$2
  shift 2
  wanted "$name" || return 0
  local start=$SECONDS rc
  echo "=== $name (limit ${limit}s)"
  timeout --kill-after=15 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then
    failed=1
    [ "$rc" -eq 124 ] && echo "$name: timed out after ${limit}s" | tee -a "$OUT/$name.log"
  fi
  printf '| %s | %s | %s |\n' "$name" "$rc" "$((SECONDS - start))" >>"$summary"
}

# Install the copy in editable mode; if that fails (no pip, no network for build deps), the
# src layout makes PYTHONPATH=src enough.
setup() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PY" -c "import sys, torch, triton; print(sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available())"
  if timeout 60 "$PY" -m pip install -q -e . --no-deps --no-build-isolation \
    && (cd /tmp && "$PY" -c "import amnet.kernels"); then
    echo "amnet: editable install"
  else
    echo "amnet: editable install failed; using PYTHONPATH=src"
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
  fi
  (cd /tmp && "$PY" -c "import amnet.kernels as k; print('amnet.kernels from', k.__file__)")
}
# Run in this shell (not under step's pipeline) so that an exported PYTHONPATH stays set.
start=$SECONDS
setup >"$OUT/setup.log" 2>&1
rc=$?
cat "$OUT/setup.log"
[ "$rc" -eq 0 ] || failed=1
printf '| setup | %s | %s |\n' "$rc" "$((SECONDS - start))" >>"$summary"

step kernel_tests 90 "$PY" -m pytest tests/test_kernel.py -q -rs -p no:cacheprovider

# amnet-train on CUDA, the tiny config (Dh 16, Triton attention, fp16 autocast): two epochs
# three times (left alone twice, killed in epoch 2 and resumed once), then evaluated on the CPU.
step train_cuda 120 env AMNET_CUDA_TRAIN_SUMMARY="$OUT/train_cuda.json" \
  "$PY" -m pytest tests/test_train_cuda.py -q -rs -p no:cacheprovider

step bench 150 "$PY" benchmarks/bench_attention.py --out "$OUT" --dtypes fp16 --rep-ms 100

# One training step of configs/thumos14_i3d.yaml (batch 2 x 2304, AMP, Triton attention) at the
# paper's size and at the seed's out-of-memory settings (D = 1024; 8 heads): time and peak
# CUDA memory, each in its own process. Writes train_memory.log and train_memory.json.
step train_memory 100 "$PY" benchmarks/bench_model.py train --device cuda --iters 2 \
  --variants base,dim1024,heads8 --json-out "$OUT/train_memory.json"

# The classification and regression heads over the 6 levels, joined into one pass (the model's
# form) and one pass per level, forward + backward and forward alone (a few seconds).
step heads 60 "$PY" benchmarks/bench_model.py heads --device cuda --repeats 20

# Opt-in (STEPS="... tune"): candidate tile sizes of the kernel, parity and speed next to SDPA.
step tune 170 "$PY" benchmarks/tune_attention_blocks.py --out "$OUT"

# The whole THUMOS14-shaped test set end to end (read .npy -> detections) with the PyTorch
# backend on CUDA, fp32 and bf16 autocast, in one process, split into reading, backend calls
# and post-processing (about 65 s on an H200, synthetic features of about 2.8 GB included;
# amnet-bench's fresh process per round and backend does not fit this budget). The paper-size
# model, initialised: speed does not depend on the weights.
# Then again with 16 videos at a time, their windows packed into calls of 16 (the first run,
# one video per call, was launch-bound: 6.6 s of backend time for 305k snippets).
step e2e 150 "$PY" benchmarks/bench_e2e_phases.py --config configs/thumos14_i3d.yaml \
  --device cuda --work "${TMPDIR:-/tmp}/amnet-gpu-e2e" --precisions fp32,bf16 \
  --pack 16 --batch-size 16

# TensorRT step (only where `import tensorrt`, onnx and onnxruntime work): export a tiny
# initialised checkpoint to ONNX (fp32 and fp16 graphs), build fp32 and fp16 engines with
# export/to_tensorrt.py's API, run them on CUDA buffers and compare with ONNX Runtime
# (tests/test_tensorrt.py). Writes ONE
# file, $OUT/tensorrt.json (the log goes to stdout only, to stay within the 8 files); 75 s.
if ! wanted tensorrt; then
  :
elif "$PY" -c "import tensorrt, onnx, onnxruntime" >/dev/null 2>&1; then
  echo "=== tensorrt (limit 75s)"
  start=$SECONDS
  AMNET_TRT_SUMMARY="$OUT/tensorrt.json" timeout --kill-after=15 75 \
    "$PY" -m pytest tests/test_tensorrt.py -q -rs -p no:cacheprovider
  rc=$?
  [ "$rc" -eq 0 ] || failed=1
  [ "$rc" -eq 124 ] && echo "tensorrt: timed out after 75s"
  printf '| tensorrt | %s | %s |\n' "$rc" "$((SECONDS - start))" >>"$summary"
else
  echo "=== tensorrt: skipped (tensorrt, onnx or onnxruntime not importable)"
  printf '| tensorrt | skipped: no tensorrt/onnx/onnxruntime | 0 |\n' >>"$summary"
fi

cat "$summary"
exit "$failed"
