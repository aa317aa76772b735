#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs (reusing what is there),
# fetches the models, runs the Rust tests in release mode, builds the web page with trunk and
# tests it, and the model crate, in headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."

# Target folders outside the clone, reused across clones and runs (Burn is slow to build);
# the wasm one apart from the native one.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/scaledown/target}"
WASM_TARGET_DIR="$CARGO_TARGET_DIR-wasm"
export SCALEDOWN_MODELS="${SCALEDOWN_MODELS:-$HOME/.cache/scaledown/models}"
# wgpu on llvmpipe complains without a private runtime folder.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$HOME/.cache/scaledown/xdg}"
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"

step() { printf '\n== %s (%s)\n' "$1" "$(date +%T)"; }

step "system packages"
need=()
for pkg in mesa-vulkan-drivers libvulkan1 chromium chromium-driver; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${need[@]}"
fi
rustup target list --installed | grep -q wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown

step "web tools"
# trunk 0.21 (0.22 needs a newer rustc); wasm-bindgen-cli at the exact version of Cargo.lock,
# without --locked (the registry index lacks one of its locked dependencies).
if [ "$(trunk --version 2>/dev/null)" != "trunk 0.21.14" ]; then
  cargo install --locked trunk --version 0.21.14
fi
wbg=$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/version = "\(.*\)"/\1/p')
if [ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $wbg" ]; then
  cargo install wasm-bindgen-cli --version "$wbg"
fi

# Build the tests and the binary together first: `cargo run` alone would resolve features
# without the dev-dependencies and build much of Burn a second time.
step "build (release)"
cargo test --release --workspace --no-run

step "models"
"$CARGO_TARGET_DIR/release/scaledown" models fetch

step "tests (release)"
cargo test --release --workspace

step "the OpenAI Python client against scaledown serve"
# A venv of its own outside the clone (reused), with the client pinned.
venv="$HOME/.cache/scaledown/venv-openai"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c 'import openai, sys; sys.exit(openai.__version__ != "3.60.0")' 2>/dev/null \
  || "$venv/bin/pip" install -q openai==3.60.0
SCALEDOWN_PYTHON="$venv/bin/python" cargo test --release --test serve -- --ignored

step "web page (trunk build)"
if [ -f ../shared/data/squad_dev.jsonl ]; then source=(--source ../shared/data/squad_dev.jsonl); else source=(); fi
"$CARGO_TARGET_DIR/release/scaledown" prepare --dataset squad --num-examples 200 "${source[@]}" \
  --output-file web/data/squad_sample.json
CARGO_TARGET_DIR="$WASM_TARGET_DIR" trunk build --release

step "web page in headless Chromium"
cargo test --release --test web_page -- --ignored --nocapture --test-threads=1

step "model crate in headless Chromium (wasm-bindgen-test)"
(cd crates/scaledown-model && CARGO_TARGET_DIR="$WASM_TARGET_DIR" CHROMEDRIVER=/usr/bin/chromedriver \
  CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner WASM_BINDGEN_TEST_TIMEOUT=600 \
  cargo test --release --target wasm32-unknown-unknown --features flex,wgpu --test browser)

step "done"
