"""The offline Meta-Agent (``agent.meta=seed``): the task's seed harness is generation 0.

LLM Meta-Agents implement the same ``sia.parts.MetaAgent`` interface (``agent.meta=llm``).
"""
from __future__ import annotations

from sia.parts import AgentEnv, MetaOutcome


class SeedMetaAgent:
    name = "seed"

    def first_harness(self, env: AgentEnv) -> MetaOutcome:
        return MetaOutcome(code=env.task.seed_harness(), agent="seed", details={"source": "task seed harness"})
