#!/usr/bin/env bash
# Installs the PyTorch side of `scaledown bench` (torch, transformers, gguf) into a venv.
set -euo pipefail
venv="${1:-$HOME/.cache/scaledown/venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q torch transformers accelerate gguf numpy
echo "$venv/bin/python"
