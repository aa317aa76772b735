#!/usr/bin/env bash
# Issue 22's QA figures at the seed's scale, with a question-answering stage first (README,
# "Rate 2 after a HotpotQA stage"): one epoch of ../shared/data's 400 HotpotQA questions (each
# with its two gold paragraphs), then a fresh epoch of the seed's 450 SQuAD questions from those
# weights (--init-from), then the 200 more held-out SQuAD questions of the same held-out
# articles. The defaults otherwise (rate 2, k = 20, LoRA). About 45 minutes per seed on 2 cores.
#
#   scripts/qa_stage_bench.sh [SEED ...]      (default: 42 7); results in runs/qa_stage_s<SEED>*
#   QUESTIONS=900 scripts/qa_stage_bench.sh   the SQuAD epoch on the seed's 450 and 450 more
#                                             questions of the train articles (results in
#                                             runs/qa_stage900_s<SEED>*; the same stage)
#   QUESTIONS=1800 scripts/qa_stage_bench.sh  the same with 1,350 more (runs/qa_stage1800_s<SEED>*)
#   RATE=16 scripts/qa_stage_bench.sh         at rate 16 (8 memory vectors per 128-token chunk; the
#                                             scorer's factor 16): runs/qa_stage_r16_s<SEED>* (README,
#                                             "The scorer's factor"; about 25 minutes per seed)
#   PRETRAIN=480 RATE=16 scripts/qa_stage_bench.sh
#                                             480 windows of LoRA pretraining (half auto-encoding,
#                                             half continuation) before the stage (README, "Rate 16:
#                                             ... LoRA pretraining first"; about 10 minutes more):
#                                             runs/qa_stage_pre480_r16_s<SEED>* (.pretrained: its
#                                             curve and checkpoint)
#   PRETRAIN=1920 RATE=16 scripts/qa_stage_bench.sh
#                                             the same with 1,920 windows (README, "Rate 16: four
#                                             times the pretraining windows"; about 40 minutes
#                                             more): runs/qa_stage_pre1920_r16_s<SEED>*
#   PHASES=4 PRETRAIN=1920 RATE=16 ...        the pretraining in 4 phases of 480 windows, each a new
#                                             schedule from the one before (README, "Rate 16:
#                                             pretraining in four phases"): runs/..._ph4_...
#   SEGMENTS=scored PHASES=4 PRETRAIN=1920 RATE=16 scripts/qa_stage_bench.sh
#                                             the stage and the epoch with the span loss and
#                                             segments placed by the scorer (--span-weight 1
#                                             --adaptive-segments; README, "Rate 16: segments placed
#                                             by the scorer": issue 22's rate-16 targets; about 2 hours
#                                             per seed): runs/qa_stage_pre1920_ph4_r16_scored_s<SEED>*
#                                             (the pretraining in runs/qa_stage_pre1920_ph4_r16_s<SEED>*)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/scaledown/target}"
cargo build --release --quiet
sd="$CARGO_TARGET_DIR/release/scaledown"
squad=../shared/data/squad_dev.jsonl
[ -f "$squad" ] || { echo "needs $squad (../shared beside the clone)" >&2; exit 1; }

"$sd" models fetch
mkdir -p data runs
[ -f data/squad500_eval.json ] ||
  "$sd" prepare --dataset squad --source "$squad" --num-examples 500 --output-file data/squad500.json
[ -f data/heldout200.json ] ||
  python3 scripts/heldout_questions.py data/squad500.json data/squad500_eval.json "$squad" 200 data/heldout200.json
[ -f data/hotpot400_gold.json ] || python3 scripts/hotpot_questions.py data/hotpot400_gold.json
questions=${QUESTIONS:-450}
case "$questions" in
  450) train=data/squad500.json; epoch=qa_stage ;;
  900 | 1800) train=data/squad$questions.json; epoch=qa_stage$questions
       [ -f "$train" ] || python3 scripts/more_questions.py data/squad500.json "$train" $((questions - 450)) ;;
  *) echo "QUESTIONS=$questions: 450, 900 or 1800" >&2; exit 1 ;;
esac

rate=(); tag=
case "${RATE:-2}" in
  2) ;;
  16) rate=(--compression-rate 16 --num-memory-tokens 8); tag=_r16 ;;
  *) echo "RATE=$RATE: 2 or 16" >&2; exit 1 ;;
esac
pretrain=${PRETRAIN:-0}
case "$pretrain" in
  0) ;;
  '' | *[!0-9]* | 0*) echo "PRETRAIN=$pretrain: a number of windows" >&2; exit 1 ;;
  *) [ $((pretrain % 4)) = 0 ] || { echo "PRETRAIN=$pretrain: a multiple of 4 (the batch)" >&2; exit 1; }
     tag=_pre$pretrain$tag ;;
esac

phases=${PHASES:-1}
case "$phases" in
  1) ;;
  2 | 3 | 4 | 5 | 6 | 7 | 8)
    [ "$pretrain" != 0 ] && [ $((pretrain % (4 * phases))) = 0 ] ||
      { echo "PHASES=$phases: needs PRETRAIN, a multiple of 4 x PHASES windows" >&2; exit 1; }
    tag=_pre${pretrain}_ph$phases${tag#_pre$pretrain} ;;
  *) echo "PHASES=$phases: 1 to 8" >&2; exit 1 ;;
esac
pretag=$tag
scored=()
case "${SEGMENTS:-fixed}" in
  fixed) ;;
  scored) scored=(--span-weight 1 --adaptive-segments); tag=${tag}_scored ;;
  *) echo "SEGMENTS=$SEGMENTS: fixed or scored" >&2; exit 1 ;;
esac

seeds=("$@")
[ ${#seeds[@]} -gt 0 ] || seeds=(42 7)
for s in "${seeds[@]}"; do
  from=()
  if [ "$pretrain" != 0 ]; then
    steps=$((pretrain / 4 / phases))
    for i in $(seq 1 "$phases"); do
      pre=runs/qa_stage${pretag}_s$s.pretrained
      [ "$phases" = 1 ] || pre=$pre.p$i
      "$sd" pretrain "${rate[@]}" --train-data data/squad500.json --generator-training lora \
        --pretrain-data ../shared/data/hotpotqa_dev.jsonl --pretrain-data "$squad" \
        --pretrain-steps $steps --eval-steps $steps \
        --compressor-learning-rate 1e-4 --learning-rate 1e-4 --max-eval-examples 20 \
        --eval-batch-size 4 --seed "$s" --resume "${from[@]}" --output-dir "$pre" | tee "$pre.log"
      from=(--init-from "$pre")
    done
  fi
  out=runs/qa_stage${tag}_s$s
  "$sd" train "${rate[@]}" "${scored[@]}" --train-data data/hotpot400_gold.json --eval-data data/squad500_eval.json \
    --max-eval-examples 10 "${from[@]}" --seed "$s" --resume --output-dir "$out/stage" |
    tee "$out.stage.log"
  qa=runs/${epoch}${tag}_s$s
  "$sd" train "${rate[@]}" "${scored[@]}" --train-data "$train" --eval-data data/squad500_eval.json \
    --max-eval-examples 50 --init-from "$out/stage" --seed "$s" --resume --output-dir "$qa/qa" |
    tee "$qa.qa.log"
  "$sd" eval --checkpoint "$qa/qa/checkpoints/final" --eval-data data/heldout200.json \
    --max-eval-examples 200 --eval-batch-size 4 --output "$qa.200.json" | tee "$qa.200.log"
done
