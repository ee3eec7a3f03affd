#!/usr/bin/env bash
# Set up a fresh virtual environment (CPU torch) and run the main job.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --no-cache-dir --upgrade pip
.venv/bin/python -m pip install --quiet --no-cache-dir "torch==2.13.0" -e ".[demo]"
.venv/bin/segquant demo "$@"
