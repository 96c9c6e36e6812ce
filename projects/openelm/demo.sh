#!/usr/bin/env bash
# OpenELM on a CPU in about 4 minutes: Shakespeare -> LLaMA-token shards -> a 6-layer OpenELM trained
# on 2 ranks (bf16, z-loss) -> validation perplexity against the unigram baseline -> release folder
# (dry run) -> a greedy sample. Run from anywhere; extra arguments go to `corefm train` (e.g.
# --set train.max_steps=60). Delete runs/shakespeare_demo to train again from scratch (re-running
# otherwise resumes, and a finished run only re-evaluates).
set -euo pipefail
cd "$(dirname "$0")/../.."
COREFM=${COREFM:-.venv/bin/corefm}
DATA=${DATA:-data/shakespeare}
RUN=${RUN:-runs/shakespeare_demo}
start=$SECONDS

[ -f "$DATA/train/dataset.json" ] || "$COREFM" openelm shakespeare --out "$DATA"
"$COREFM" train projects/openelm/configs/shakespeare_demo.yaml --nproc "${NPROC:-2}" \
    --set "data.train=$DATA/train" --set "data.val=$DATA/val" --set "run_dir=$RUN" "$@"
"$COREFM" openelm baseline "$RUN"
"$COREFM" plot "$RUN"                                  # training and validation curves -> $RUN/curves.png
"$COREFM" release "$RUN" --out "$RUN/release" > /dev/null
echo "release folder (dry run, nothing uploaded): $RUN/release"
"$COREFM" openelm generate "$RUN/release" --prompt "ROMEO." --max-new-tokens 48 --temperature 0.8 --top-k 40
echo "demo: $((SECONDS - start)) s"
