"""The Meta-Agent writes the first harness from the task description.

Offline (``agent.meta=seed``) it returns the task's seed harness. An LLM Meta-Agent plugs in
here with the same signature: it reads ``task.description()`` and returns a harness file.
"""
from __future__ import annotations

from sia.tasks import Task


def first_harness(kind: str, task: Task) -> str:
    if kind == "seed":
        return task.seed_harness()
    raise ValueError(f"agent.meta={kind!r} is not available; use agent.meta=seed")
