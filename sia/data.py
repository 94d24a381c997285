"""The examples and public material of one run, prepared once from the task; and the checks
on a task's data that hold for every task (run before any work, with the config check)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sia.run import RunDir, write_json_atomic
from sia.tasks import Example, Splits, Task


@dataclass
class RunData:
    splits: Splits
    val: list[Example]          # keep-best decisions
    test: list[Example]         # reported, never decided on
    probe: list[Example]        # train examples scored per kept generation (over/under-fitting)
    resources: dict             # ctx.resources of every harness
    files: dict[str, str]       # ctx.files of every harness


def prepare_data(task: Task, run: RunDir, budget) -> RunData:
    splits = task.load()
    if not splits.val:
        raise RuntimeError(f"task {task.name} has an empty val split; it cannot make keep-best decisions")
    public_dir = run.path / "public"
    public_dir.mkdir(exist_ok=True)
    resources = task.public_resources(splits)
    files = {k: str(v) for k, v in task.public_files(splits, public_dir).items()}
    write_json_atomic(public_dir / "resources.json", resources)
    return RunData(splits=splits, val=splits.val[: budget.val_examples], test=splits.test[: budget.test_examples],
                   probe=splits.train[: budget.probe_train_examples], resources=resources, files=files)


# ---- checks on the data of every task (before any work) ---------------------------------

def file_problem(key: str, path: Any, expected: str, suffixes: tuple[str, ...] = ()) -> str | None:
    """Why ``path`` (the value of config ``key``) is not a readable file, or None. A folder
    is called a folder, with the files in it that look like what is expected."""
    p = Path(str(path)).expanduser()
    if p.is_file():
        return None
    if p.is_dir():
        try:
            found = sorted(c.name for c in p.iterdir() if c.is_file() and (not suffixes or c.suffix in suffixes))
        except OSError:   # unreadable folder: say what it is without its contents
            found = []
        hint = f" (it holds {', '.join(found[:5])}{', ...' if len(found) > 5 else ''})" if found else ""
        return (f"{key}={str(path)!r} is a directory, not a file: point {key} at {expected} "
                f"inside it{hint}")
    return f"{key}={str(path)!r} does not exist: point {key} at {expected}"


# ---- reading a task's data files (one wording for every task) ---------------------------

class DataFileError(ValueError):
    """A data file that cannot be read as what it should hold. The message says what is wrong
    and the fix but not the file, so the caller puts the file name or config key in front."""


def undecodable(err: UnicodeDecodeError, fix: str, where: str = "") -> DataFileError:
    """The error for bytes that are not UTF-8: the first bad byte, its offset and ``where``
    (e.g. " of line 3"), then ``fix`` (how to re-save it, naming the likely source encoding)."""
    return DataFileError(f"is not UTF-8 text (byte 0x{err.object[err.start]:02x} at byte {err.start}"
                         f"{where}): {fix}")


def read_utf8(path: Path, fix: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise undecodable(err, fix) from None


def read_json_list(path: Path, holds: str, fix: str) -> list:
    """The JSON list in UTF-8 file ``path``, whose items are ``holds`` (e.g. "{db_id, question,
    query} items"); else DataFileError saying which of text, JSON or list it is not."""
    try:
        items = json.loads(read_utf8(path, fix))
    except json.JSONDecodeError as err:
        raise DataFileError(f"is not valid JSON ({err.msg} at line {err.lineno} column {err.colno}): "
                            f"it must be one JSON list of {holds}") from None
    if not isinstance(items, list):
        raise DataFileError(f"holds a JSON {type(items).__name__}, not a list: it must be one JSON "
                            f"list of {holds}")
    return items


def _inputs_hash(example: Example) -> str:
    text = json.dumps(example.inputs, sort_keys=True, default=repr)   # ASCII: lone surrogates hash too
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def shared_example_problems(splits: Splits, where: str) -> list[str]:
    """Examples whose inputs are identical in two splits. A train example's target is public
    (``ctx.resources['train']``, few-shot, training): the same inputs in val or test are
    answered by looking them up, and val/test twins make test no longer held out from the
    keep-best decisions. Examples without a target (nothing to look up) are not compared."""
    seen: dict[str, tuple[str, str]] = {}
    shared: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for name in ("train", "val", "test"):
        for example in splits[name]:
            if example.target is None:
                continue
            key = _inputs_hash(example)
            if key in seen and seen[key][0] != name:
                shared.setdefault((seen[key][0], name), []).append((seen[key][1], example.id))
            seen.setdefault(key, (name, example.id))
    problems = []
    for (first, second), pairs in shared.items():
        problems.append(
            f"{where}: {len(pairs)} {second} example(s) have the same inputs as {first} examples (first: "
            f"{second} {pairs[0][1]} = {first} {pairs[0][0]}), so the {second} split is not held out"
            + (" (train targets are public to every harness)" if first == "train" else "")
            + ": give each split its own examples (a separate test file must not repeat the data file, "
              "and a data file must not hold the same item twice)")
    return problems


def frame_problems(resources: dict, where: str) -> list[str]:
    """The public resources travel to every harness worker in one config message, whose
    size the worker protocol bounds (``sia.harness.protocol.MAX_MESSAGE_BYTES``); too large,
    every worker start fails. Leaves 1 MiB for the rest of that message."""
    from sia.harness.protocol import MAX_MESSAGE_BYTES, encode

    limit = MAX_MESSAGE_BYTES - 2 ** 20
    sizes = {str(k): len(encode({k: v})) for k, v in resources.items()}
    total = sum(sizes.values())
    if total <= limit:
        return []
    largest = sorted(sizes, key=sizes.get, reverse=True)[:2]
    parts = ", ".join(f"{k!r} {_mb(sizes[k])}" + _entries(resources[k]) for k in largest)
    return [f"{where}: the public resources every harness worker receives (ctx.resources) come to "
            f"{_mb(total)}, above the {_mb(limit)} a worker's config message may hold "
            f"(sia/harness/protocol.py MAX_MESSAGE_BYTES); largest: {parts}. Use a smaller data file "
            f"(fewer train examples, or shorter texts)"]


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _entries(value: Any) -> str:
    if not isinstance(value, (list, dict)) or not value:
        return ""
    from sia.harness.protocol import encode

    items = list(value.values()) if isinstance(value, dict) else value
    longest = max(len(encode(v)) for v in items)
    return f" ({len(items)} entries, the largest {_mb(longest)})"


def job_frame_problems(splits: Splits, where: str) -> list[str]:
    """Each example's inputs travel to a worker in one job message, under the same bound."""
    from sia.harness.protocol import MAX_MESSAGE_BYTES, encode

    limit = MAX_MESSAGE_BYTES - 2 ** 20
    for name in ("train", "val", "test"):
        for example in splits[name]:
            if (size := len(encode(example.inputs))) > limit:
                return [f"{where}: the inputs of {name} example {example.id} come to {_mb(size)}, above the "
                        f"{_mb(limit)} a worker's job message may hold (sia/harness/protocol.py "
                        f"MAX_MESSAGE_BYTES): shorten or drop that item in the data file"]
    return []


def data_problems(task: Task) -> list[str]:
    """Checks every task's data gets once it loads (after ``task.config_problems()``):
    inputs shared between splits, and what workers receive too large for a message."""
    where = f"task.data ({task.data_label})"
    splits = task.load()
    return (shared_example_problems(splits, where) or job_frame_problems(splits, where)
            or frame_problems(task.public_resources(splits), where))
