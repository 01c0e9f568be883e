#!/usr/bin/env bash
# Set up the environment if needed, lint, and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# pytest exits 5 when it collects no test; that must fail the run, and it does (non-zero).
# One worker per core (pytest-xdist); the Ray tests share one worker (their xdist_group).
exec .venv/bin/python -m pytest -q -n auto --dist loadgroup "$@"
