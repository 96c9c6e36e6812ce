#!/usr/bin/env bash
# The README's first command: set up, build the default shards, train the default recipe on
# 2 CPU ranks through DeepSpeed, print loss and held-out accuracy.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
[ -f data/digits/val/dataset.json ] || .venv/bin/corefm data images --source digits --out data/digits
exec .venv/bin/corefm train projects/vit/configs/digits_tiny.yaml --nproc "${NPROC:-2}" "$@"
