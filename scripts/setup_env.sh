#!/usr/bin/env bash
# Create .venv and install AMNet with its extras. Idempotent: re-runs only when pyproject.toml
# changed. torch is pinned to 2.13.0 first because a CPU build of that release ships with this
# kind of machine; an open range would pull a multi-GB CUDA build instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.amnet-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install --quiet "torch==2.13.0"
  .venv/bin/python -m pip install --quiet -e ".[train,triton,viz,dev,scale,openvino]"
  echo "$want" > "$stamp"
fi
