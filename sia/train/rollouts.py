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

FIELDS = ("group", "example_id", "seed", "temperature", "top_p", "finish", "prompt", "completion", "reward", "eos",
          "prompt_ids", "completion_ids")


def sample_record(sample: Sample) -> dict:
    record = {"group": sample.group, "example_id": sample.example_id, "seed": sample.seed,
              "temperature": sample.sampling_temperature, "top_p": sample.top_p, "finish": sample.finish,
              "prompt": sample.prompt, "completion": sample.completion, "reward": sample.reward, "eos": sample.eos}
    if sample.completion_ids is not None:   # the sampled ids: what the trainer trains on
        record["prompt_ids"], record["completion_ids"] = sample.prompt_ids, sample.completion_ids
    return record


def record_sample(record: dict) -> Sample:
    """A Sample from a rollout record; a record without ids (an older file) trains on its text."""
    missing = [k for k in ("prompt", "completion") if k not in record]
    if missing:
        raise ValueError(f"rollout record lacks {missing}; each line needs at least prompt and completion")
    return Sample(prompt=record["prompt"], completion=record["completion"], reward=record.get("reward"),
                  group=str(record.get("group", "")), sampling_temperature=record.get("temperature"),
                  eos=bool(record.get("eos", True)), example_id=str(record.get("example_id", "")),
                  seed=record.get("seed"), top_p=record.get("top_p"), finish=record.get("finish"),
                  prompt_ids=record.get("prompt_ids"), completion_ids=record.get("completion_ids"))


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
    record); when given, each credited call is matched to a served call, each served call to
    at most one credited call (a call logged as used 50 times is one sample), and the sample is
    built from the served record alone (prompt, completion, ids, temperature, top_p, seed,
    finish): a harness can neither put text of its own into the training data nor say how it
    was sampled. Without ``served`` (old trajectory files) the events are taken as they are."""
    credited = credited_calls(events)
    if served is None:
        return _samples_from_untrusted(credited, reward, group, example_id, temperature, seed)
    unmatched: dict[str, list[dict]] = {}
    for call in served:
        if isinstance(call, dict) and call.get("type") == "llm_call":
            unmatched.setdefault(_call_key(call), []).append(call)
    out = []
    for call in credited:
        left = unmatched.get(_call_key(call))
        if left:
            out.append(served_sample(left.pop(0), reward, group=group, example_id=example_id))
    return out


def served_sample(call: dict, reward: float | None, *, group: str, example_id: str) -> Sample:
    """A Sample from one trusted served-call record (``sia.harness.batcher.served_record``)."""
    finish = call.get("finish")
    if finish is None:   # an engine that does not say: its finish_reason is all there is
        eos = call.get("finish_reason", "stop") == "stop"
    else:
        eos = finish == "eos"
    return Sample(prompt=call["messages"], completion=call["completion"], reward=reward, group=group,
                  sampling_temperature=call.get("temperature"), eos=eos, example_id=example_id,
                  seed=call.get("seed"), top_p=call.get("top_p"), finish=finish,
                  prompt_ids=call.get("prompt_ids"), completion_ids=call.get("completion_ids"))


def _samples_from_untrusted(credited: list[dict], reward, group, example_id, temperature, seed) -> list[Sample]:
    """Old trajectory files (no served record): the harness's events as they are, each distinct
    call once, trained on their text."""
    out, seen = [], set()
    for call in credited:
        messages, completion = call.get("messages"), call.get("completion")
        if not isinstance(messages, list) or not isinstance(completion, str) or _call_key(call) in seen:
            continue
        seen.add(_call_key(call))
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


def _call_key(call: dict) -> str | None:
    try:
        return json.dumps([call.get("messages"), call.get("completion")], sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError):   # a harness event that is not plain JSON matches nothing
        return None
