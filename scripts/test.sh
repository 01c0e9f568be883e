#!/usr/bin/env bash
# Set up the environment if needed, lint, and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy  # the package's annotations (it ships py.typed); settings in pyproject.toml
# The tests write up to about 1 GB to the temp folder at their peak (paper-size checkpoints): say
# so up front on a nearly full disk, where they would fail one by one on write errors.
.venv/bin/python -c 'import shutil, sys, tempfile
d = tempfile.gettempdir(); free = shutil.disk_usage(d).free
if free < 1.2 * 2**30:
    print(f"warning: {free / 2**20:.0f} MB free in {d}; the tests need about 1 GB there", file=sys.stderr)'
# pytest exits 5 when it collects no test; that must fail the run, and it does (non-zero).
# One worker per core (pytest-xdist); the Ray tests share one worker (their xdist_group).
exec .venv/bin/python -m pytest -q -n auto --dist loadgroup "$@"
