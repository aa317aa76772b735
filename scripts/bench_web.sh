#!/usr/bin/env bash
# Benchmark of the browser playground (issue "Browser playground"): the page's tiny-model work
# in headless Chromium (WebGPU; SwiftShader on a machine without a GPU) against the same work
# natively on wgpu and on the CPU (Flex), in one run on one machine. Prints the ratios.
# Needs what scripts/test.sh installs and builds (the page in dist/, Chromium, chromedriver).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/scaledown/target}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$HOME/.cache/scaledown/xdg}"
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"

out=$(mktemp)
cargo run --release -q -p scaledown-web -- bench --backend flex | tee -a "$out"
cargo run --release -q -p scaledown-web -- bench --backend wgpu | tee -a "$out"
cargo test --release -q --test web_page the_page_trains -- --ignored --nocapture 2>/dev/null | grep '^page ' | tee -a "$out"

# "<who>: compressed C ms/query, uncompressed U ms/query, training T ms/step"
awk '
  { who = $0; sub(/:.*/, "", who)
    for (i = 1; i <= NF; i++) { if ($i == "compressed") c[who] = $(i+1); if ($i == "uncompressed") u[who] = $(i+1); if ($i == "training") t[who] = $(i+1) }
    order[n++] = who }
  END {
    printf "\n%-40s %14s %14s %12s\n", "", "compressed ms", "uncompr. ms", "train ms/step"
    for (i = 0; i < n; i++) printf "%-40s %14.1f %14.1f %12.1f\n", order[i], c[order[i]], u[order[i]], t[order[i]]
    page = order[n-1]
    for (i = 0; i < n - 1; i++)
      printf "page / %-30s compressed %.2fx, uncompressed %.2fx, training %.2fx\n", order[i], c[page]/c[order[i]], u[page]/u[order[i]], t[page]/t[order[i]]
  }' "$out"
rm -f "$out"
