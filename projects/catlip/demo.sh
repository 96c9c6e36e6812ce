#!/usr/bin/env bash
# CatLIP beside CLIP on one image tower, on real captions, on a CPU:
#  1. Fashion-MNIST's templated captions: CatLIP (BCE over caption synsets) and CLIP (contrastive, no
#     pseudo-label heads) train CLIP's tiny tower with the same optimizer, steps and batch; then the
#     10 classes: CatLIP's synset rows as the class head (no training) against CLIP's zero-shot, and
#     linear probes on both towers' frozen features.
#  2. openclipart's human-written titles and keywords (Debian openclipart-png/-svg): the same pair
#     at 64 px, scored on held-out drawings by which synsets each shows (CatLIP: its classifier; CLIP:
#     zero-shot over the synsets' lemmas).
# About 25 minutes on a quiet 2-core machine. Extra arguments go to every `corefm train` call.
# A finished run only re-evaluates; delete runs/catlip_* to retrain. Results: projects/catlip/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
COREFM=${COREFM:-.venv/bin/corefm}
PY=${PY:-.venv/bin/python}
CLIP_RECIPE=projects/clip_pseudo/configs/fashion_tiny.yaml
CATLIP_RECIPE=projects/catlip/configs/fashion_tiny.yaml
start=$SECONDS
vocab_size() { "$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['vocabulary'])" "$1/catlip_report.json"; }

# 1. Fashion-MNIST
IT=data/fmnist-it CL=data/fmnist-catlip
[ -f "$IT/train/dataset.json" ] || "$COREFM" clip image-text --source fashion-mnist --out "$IT" --samples-per-shard 2500
[ -f "$CL/catlip_report.json" ] || "$COREFM" catlip labels --in "$IT" --out "$CL" --min-count 20
"$COREFM" train "$CATLIP_RECIPE" --nproc 2 --set "model.num_classes=$(vocab_size "$CL")" \
    --set "data.train=$CL/train" --set "data.val=$CL/val" --set run_dir=runs/catlip_fashion "$@"
"$COREFM" train "$CLIP_RECIPE" --nproc 2 --set task.heads=[] --set "data.train=$IT/train" --set "data.val=$IT/val" \
    --set run_dir=runs/catlip_fashion_clip "$@"
for run in runs/catlip_fashion runs/catlip_fashion_clip; do
  echo "== $run: synsets of held-out images"
  "$COREFM" catlip eval "$run" --data "$CL/val" --json "$run/catlip_eval.json"
  echo "== $run: the 10 classes (probes on 2000 train images, scored on the 10k test images)"
  "$COREFM" catlip transfer "$run" --train "$IT/train" --data "$IT/val" --probe-samples 2000 --json "$run/transfer.json"
done
echo "== runs/catlip_fashion_clip: zero-shot on the 10 classes"
"$COREFM" clip eval runs/catlip_fashion_clip --data "$IT/val" --json runs/catlip_fashion_clip/clip_eval.json

# 2. openclipart (64 px, 8 px patches: the drawings are ~200 px)
OIT=data/openclipart-it OCL=data/openclipart-catlip
SIZE=(--set model.image_size=64 --set model.patch_size=8)
[ -f "$OIT/train/dataset.json" ] || "$COREFM" clip image-text --source openclipart --out "$OIT" --samples-per-shard 500 --max-size 256
[ -f "$OCL/catlip_report.json" ] || "$COREFM" catlip labels --in "$OIT" --out "$OCL" --min-count 20
"$COREFM" train "$CATLIP_RECIPE" --nproc 2 "${SIZE[@]}" --set "model.num_classes=$(vocab_size "$OCL")" \
    --set "data.train=$OCL/train" --set "data.val=$OCL/val" --set data.shuffle_buffer=1000 \
    --set run_dir=runs/catlip_openclipart "$@"
"$COREFM" train "$CLIP_RECIPE" --nproc 2 "${SIZE[@]}" --set task.heads=[] --set task.class_names=[] \
    --set "data.train=$OIT/train" --set "data.val=$OIT/val" --set data.shuffle_buffer=1000 \
    --set run_dir=runs/catlip_openclipart_clip "$@"
for run in runs/catlip_openclipart runs/catlip_openclipart_clip; do
  echo "== $run: synsets of held-out drawings"
  "$COREFM" catlip eval "$run" --data "$OCL/val" --json "$run/catlip_eval.json"
done
"$COREFM" plot runs/catlip_fashion runs/catlip_openclipart --out runs/catlip_fashion/curves.png   # training curves
echo "demo: $((SECONDS - start)) s"
