#!/usr/bin/env bash
# The best recipe at the seed's scale (issue 22's QA figures), in one command: 480 pretraining
# windows with LoRA on the generator (auto-encoding and continuation, every passage of
# ../shared/data outside the eval articles), a QA stage on HotpotQA's 400 questions (their gold
# paragraphs), then one epoch on the seed's 450 SQuAD questions; evaluated on the split's 50
# held-out questions and on 200 more of the same held-out articles. Defaults otherwise
# (rate 4, memory after layer 20, seed 42). About 50 minutes on 2 cores.
#
#   ./scripts/seed_recipe.sh [OUT_DIR]      (default runs/seed_recipe; resumable: run it again)
#   SCALEDOWN=path/to/binary ./scripts/seed_recipe.sh   (a build of your choice, not rebuilt)
#
# Results: OUT_DIR/squad/metrics_report.json (the 50) and OUT_DIR/heldout200.json (the 200).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/seed_recipe}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/scaledown/target}"
if [ -z "${SCALEDOWN:-}" ]; then
  cargo build --release --quiet
fi
sd="${SCALEDOWN:-$CARGO_TARGET_DIR/release/scaledown}"
shared=../shared/data

"$sd" models fetch
mkdir -p data
[ -f data/squad500.json ] || "$sd" prepare --dataset squad --source "$shared/squad_dev.jsonl" \
  --num-examples 500 --output-file data/squad500.json
[ -f data/heldout200.json ] || python3 scripts/heldout_questions.py data/squad500.json \
  data/squad500_eval.json "$shared/squad_dev.jsonl" 200 data/heldout200.json
[ -f data/hotpot400_gold.json ] || python3 scripts/hotpot_questions.py data/hotpot400_gold.json

corpus=(--pretrain-data "$shared/hotpotqa_dev.jsonl" --pretrain-data "$shared/squad_dev.jsonl")
held_out=(--eval-data data/squad500_eval.json)

# 1. Pretraining: 120 steps of 4 windows, LoRA and compressor at 1e-4.
"$sd" pretrain --train-data data/squad500.json "${held_out[@]}" --generator-training lora \
  "${corpus[@]}" --pretrain-steps 120 --eval-steps 120 --compressor-learning-rate 1e-4 \
  --learning-rate 1e-4 --max-eval-examples 20 --eval-batch-size 4 --resume \
  --output-dir "$out/pretrain"
# 2. The HotpotQA stage: one epoch of 400 questions (100 steps) from the pretrained weights.
"$sd" train --train-data data/hotpot400_gold.json "${held_out[@]}" --init-from "$out/pretrain" \
  --max-eval-examples 20 --eval-batch-size 4 --resume --output-dir "$out/hotpot_stage"
# 3. The seed's epoch: 450 SQuAD questions (113 steps) from the stage's weights.
"$sd" train --train-data data/squad500.json "${held_out[@]}" --init-from "$out/hotpot_stage" \
  --max-eval-examples 50 --resume --output-dir "$out/squad"
# 4. The steadier figure: 200 more questions of the held-out articles.
"$sd" eval --checkpoint "$out/squad/checkpoints/final" --eval-data data/heldout200.json \
  --max-eval-examples 200 --eval-batch-size 4 --output "$out/heldout200.json"
