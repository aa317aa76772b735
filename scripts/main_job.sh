#!/usr/bin/env bash
# The main job on a default: fetch the models, prepare 200 SQuAD examples (from ../shared/data
# when it is there, else downloaded from the Hugging Face datasets-server), train the OSCAR
# compressor for one epoch with before/after evaluation, and write the report and the plots.
# Extra arguments go to `scaledown train` (e.g. --compressor-type encoder, --labels teacher).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/scaledown/target}"
run() { cargo run --release --quiet -- "$@"; }

run models fetch
if [ ! -f data/squad_eval.json ]; then
  if [ -f ../shared/data/squad_dev.jsonl ]; then
    run prepare --dataset squad --source ../shared/data/squad_dev.jsonl --num-examples 200 --output-file data/squad.json
  else
    run prepare --dataset squad --num-examples 200 --output-file data/squad.json
  fi
fi
run train --train-data data/squad.json --output-dir training_with_eval "$@"
echo "plots: training_with_eval/{before_after_comparison,training_curves,speed_comparison}.png; report: training_with_eval/metrics_report.json"
