#!/usr/bin/env bash
# The main job on the embedded default: make a small synthetic dataset, train the tiny AMNet
# on it, evaluate it on the held-out split and print the mAP table. Sets up .venv if needed.
# Usage: bash scripts/demo.sh [WORK_DIR]   (default: ./work/demo)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
WORK=${1:-work/demo}
mkdir -p "$WORK"
BIN=.venv/bin
echo "== 1/3 synthetic data: $WORK/data (tiny preset: 5 classes, 80 training + 40 test videos)"
"$BIN/amnet-synth" --out "$WORK/data" --preset tiny --seed 0 --quiet
echo "== 2/3 training configs/tiny_cpu.yaml -> $WORK/run"
"$BIN/amnet-train" --config configs/tiny_cpu.yaml --data "$WORK/data" --out "$WORK/run" --quiet
echo "== 3/3 evaluation on the test split -> $WORK/results.json"
"$BIN/amnet-eval" --ckpt "$WORK/run/last.pt" --data "$WORK/data" --subset test --out "$WORK/results.json"
