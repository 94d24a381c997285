"""Atomic writes and the state file."""
from __future__ import annotations

import json
import os

import pytest

from sia.records import GenerationRecord, Incumbent
from sia.run import RunDir, new_state, write_json_atomic


def test_atomic_write_leaves_old_version_when_serialisation_fails(tmp_path):
    path = tmp_path / "s.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]   # no temp file left behind


def test_state_round_trip_and_version_check(tmp_path):
    run = RunDir(tmp_path / "run")
    assert not run.has_state()
    state = new_state()
    state.history.append(GenerationRecord(generation=0, action="seed", kept=True, val=0.5,
                                          extra={"from_a_newer_sia": 1}))
    state.incumbent = Incumbent(0, "h.py", None, 0.5, None)
    run.save_state(state)
    assert run.load_state() == state
    state.version = 99
    run.save_state(state)
    with pytest.raises(RuntimeError, match="version"):
        run.load_state()


def test_version_1_state_files_are_migrated(tmp_path):
    """A run dir written by the first SIA still resumes: its timing block moves to typed fields."""
    run = RunDir(tmp_path / "run")
    v1 = {"version": 1, "status": "running", "next_generation": 2, "elapsed_s": 30.0, "wandb_id": None,
          "incumbent": {"generation": 1, "harness": "gen_001/harness.py", "adapter": None, "val": 0.4, "test": 0.3},
          "history": [{"generation": 0, "action": "seed", "edit": None, "rationale": "first", "kept": True,
                       "harness": "gen_000/harness.py", "adapter": None, "val": 0.1, "val_metrics": {"f1": 0.1},
                       "tokens": 10, "wall_s": 5.0, "incumbent_val": 0.1, "incumbent_test": 0.1, "test": 0.1},
                      {"generation": 1, "action": "harness", "edit": "few_shot", "rationale": "r", "kept": True,
                       "val": 0.4, "test": 0.3, "incumbent_val": 0.4, "incumbent_test": 0.3, "wall_s": 9.0}],
          "timing": {"generate_s": 12.5, "train_s": 0.0}}
    write_json_atomic(run.state_file, v1)
    state = run.load_state()
    assert state.version == 2 and state.generate_s == 12.5 and state.next_generation == 2
    assert state.incumbent.generation == 1 and state.history[1].label == "harness:few_shot"
    assert state.history[0].val_metrics == {"f1": 0.1}


def test_the_incumbent_adapter_is_found_where_it_was_trained_not_where_it_was_last_kept(tmp_path):
    run, state = RunDir(tmp_path / "run"), new_state()
    assert run.incumbent_adapter_dir(state) is None
    state.history = [GenerationRecord(generation=0, action="seed", kept=True),
                     GenerationRecord(generation=1, action="weights", kept=True, adapter="gen001"),
                     GenerationRecord(generation=2, action="harness", kept=True, adapter="gen001")]
    state.incumbent = Incumbent(generation=2, harness=str(run.path / "gen_002" / "harness.py"), adapter="gen001")
    assert run.incumbent_adapter_dir(state) == run.path / "gen_001" / "adapter"
    state.incumbent = Incumbent(generation=2, harness="h.py", adapter=None)   # a harness on the base weights
    assert run.incumbent_adapter_dir(state) is None
