#!/usr/bin/env bash
# Dataset reinforcement on a CPU: the MobileViT demo's teacher (runs/mobilevit_demo/fashion_v2, made by
# `bash projects/mobilevit/demo.sh`) reinforces Fashion-MNIST's 60k train images (2 stored views each,
# top-5 logits), then one small ViT student trains three ways at equal steps (2 ranks each):
#   kd:     the stored views, KD loss against the teacher (task.distill, label_weight 0)
#   labels: the same stored views, cross-entropy on the labels (label_weight 1)
#   plain:  the plain shards, no augmentation
# Held-out accuracy on the 10k test images at the end. About 25 minutes on a quiet 2-core machine.
# Extra arguments go to every `corefm train` call. Results: README "Dataset reinforcement".
set -euo pipefail
cd "$(dirname "$0")/.."
COREFM=${COREFM:-.venv/bin/corefm}
TEACHER=${TEACHER:-runs/mobilevit_demo/fashion_v2}
RECIPE=projects/vit/configs/fashion_student.yaml
start=$SECONDS
[ -f data/fashion-mnist/train/dataset.json ] || "$COREFM" data images --source fashion-mnist --out data/fashion-mnist
[ -f "$TEACHER/model.safetensors" ] || bash projects/mobilevit/demo.sh
"$COREFM" data reinforce --in data/fashion-mnist/train --out data/fashion-rf/train --teacher "$TEACHER" --augs 2 --topk 5 ${SCALE:+--scale "$SCALE"}
"$COREFM" train "$RECIPE" --nproc 2 --set run_dir=runs/fashion_student_kd "$@"
"$COREFM" train "$RECIPE" --nproc 2 --set run_dir=runs/fashion_student_labels --set task.distill.label_weight=1.0 "$@"
"$COREFM" train "$RECIPE" --nproc 2 --set run_dir=runs/fashion_student_plain --set task.distill.enabled=false \
    --set data.train=data/fashion-mnist/train "$@"
for run in kd labels plain; do
  printf '%-7s %s\n' "$run" "$(.venv/bin/python -c "import json,sys; e=json.load(open(sys.argv[1]))['eval']; print(f\"test accuracy {e['accuracy']:.4f}, loss {e['loss']:.4f}\")" "runs/fashion_student_$run/final.json")"
done
echo "demo: $((SECONDS - start)) s"
