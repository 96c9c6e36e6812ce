#!/usr/bin/env bash
# The README's first command: set up, then the OpenELM Shakespeare demo (projects/openelm/demo.sh):
# LLaMA-token shards of Shakespeare, a 6-layer OpenELM trained on 2 CPU ranks through DeepSpeed,
# validation perplexity against the unigram baseline, a release folder (dry run) and a sample.
# Extra arguments go to `corefm train`. The quickest smoke run is launch/smoke.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
exec bash projects/openelm/demo.sh "$@"
