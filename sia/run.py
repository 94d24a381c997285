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
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from sia.records import GenerationRecord, Incumbent, RunState, StateVersionError

log = logging.getLogger("sia")


class StateDamaged(RuntimeError):
    """state.json is unreadable and the generation records cannot stand in for it."""

    def __init__(self, state_file: Path, damage: str, why: str):
        super().__init__(f"{state_file} is damaged ({damage}) and cannot be rebuilt from the generation "
                         f"records: {why}. Restore state.json from a backup, or start a new run (the run "
                         f"dir's gen_*/ folders keep every finished generation's harness and scores)")


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
        """The saved state; a damaged state.json (cut short, edited by hand, bytes lost) is
        rebuilt from the generations' record.json files, which hold each finished generation
        whole (``rebuild_state``); the damaged file is kept beside it as state.json.damaged."""
        try:
            data = read_json(self.state_file)
            if not isinstance(data, dict) or "version" not in data:
                raise ValueError(f"a JSON {type(data).__name__} without a state version")
            return RunState.from_json(data)
        except StateVersionError as exc:
            raise RuntimeError(f"{self.state_file}: {exc}") from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:   # JSONDecodeError, UnicodeDecodeError too
            damage = f"{type(exc).__name__}: {str(exc)[:200]}"
        state = self.rebuild_state(damage)
        os.replace(self.state_file, self.state_file.with_name("state.json.damaged"))
        self.save_state(state)
        return state

    def rebuild_state(self, damage: str) -> RunState:
        """A RunState from gen_000/record.json, gen_001/record.json, ... (written before the
        state each generation, so every finished generation has one). Raises StateDamaged
        when a record is unreadable or one is missing before a later one."""
        history, gaps = [], []
        for gen_dir in sorted(self.path.glob("gen_[0-9][0-9][0-9]")):
            record_file, generation = gen_dir / "record.json", int(gen_dir.name[4:])
            if not record_file.is_file():
                gaps.append(generation)          # started, not finished (or a gap: checked below)
                continue
            if gaps or generation != len(history):
                raise StateDamaged(self.state_file, damage, f"{gen_dir.name}/record.json exists but the record "
                                                            f"of generation {len(history)} does not")
            try:
                history.append(GenerationRecord.from_json(read_json(record_file)))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise StateDamaged(self.state_file, damage,
                                   f"{record_file} is damaged too ({type(exc).__name__}: {str(exc)[:120]})") from None
            if history[-1].generation != generation:
                raise StateDamaged(self.state_file, damage, f"{record_file} holds generation "
                                                            f"{history[-1].generation}, not {generation}")
        state = RunState(next_generation=len(history), history=history,
                         elapsed_s=sum(r.wall_s for r in history), train_s=sum(r.train_s for r in history))
        kept = [r for r in history if r.kept]
        if kept:
            last = kept[-1]
            state.incumbent = Incumbent(last.generation, last.harness, last.adapter, last.val, last.test)
        if history and history[-1].action == "stop":   # the feedback ended the run: a resume must not go on
            state.status, state.stop_reason = "done", f"the feedback agent stopped: {history[-1].rationale}"
        if history and state.incumbent is None:
            raise StateDamaged(self.state_file, damage, "no generation record is marked kept (the seed "
                                                        "harness's is), so the incumbent is unknown")
        log.warning("%s is damaged (%s): rebuilt the run state from %d generation record(s) (gen_*/record.json): "
                    "next generation %d, incumbent generation %s; wall time from the records' wall_s "
                    "(time of a generation stopped midway is not counted), engine time unknown (0); "
                    "the damaged file is kept as state.json.damaged", self.state_file, damage, len(history),
                    state.next_generation, None if state.incumbent is None else state.incumbent.generation)
        return state

    def save_state(self, state: RunState) -> None:
        write_json_atomic(self.state_file, state.to_json())


def new_state() -> RunState:
    return RunState()
