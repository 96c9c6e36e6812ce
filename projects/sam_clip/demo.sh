#!/usr/bin/env bash
# SAM-CLIP on a 2-core CPU: a tiny SAM teacher (trained here on Fashion-MNIST silhouettes) and the
# tiny CLIP teacher of projects/clip_pseudo (runs/fashion_tiny) merged into one student.
# Needs data/fmnist-pl/{train,val} and runs/fashion_tiny (projects/clip_pseudo/README.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
C=.venv/bin/corefm
CFG=projects/sam_clip/configs
SAM=runs/sam_clip/sam_teacher_export/sam.pth

# teachers
$C release runs/fashion_tiny --out runs/sam_clip/clip_teacher               # open_clip folder of the CLIP teacher
$C train $CFG/fashion_sam_teacher.yaml --nproc 2                             # SAM architecture, ground-truth masks
$C sam-clip export-sam runs/sam_clip/sam_teacher $SAM                        # segment_anything .pth + sam_config.json

# stored teacher outputs: CLIP set = train shards 0-11, SAM set = train shards 12-23 (disjoint images);
# 250-sample shards so the 2000-sample shuffle buffer mixes both sets inside every batch
$C sam-clip teacher-outputs --in data/fmnist-pl/train --out data/sam_clip/clip_set --clip runs/sam_clip/clip_teacher --shards 0:12 --samples-per-shard 250
$C sam-clip teacher-outputs --in data/fmnist-pl/train --out data/sam_clip/sam_set --sam $SAM --shards 12:24 --samples-per-shard 250
$C sam-clip teacher-outputs --in data/fmnist-pl/val --out data/sam_clip/val --clip runs/sam_clip/clip_teacher --sam $SAM --shards 0:1

# the three SAM-CLIP stages
$C train $CFG/fashion_probe.yaml --nproc 2
$C train $CFG/fashion_distill.yaml --nproc 2
$C train $CFG/fashion_resolution.yaml --nproc 2

# held-out eval (all 10,000 test images, teachers online) and release
$C sam-clip eval runs/sam_clip/resolution --data data/fmnist-pl/val --teachers --json runs/sam_clip/resolution/sam_clip_eval.json \
    --save-examples 8                                                        # grids in runs/sam_clip/resolution/examples/
$C plot runs/sam_clip/probe runs/sam_clip/distill runs/sam_clip/resolution --metrics loss,loss_clip,loss_sam,eval.zero_shot_top1 \
    --out runs/sam_clip/curves.png
$C release runs/sam_clip/resolution --out release/sam-clip-fashion-tiny
.venv/bin/python benchmarks/sam_clip_speed.py --student runs/sam_clip/resolution
