#!/usr/bin/env bash
# Installs the PyTorch side of `scaledown bench` (torch, transformers, gguf) into a venv.
set -euo pipefail
venv="${1:-$HOME/.cache/scaledown/venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
# The versions the bench was last run with (transformers renames its KV-cache arguments).
"$venv/bin/pip" install -q torch==2.15.0 transformers==5.24.0 accelerate gguf numpy
echo "$venv/bin/python"
