#!/usr/bin/env bash
# Installs the other sides of `scaledown bench` into a venv: PyTorch (torch, transformers,
# gguf) and llama.cpp (llama-cpp-python, which builds llama.cpp from source: minutes).
set -euo pipefail
venv="${1:-$HOME/.cache/scaledown/venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
# The versions the bench was last run with (transformers renames its KV-cache arguments).
"$venv/bin/pip" install -q torch==2.15.0 transformers==5.24.0 accelerate gguf numpy
"$venv/bin/pip" install -q llama-cpp-python==0.3.36
echo "$venv/bin/python"
