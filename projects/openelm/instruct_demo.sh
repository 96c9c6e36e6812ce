#!/usr/bin/env bash
# Instruction tuning on a CPU: the Shakespeare demo's OpenELM release (made first by demo.sh when it is
# missing) -> a chat data set from WordNet (definitions, example sentences, synonyms; 500 words held out)
# -> packed with the chat template (loss on replies only) -> LoRA on 2 ranks (configs/instruct_lora.yaml)
# -> release (merged model + peft adapter) -> held-out response loss of the base vs the tuned model ->
# chat samples for held-out words. Run from anywhere; extra arguments go to `corefm train` (e.g.
# --set train.max_steps=100). Delete runs/instruct_lora to train again (re-running resumes, and a
# finished run only re-evaluates).
set -euo pipefail
cd "$(dirname "$0")/../.."
COREFM=${COREFM:-.venv/bin/corefm}
PYTHON=${PYTHON:-.venv/bin/python}
BASE_RUN=${BASE_RUN:-runs/shakespeare_demo}
BASE=$BASE_RUN/release
DATA=${DATA:-data/wordnet_chat}
RUN=${RUN:-runs/instruct_lora}
start=$SECONDS

if [ ! -f "$BASE/config.json" ]; then
    echo "no base release at $BASE: running the Shakespeare demo first (about 4 minutes on a quiet machine)"
    RUN=$BASE_RUN bash projects/openelm/demo.sh
fi
[ -f "$DATA/jsonl/val.jsonl" ] || "$COREFM" openelm instruct-data --wordnet /usr/share/wordnet --out "$DATA/jsonl" \
    --val-words 500 --max-words 30000
[ -f "$DATA/val/dataset.json" ] || "$COREFM" openelm instruct-pack --train "$DATA/jsonl/train.jsonl" \
    --val "$DATA/jsonl/val.jsonl" --tokenizer "$BASE" --out "$DATA" --seq-len 256
"$COREFM" train projects/openelm/configs/instruct_lora.yaml --nproc "${NPROC:-2}" --set "model.base=$BASE" \
    --set "data.train=$DATA/train" --set "data.val=$DATA/val" --set "run_dir=$RUN" "$@"
"$COREFM" release "$RUN" --out "$RUN/release" > /dev/null
echo "release folder (dry run, nothing uploaded): $RUN/release (merged model) and $RUN/release/adapter (peft)"
"$COREFM" openelm instruct-eval "$BASE" --data "$DATA/val" --label "base "
"$COREFM" openelm instruct-eval "$RUN/release" --data "$DATA/val" --label "tuned"
# one held-out question of each kind, with WordNet's answer
"$PYTHON" - "$DATA/jsonl/val.jsonl" > "$RUN/samples.tsv" <<'EOF'
import json, sys
seen = {}
for line in open(sys.argv[1], encoding="utf-8"):
    e = json.loads(line)
    if e["kind"] not in seen and e["word"].isalpha() and e["word"].islower():
        seen[e["kind"]] = (e["messages"][0]["content"], e["messages"][1]["content"])
for question, answer in seen.values():
    print(f"{question}\t{answer}")
EOF
while IFS=$'\t' read -r question answer; do
    "$COREFM" openelm generate "$RUN/release" --chat --prompt "$question" --max-new-tokens 40 \
        --temperature 0.7 --top-k 40
    echo "(WordNet: $answer)"
    echo
done < "$RUN/samples.tsv"
echo "demo: $((SECONDS - start)) s"
