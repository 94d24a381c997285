"""Policy-model engines. Backends are imported on demand: importing ``sia.engine`` stays cheap
and a CPU install never needs vLLM."""
from __future__ import annotations

from sia.engine.base import Engine, EngineStats, GenRequest, GenResult

ENGINES = ("hf", "vllm")


def build_engine(model_cfg, cache_dir) -> Engine:
    """The engine named by ``model_cfg.engine`` (hf | vllm), with the model loaded."""
    kind = model_cfg.engine
    if kind == "hf":
        from sia.engine.hf import HFEngine

        return HFEngine(model_cfg, cache_dir)
    if kind == "vllm":
        from sia.engine.vllm_engine import VLLMEngine

        return VLLMEngine(model_cfg, cache_dir)
    raise ValueError(f"model.engine must be one of {', '.join(ENGINES)}; got {kind!r}")


__all__ = ["ENGINES", "Engine", "EngineStats", "GenRequest", "GenResult", "build_engine"]
