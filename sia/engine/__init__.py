"""Task-model engines. Backends are imported on demand: importing ``sia.engine`` stays cheap
and a CPU install never needs vLLM. Which engine a model runs on is its ``engine`` node
(``conf/model/engine/<name>.yaml``, chosen with ``model.engine=<name>``)."""
from __future__ import annotations

from sia.engine.base import Engine, EngineStats, GenRequest, GenResult


def build_engine(model_cfg, cache_dir) -> Engine:
    """The engine named by ``model_cfg.engine`` (its ``_target_``), with the model loaded."""
    from sia.build import build

    return build(model_cfg.engine, model_cfg=model_cfg, cache_dir=cache_dir)


__all__ = ["Engine", "EngineStats", "GenRequest", "GenResult", "build_engine"]
