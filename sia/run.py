"""The run directory: atomic JSON/text writes, the state file and resume.

Layout::

    <run>/config.yaml  state.json  summary.json  metrics.jsonl  progress.png  public/
    <run>/gen_000/ harness.py  decision.json  adapter/  scores_val.json  scores_test.json
                   trajectories_val.jsonl  trajectories_test.jsonl  record.json

Every file is written to a temporary name and renamed into place, so a run killed with
``kill -9`` at any moment leaves either the old or the new version, never half of one.
A step whose output file exists is never redone; a step whose output is missing is redone
from scratch (it had no visible effect).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from sia.records import RunState, StateVersionError



def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, ensure_ascii=False, indent=2, default=_json_default))


def write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False, default=_json_default) + "\n" for r in rows))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):          # numpy scalars and arrays
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    @property
    def state_file(self) -> Path:
        return self.path / "state.json"

    def gen_dir(self, generation: int) -> Path:
        d = self.path / f"gen_{generation:03d}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def incumbent_adapter_dir(self, state: RunState) -> Path | None:
        """Where the incumbent's adapter lives: the folder of the weights generation that
        trained it, which a later kept harness edit keeps using (its own folder has none)."""
        inc = state.incumbent
        if inc is None or not inc.adapter:
            return None
        trained = next((h.generation for h in state.history if h.action == "weights" and h.adapter == inc.adapter),
                       inc.generation)
        return self.gen_dir(trained) / "adapter"

    def has_state(self) -> bool:
        return self.state_file.is_file()

    def load_state(self) -> RunState:
        try:
            return RunState.from_json(read_json(self.state_file))
        except StateVersionError as exc:
            raise RuntimeError(f"{self.state_file}: {exc}") from None

    def save_state(self, state: RunState) -> None:
        write_json_atomic(self.state_file, state.to_json())


def new_state() -> RunState:
    return RunState()
