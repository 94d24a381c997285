"""The harness contract.

A harness is ONE Python file. It is untrusted code: it runs only in sandboxed worker
processes (no network, no reads outside its allowed folders, a time and a memory limit)
and reaches the task model only through the ``ctx.llm`` handle it is given.

Required::

    def solve(inputs: dict, ctx) -> answer

``inputs`` are an example's public inputs; the answer must be JSON-serialisable (str,
number, list, dict, None) or a numpy array. Raising, hanging or exhausting memory fails
that example (recorded with the reason), not the run. A file that does not import, or has
no ``solve``, fails its generation and the loop keeps the incumbent.

Optional (enables the weights lever with gold targets, so training prompts match)::

    def sft_pair(inputs: dict, target, ctx) -> {"messages": [...], "completion": str}

It renders a TRAIN example through the harness's own prompt and answer format.

Optional, edited by the offline rules feedback::

    OPTIONS = {...}   # a dict literal of knobs the harness reads; see sia.harness.options

Processes or threads a harness leaves running after ``solve`` returns are stopped (its
worker is replaced; the trajectory records ``leftovers_stopped``). A result of more than
1,000,000 decoded objects or an answer over 64 MB fails that example ("answer too large").

``ctx`` offers:

- ``ctx.llm.chat(messages, max_tokens=None, temperature=0.0, top_p=1.0, stop=None, seed=None, used=None)``
  -> ``Completion``; ``ctx.llm.sample(messages, n, temperature=0.8, ...)`` -> list of them.
  Every call is logged in the trajectory (messages, completion, tokens, latency, log-probs, and
  the ``temperature`` and ``seed`` the engine used: in a rollout for the weights lever
  (``HarnessPool.run(sampling=...)``) the pool replaces the harness's own decoding settings).
  Pass ``used=True`` on the call whose output became the answer: a rollout's reward is credited
  to those calls (by default to the last call before the answer); mark a call whose output the
  harness threw away (a fallback template replaced it) ``used=False``, or log
  ``ctx.log("fallback", ...)`` once the replies so far are replaced: those get no credit.
  A harness that picks its answer among earlier outputs (a vote over samples) credits the one
  it picked with ``ctx.llm.mark_used(completion)``.
- ``ctx.resources``: the task's public resources (``Task.public_resources``), e.g. the label
  list and train examples with targets for few-shot.
- ``ctx.files``: name -> path of public files the harness may read (e.g. a read-only database).
- ``ctx.log(kind, **data)``: record a step in the trajectory, e.g. ``ctx.log("tool_call",
  name="run_sql", args={...}, result=...)`` or ``ctx.log("retry", reason=...)``.
- ``ctx.example_id``: the example's id (for logging only).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str = "length"
    call: int = -1          # where this call's event sits in the example's trajectory


ErrorKind = Literal["import", "exception", "timeout", "memory", "crash", "llm_budget", "bad_answer"]


@dataclass
class Job:
    """One unit of harness work: ``solve`` an example, or render a train example for SFT."""

    id: str
    inputs: dict[str, Any]
    kind: Literal["solve", "sft_pair"] = "solve"
    target: Any = None      # only for kind="sft_pair" (train split)


@dataclass
class JobResult:
    id: str
    answer: Any = None
    error: dict | None = None       # {"kind": ErrorKind, "message": str} when the job failed
    events: list[dict] = field(default_factory=list)  # trajectory steps, in order (as the worker tells them)
    served: list[dict] = field(default_factory=list)  # the model calls the trusted parent answered
    wall_s: float = 0.0             # wall time of the job
    llm_s: float = 0.0              # part of wall_s spent waiting for the engine
    prompt_tokens: int = 0
    completion_tokens: int = 0
