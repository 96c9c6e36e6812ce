#!/usr/bin/env bash
# Everything benchmarks/gpu/check.sh needs that a GPU machine without network lacks, made here
# (a machine with PyPI and launch/setup.sh's environment):
#   .whl/       wheels of the packages the GPU image does not have (Python 3.12, x86-64), with
#               corefm's pins; the GPU image's own torch, transformers, numpy... are used there
#   .gpucheck/  small real data sets: Fashion-MNIST image-text shards with Otsu/Canny pseudo-labels
#               (CLIP, SAM-CLIP, ByteFormer) and LLaMA-tokenized Shakespeare shards (OpenELM), and
#               the tokenizer they were made with
# Both folders are git-ignored; together they stay well under the 64 MiB a device call carries.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
[ -x "$PY" ] || { echo "corefm: error: run bash launch/setup.sh first" >&2; exit 2; }

# --- wheels -----------------------------------------------------------------------------------
# Binary wheels for the GPU machine's CPython 3.12 on x86-64 (manylinux tags pip matches exactly).
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
WHEELS=(hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
        open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 webdataset==1.0.2 braceexpand==0.1.7)
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d .whl "${WHEELS[@]}"
# DeepSpeed and segment-anything publish source archives only: build pure-Python wheels (DeepSpeed
# compiles its ops just in time, so its wheel holds no binaries).
for sdist in deepspeed==0.19.8 segment-anything==1.0; do
  name=${sdist%%==*}; name=${name//-/_}
  ls .whl/"$name"-*.whl >/dev/null 2>&1 || DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps -w .whl "$sdist"
done
echo "wheels in .whl/: $(ls .whl | wc -l) files, $(du -sh .whl | cut -f1)"

# --- data -------------------------------------------------------------------------------------
# Downloads (the Shakespeare texts, LLaMA's vocabulary) land in a cache that does not travel: the
# shards and the tokenizer folder beside them are what the check reads.
export COREFM_CACHE=${COREFM_CACHE:-$HOME/.cache/corefm}
D=.gpucheck/data
C=".venv/bin/corefm"
if [ ! -f $D/fmnist-pl/val/dataset.json ]; then
  $C clip image-text --source fashion-mnist --out $D/fmnist-it --samples-per-shard 250 --limit 1500
  for split in train val; do
    $C clip pseudo-label --in $D/fmnist-it/$split --out $D/fmnist-pl/$split --experts otsu-seg,canny --workers 2
  done
  rm -rf $D/fmnist-it
fi
[ -f $D/shakespeare/val/dataset.json ] || $C openelm shakespeare --out $D/shakespeare
echo "data in .gpucheck/: $(du -sh .gpucheck | cut -f1)"
