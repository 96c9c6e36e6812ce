#!/usr/bin/env bash
# CLIP + pseudo-labels on a CPU: Fashion-MNIST image-text shards -> Otsu foreground and Canny edge
# pseudo-labels -> a tiny CLIP trained with and without the heads (2 ranks each) -> zero-shot,
# retrieval and dense probes for both -> an open_clip release folder (dry run). About 10 minutes on
# a quiet 2-core machine (~30 under load). Run from anywhere; extra arguments go to both `corefm train` calls (e.g.
# --set train.max_steps=200). A finished run only re-evaluates; delete runs/fashion_tiny* to retrain.
set -euo pipefail
cd "$(dirname "$0")/../.."
COREFM=${COREFM:-.venv/bin/corefm}
IT=${IT:-data/fmnist-it}
PL=${PL:-data/fmnist-pl}
start=$SECONDS

[ -f "$IT/train/dataset.json" ] || "$COREFM" clip image-text --source fashion-mnist --out "$IT" --samples-per-shard 2500
for split in train val; do
  [ -f "$PL/$split/dataset.json" ] || "$COREFM" clip pseudo-label --in "$IT/$split" --out "$PL/$split" \
      --experts otsu-seg,canny --workers 2
done
"$COREFM" train projects/clip_pseudo/configs/fashion_tiny.yaml --nproc "${NPROC:-2}" \
    --set "data.train=$PL/train" --set "data.val=$PL/val" "$@"
"$COREFM" train projects/clip_pseudo/configs/fashion_tiny.yaml --nproc "${NPROC:-2}" \
    --set "data.train=$PL/train" --set "data.val=$PL/val" --set task.heads=[] --set run_dir=runs/fashion_tiny_plain "$@"
for run in runs/fashion_tiny runs/fashion_tiny_plain; do
  echo "== $run"
  # --save-examples: image | expert pseudo-label | prediction grids per head in $run/examples/
  "$COREFM" clip eval "$run" --data "$PL/val" --probe seg,semantic,edges --probe-train "$PL/train" --probe-up 4 \
      --save-examples 8
done
"$COREFM" plot runs/fashion_tiny runs/fashion_tiny_plain --metrics loss,clip_loss,eval.zero_shot_top1 \
    --out runs/fashion_tiny/curves.png
"$COREFM" release runs/fashion_tiny --out runs/fashion_tiny/release
echo "demo: $((SECONDS - start)) s"
