#!/usr/bin/env bash
# The quickest smoke run (about a minute after set-up): scikit-learn's handwritten digits as shards,
# a 4-layer ViT on 2 CPU ranks through DeepSpeed ZeRO-2, loss and held-out accuracy, an export.
# Extra arguments go to `corefm train`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
[ -f data/digits/val/dataset.json ] || .venv/bin/corefm data images --source digits --out data/digits
exec .venv/bin/corefm train projects/vit/configs/digits_tiny.yaml --nproc "${NPROC:-2}" "$@"
