"""Test-only Meta-Agent: the task's seed harness with its model calls capped at ``max_tokens``.

cuda_kernel's seed harness asks for 1,536 tokens per call (a whole module); the embedded 135M
model fills them, about two minutes per call on a 2-core CPU. A loop test that checks levers and
bookkeeping needs an answer, not a long one: the harness is the seed harness with one OPTIONS value
rewritten (the same rewrite a harness edit makes), so everything else about it is unchanged.
"""
from __future__ import annotations

from sia.harness.options import read_options, with_options
from sia.parts import AgentEnv, MetaOutcome


class ShortSeedMetaAgent:
    name = "short_seed"

    def __init__(self, max_tokens: int):
        self.max_tokens = int(max_tokens)

    def first_harness(self, env: AgentEnv) -> MetaOutcome:
        seed = env.task.seed_harness()
        options = read_options(seed)
        if not options or "max_tokens" not in options:
            raise ValueError(f"agent.meta=short_seed: the {env.task.name} seed harness has no OPTIONS['max_tokens'] "
                             "to cap; use agent.meta=seed for this task")
        # None when the seed already asks for no more: then it is used as it is
        code = with_options(seed, max_tokens=min(self.max_tokens, int(options["max_tokens"]))) or seed
        return MetaOutcome(code=code, agent=self.name, details={"source": f"task seed harness, max_tokens<={self.max_tokens}"})
