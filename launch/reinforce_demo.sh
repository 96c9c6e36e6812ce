#!/usr/bin/env bash
# Dataset reinforcement on a CPU. A MobileViTv2-0.5 teacher (64 px, projects/mobilevit's fashion_v2
# recipe, 1500 steps) reinforces Fashion-MNIST's 60k train images (top-5 logits per stored view),
# then one small ViT student (28 px) trains at equal steps (600, 2 ranks) on:
#   kd:       the reinforced shards, KD loss against the stored logits (task.distill, label_weight 0)
#   kd_mix:   the same, half KD and half cross-entropy on the labels (label_weight 0.5)
#   plain:    the plain shards and their labels
# By default the stored view is the image itself (AUGS=1 FLIP=0 SCALE=1.0,1.0), so the students see
# the same pixels and differ only in their targets; AUGS=2 FLIP=1 SCALE=0.35,1.0 stores random crops
# and flips (then compare with label_weight 1 on the same views: --set task.distill.label_weight=1.0).
# Held-out accuracy on the 10k test images at the end. About 30 minutes on a quiet 2-core machine.
# Extra arguments go to every student's `corefm train`. Results: README "Dataset reinforcement".
set -euo pipefail
cd "$(dirname "$0")/.."
COREFM=${COREFM:-.venv/bin/corefm}
TEACHER=${TEACHER:-runs/reinforce_teacher}
AUGS=${AUGS:-1} FLIP=${FLIP:-0} SCALE=${SCALE:-1.0,1.0}
RECIPE=projects/vit/configs/fashion_student.yaml
start=$SECONDS
[ -f data/fashion-mnist/train/dataset.json ] || "$COREFM" data images --source fashion-mnist --out data/fashion-mnist
[ -f "$TEACHER/model.safetensors" ] || "$COREFM" train projects/mobilevit/configs/fashion_v2.yaml --nproc 2 \
    --set "run_dir=$TEACHER" --set checkpoint.every=0 --set eval.every=0
flip=(); [ "$FLIP" = 1 ] || flip=(--no-flip)
"$COREFM" data reinforce --in data/fashion-mnist/train --out data/fashion-rf/train --teacher "$TEACHER" \
    --augs "$AUGS" --topk 5 --scale "$SCALE" "${flip[@]}"
"$COREFM" train "$RECIPE" --nproc 2 --set run_dir=runs/fashion_student_kd --set task.distill.label_weight=0.0 "$@"
"$COREFM" train "$RECIPE" --nproc 2 --set run_dir=runs/fashion_student_kd_mix "$@"
"$COREFM" train "$RECIPE" --nproc 2 --set run_dir=runs/fashion_student_plain --set task.distill.enabled=false \
    --set data.train=data/fashion-mnist/train "$@"
for run in "$TEACHER" runs/fashion_student_kd runs/fashion_student_kd_mix runs/fashion_student_plain; do
  printf '%-32s %s\n' "$run" "$(.venv/bin/python -c "import json,sys; e=json.load(open(sys.argv[1]))['eval']; print(f\"test accuracy {e['accuracy']:.4f}, loss {e['loss']:.4f}\")" "$run/final.json")"
done
"$COREFM" plot runs/fashion_student_kd runs/fashion_student_kd_mix runs/fashion_student_plain --metrics loss \
    --out runs/fashion_student_curves.png                                    # the three students side by side
echo "demo: $((SECONDS - start)) s"
