"""Rollouts as training data: ``rollouts.jsonl`` (one sample per line) and the step from a
harness trajectory to the samples its reward credits.

Each line is appended and fsync'ed before the next sample starts, so a ``kill -9`` during
sampling keeps every finished sample; a torn last line (the write the kill interrupted) is
ignored when reading and cut off before the next append.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from sia.train.samples import Sample

FIELDS = ("group", "example_id", "seed", "temperature", "prompt", "completion", "reward", "eos")


def sample_record(sample: Sample) -> dict:
    return {"group": sample.group, "example_id": sample.example_id, "seed": sample.seed,
            "temperature": sample.sampling_temperature, "prompt": sample.prompt,
            "completion": sample.completion, "reward": sample.reward, "eos": sample.eos}


def record_sample(record: dict) -> Sample:
    missing = [k for k in ("prompt", "completion") if k not in record]
    if missing:
        raise ValueError(f"rollout record lacks {missing}; each line needs at least prompt and completion")
    return Sample(prompt=record["prompt"], completion=record["completion"], reward=record.get("reward"),
                  group=str(record.get("group", "")), sampling_temperature=record.get("temperature"),
                  eos=bool(record.get("eos", True)), example_id=str(record.get("example_id", "")),
                  seed=record.get("seed"))


class RolloutWriter:
    """Appends samples to ``rollouts.jsonl``, one durable line each."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        cut_torn_tail(self.path)
        self._file = open(self.path, "a", encoding="utf-8")

    def append(self, sample: Sample) -> None:
        line = json.dumps(sample_record(sample), ensure_ascii=False)
        self._file.write(line + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def read_rollouts(path) -> list[Sample]:
    """Every complete line of ``path`` as a Sample ([] when the file does not exist). A last
    line without its newline, or that does not parse, is a write cut short and is skipped;
    a bad line anywhere else is corruption and raises, naming the line."""
    path = Path(path)
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    body, newline, _torn = text.rpartition("\n")  # what follows the last newline is a cut-short write
    samples = []
    for number, line in enumerate(body.split("\n") if newline else [], 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not a JSON rollout record ({exc}); the file is corrupt") from None
        samples.append(record_sample(record))
    return samples


def drawn_keys(samples: list[Sample]) -> set[tuple[str, int | None]]:
    """(example_id, seed) of the samples already drawn: what a resumed rollout skips."""
    return {(s.example_id, s.seed) for s in samples}


def cut_torn_tail(path: Path) -> None:
    """Truncate the file after its last newline, so the next append starts a fresh line."""
    if not path.is_file():
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)
            f.flush()
            os.fsync(f.fileno())


# ---- trajectories -> samples -------------------------------------------------------------

def credited_calls(events: list[dict]) -> list[dict]:
    """The model calls whose output became the answer: those the harness marked ``used``
    (``ctx.llm.chat(..., used=True)``); with none marked, the last call before the answer
    unless it is marked ``used=False`` or a ``fallback`` event follows it (an output the harness
    threw away gets no credit)."""
    calls = []
    for event in events:
        if not isinstance(event, dict):
            continue
        if event.get("type") == "llm_call":
            calls.append(event)
        elif event.get("type") == "fallback":   # ctx.log("fallback"): the outputs so far were replaced
            calls = [{**c, "used": False} if c.get("used") is None else c for c in calls]
    marked = [c for c in calls if c.get("used") is True]
    if marked:
        return marked
    unrejected = [c for c in calls if c.get("used") is not False]
    return unrejected[-1:]


def samples_from_events(events: list[dict], reward: float | None, *, group: str, example_id: str = "",
                        temperature: float | None = None, seed: int | None = None,
                        served: list[dict] | None = None) -> list[Sample]:
    """Samples for one harness run: each credited call's messages and completion with the
    run's reward. ``served``: the calls the trusted parent actually answered (the pool's own
    record); when given, a credited call the model never produced is dropped, so a harness
    cannot put text of its own into the training data."""
    trusted = None
    if served is not None:
        trusted = {_call_key(c) for c in served if isinstance(c, dict) and c.get("type") == "llm_call"}
    out = []
    for call in credited_calls(events):
        messages, completion = call.get("messages"), call.get("completion")
        if not isinstance(messages, list) or not isinstance(completion, str):
            continue
        if trusted is not None and _call_key(call) not in trusted:
            continue
        out.append(Sample(prompt=messages, completion=completion, reward=reward, group=group,
                          sampling_temperature=call.get("temperature", temperature),
                          eos=call.get("finish_reason", "stop") == "stop", example_id=example_id,
                          seed=call.get("seed", seed)))
    return out


def samples_from_trajectories(trajectories: list[dict], rewards: list[float | None] | None = None,
                              temperature: float | None = None) -> list[Sample]:
    """Samples from trajectory records ({"id", "events", "score", optional "seed",
    "temperature", "served"}), grouped by example id; ``rewards`` (one per trajectory)
    replaces the records' scores when given."""
    if rewards is not None and len(rewards) != len(trajectories):
        raise ValueError(f"got {len(rewards)} rewards for {len(trajectories)} trajectories; pass one per trajectory")
    out = []
    for i, t in enumerate(trajectories):
        reward = rewards[i] if rewards is not None else t.get("score")
        out += samples_from_events(t.get("events") or [], reward, group=str(t["id"]), example_id=str(t["id"]),
                                   temperature=t.get("temperature", temperature), seed=t.get("seed"),
                                   served=t.get("served"))
    return out


def _call_key(call: dict) -> str:
    return json.dumps([call.get("messages"), call.get("completion")], sort_keys=True, ensure_ascii=False)
