#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs (reusing what is there),
# fetches the models, runs the Rust tests in release mode and checks the wasm build.
set -euo pipefail
cd "$(dirname "$0")/.."

# One target folder outside the clone, reused across clones and runs (Burn is slow to build).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/scaledown/target}"
export SCALEDOWN_MODELS="${SCALEDOWN_MODELS:-$HOME/.cache/scaledown/models}"
# wgpu on llvmpipe complains without a private runtime folder.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$HOME/.cache/scaledown/xdg}"
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"

step() { printf '\n== %s (%s)\n' "$1" "$(date +%T)"; }

step "system packages"
need=()
dpkg -s mesa-vulkan-drivers >/dev/null 2>&1 || need+=(mesa-vulkan-drivers)
dpkg -s libvulkan1 >/dev/null 2>&1 || need+=(libvulkan1)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${need[@]}"
fi
rustup target list --installed | grep -q wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown

# Build the tests and the binary together first: `cargo run` alone would resolve features
# without the dev-dependencies and build much of Burn a second time.
step "build (release)"
cargo test --release --workspace --no-run

step "models"
"$CARGO_TARGET_DIR/release/scaledown" models fetch

step "tests (release)"
cargo test --release --workspace

step "model crate for wasm32"
CARGO_TARGET_DIR="$CARGO_TARGET_DIR-wasm" cargo build --release -p scaledown-model \
  --target wasm32-unknown-unknown --features flex,wgpu

step "done"
