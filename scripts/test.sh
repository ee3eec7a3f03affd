#!/usr/bin/env bash
# Set up a fresh virtual environment (CPU torch) and run the test suite. Exit code follows pytest.
# --no-cache-dir: the wheels are not kept a second time in ~/.cache/pip (a CI run once ran out of disk there).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --no-cache-dir --upgrade pip
.venv/bin/python -m pip install --quiet --no-cache-dir "torch==2.13.0" -e ".[dev]"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
