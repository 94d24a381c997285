"""Bounds on what the trusted loop keeps of the workers' results.

A 64 MB frame of JSON can decode into a gigabyte of Python objects (15 million empty
lists), and a split's answers are all held until it is scored. So the pool refuses, per
example, a result whose decoded object count (bounded before decoding, from the frame's
bytes: ``protocol.count_objects``) or answer size in bytes is too large, and per run the
results beyond a total budget; each such example fails with the reason, the loop goes on.
An example's trajectory (its events: model calls, ``ctx.log`` records) is bounded per
example and charged to the same per-run budget: 20 jobs of 60 MB of events once made the
loop hold 1.26 G characters and write a 1.2 GB trajectory file.
"""
from __future__ import annotations

from typing import Any

ANSWER_OBJECTS = 1_000_000       # objects in one result message (answer and trajectory)
ANSWER_BYTES = 64 << 20          # decoded bytes of one answer (strings, arrays, numbers)
SPLIT_OBJECTS = 8_000_000        # all results one run() keeps
SPLIT_BYTES = 1 << 30
EVENT_BYTES = 4 << 20            # decoded bytes of one example's events (trajectory)


def decoded_bytes(obj: Any, stop_after: int) -> int:
    """Approximate payload bytes of decoded JSON data (iterative; stops past ``stop_after``)."""
    total, stack = 0, [obj]
    while stack and total <= stop_after:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item) + 8
        elif isinstance(item, dict):
            total += 16 * len(item) + 8
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            total += 8 * len(item) + 8
            stack.extend(item)
        else:
            total += int(getattr(item, "nbytes", 8))   # numpy arrays carry their buffer size
    return total


def events_problem(events: Any, limit: int) -> str:
    """'' when an example's events fit ``limit`` decoded bytes, else the reason (the worker
    checks this before sending, the parent again on what it received)."""
    if decoded_bytes(events, limit) <= limit:
        return ""
    return (f"trajectory too large: this example's events (model calls and ctx.log records) decode "
            f"to more than {limit} bytes (limit per example); log less and keep prompts shorter")


class ResultLimits:
    def __init__(self, answer_objects: int, answer_bytes: int, split_objects: int, split_bytes: int,
                 event_bytes: int = EVENT_BYTES):
        self.answer_objects = answer_objects
        self.answer_bytes = answer_bytes
        self.split_objects = split_objects
        self.split_bytes = split_bytes
        self.event_bytes = event_bytes

    def check(self, holder: Any, objects: int, answer: Any, events: Any = ()) -> str:
        """'' when the result may be kept (then answer and events are charged to
        ``holder.held_*``), else the reason."""
        size = decoded_bytes(answer, self.answer_bytes)
        if size > self.answer_bytes:
            return (f"answer too large: it decodes to more than {self.answer_bytes} bytes "
                    f"(limit per example); return a smaller answer")
        problem = events_problem(events, self.event_bytes)
        if problem:
            return problem
        size += decoded_bytes(events, self.event_bytes)
        if holder.held_objects + objects > self.split_objects or holder.held_bytes + size > self.split_bytes:
            return (f"answer too large: this split's results together exceed the run's budget of "
                    f"{self.split_objects} objects or {self.split_bytes} bytes (answers and trajectories "
                    f"count); answers and logs must be smaller")
        holder.held_objects += objects
        holder.held_bytes += size
        return ""
