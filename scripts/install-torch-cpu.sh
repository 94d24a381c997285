#!/usr/bin/env bash
# Install the CPU build of torch 2.13 into the venv whose python is $1 (scripts/setup.sh and
# scripts/setup-vllm.sh call it first, before anything that depends on torch).
# PyPI's Linux torch wheel is the CUDA build (multi-GB of nvidia-* packages); the CPU build is
# asked for by its local version (2.13.0+cpu). Where the configured index or find-links already
# holds it, nothing else is contacted; otherwise PyTorch's CPU index is added (TORCH_INDEX).
set -euo pipefail
VENV_PY=$1
TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
if ! "$VENV_PY" -m pip install -q "torch==2.13.0+cpu" 2>/dev/null; then
  "$VENV_PY" -m pip install -q --extra-index-url "$TORCH_INDEX" "torch==2.13.0+cpu"
fi
"$VENV_PY" - <<'CHECK'
import torch
if torch.version.cuda is not None:
    raise SystemExit(f"torch {torch.__version__} is a CUDA build (CUDA {torch.version.cuda}), not the CPU build: "
                     "uninstall it and rerun with TORCH_INDEX set to an index that serves torch 2.13.0+cpu")
CHECK
