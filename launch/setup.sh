#!/usr/bin/env bash
# Create .venv and install corefm with its pinned dependencies. Idempotent: a second call
# with an unchanged pyproject.toml returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.corefm-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "corefm: installing into .venv (torch, deepspeed, open_clip, transformers; ~2 min from a local cache)"
  .venv/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
  touch "$stamp"
fi
