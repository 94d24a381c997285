"""The one guard every vLLM test module starts with: skip where vLLM is not installed, fail
where CI expects it (SIA_EXPECT_VLLM=1)."""
from __future__ import annotations

import importlib.util
import os

import pytest


def require_vllm() -> None:
    if importlib.util.find_spec("vllm") is not None:
        return
    if os.environ.get("SIA_EXPECT_VLLM") == "1":
        raise RuntimeError("SIA_EXPECT_VLLM=1 but vllm is not importable here: run the vLLM tests with "
                           ".venv-vllm/bin/python (made by bash scripts/setup-vllm.sh)")
    pytest.skip("vLLM is not installed in this venv (bash scripts/setup-vllm.sh; run with .venv-vllm/bin/python)",
                allow_module_level=True)
