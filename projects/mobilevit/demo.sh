#!/usr/bin/env bash
# MobileViTv2-0.5 on Fashion-MNIST on a 2-core CPU, twice: fixed 64 px with pixel shifts, and the vision
# toolkit (multi-scale sampler + RangeAugment). Both keep a weight EMA, evaluated beside the raw weights
# on the 10,000 test images. STEPS (default 600) shortens or lengthens both runs alike.
set -euo pipefail
cd "$(dirname "$0")/../.."
C=.venv/bin/corefm
STEPS=${STEPS:-600}
[ -d data/fashion-mnist/train ] || $C data images --source fashion-mnist --out data/fashion-mnist
for recipe in fashion_v2 fashion_v2_toolkit; do
  $C train projects/mobilevit/configs/$recipe.yaml --nproc 2 --set train.max_steps=$STEPS \
    --set run_dir=runs/mobilevit_demo/$recipe --set checkpoint.every=0 --set eval.every=0
done
$C plot runs/mobilevit_demo/fashion_v2 runs/mobilevit_demo/fashion_v2_toolkit --out runs/mobilevit_demo/curves.png
.venv/bin/python - <<'PY'
import json
for name in ("fashion_v2", "fashion_v2_toolkit"):
    e = json.load(open(f"runs/mobilevit_demo/{name}/final.json"))["eval"]
    print(f"| {name} | {e['accuracy']:.4f} | {e['ema_accuracy']:.4f} | {int(e['samples'])} |")
PY
