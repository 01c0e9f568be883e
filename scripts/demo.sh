#!/usr/bin/env bash
# The main job on the embedded default, the whole product path: make a small synthetic dataset,
# train the tiny AMNet, evaluate it on the held-out split, export it to ONNX (parity checked
# against PyTorch), run amnet-infer on one feature file and write its detections and a PNG.
# Sets up .venv if needed.   Usage: bash scripts/demo.sh [WORK_DIR]   (default: ./work/demo)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
WORK=${1:-work/demo}
mkdir -p "$WORK"
BIN=.venv/bin
echo "== 1/5 synthetic data: $WORK/data (tiny preset: 5 classes, 80 training + 40 test videos)"
# The demo owns WORK: a second run regenerates the same data and retrains (--overwrite).
"$BIN/amnet-synth" --out "$WORK/data" --preset tiny --seed 0 --quiet --overwrite
echo "== 2/5 training configs/tiny_cpu.yaml -> $WORK/run"
"$BIN/amnet-train" --config configs/tiny_cpu.yaml --data "$WORK/data" --out "$WORK/run" --quiet --overwrite
echo "== 3/5 evaluation on the test split -> $WORK/results.json"
"$BIN/amnet-eval" --ckpt "$WORK/run/last.pt" --data "$WORK/data" --subset test --out "$WORK/results.json"
echo "== 4/5 export to ONNX with parity check -> $WORK/model.onnx"
"$BIN/amnet-export" onnx --ckpt "$WORK/run/last.pt" --out "$WORK/model.onnx"
video=$(ls "$WORK/data/features" | grep -m1 test)
echo "== 5/5 amnet-infer on $video -> $WORK/detections.json, $WORK/plots/"
"$BIN/amnet-infer" --engine "$WORK/model.onnx" "$WORK/data/features/$video" \
  --output "$WORK/detections.json" --plot "$WORK/plots" --quiet
"$BIN/python" - "$WORK/detections.json" <<'PY'
import json, sys
results = json.load(open(sys.argv[1]))["results"]
for video, dets in results.items():
    print(f"{video}: {len(dets)} detections; best:")
    for d in dets[:3]:
        print(f"  {d['label']:<15} {d['segment'][0]:7.2f}-{d['segment'][1]:7.2f} s  score {d['score']:.3f}")
PY
ls "$WORK/plots"
