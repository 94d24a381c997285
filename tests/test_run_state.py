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


# ---- a damaged state.json (issue 20) -----------------------------------------------------------

def _finished_run(path):
    """A run dir as the loop leaves it after three generations (gen 1 kept, gen 2 rejected)
    with generation 3 started: each record.json written before state.json, as Loop._finish does."""
    run, state = RunDir(path), new_state()
    records = [GenerationRecord(generation=0, action="seed", kept=True, harness="gen_000/harness.py", val=0.2,
                                test=0.1, wall_s=10.0, val_metrics={"f1": 0.2}),
               GenerationRecord(generation=1, action="weights", algorithm="sft", kept=True, adapter="gen001",
                                harness="gen_000/harness.py", val=0.4, test=0.3, wall_s=20.0, train_s=7.0),
               GenerationRecord(generation=2, action="harness", edit="few_shot", kept=False,
                                harness="gen_002/harness.py", val=0.3, test=0.2, wall_s=5.0)]
    for record in records:
        if record.kept:
            state.incumbent = Incumbent(record.generation, record.harness, record.adapter, record.val, record.test)
        record.incumbent_val, record.incumbent_test = state.incumbent.val, state.incumbent.test
        write_json_atomic(run.gen_dir(record.generation) / "record.json", record.to_json())
        state.history.append(record)
        state.next_generation = record.generation + 1
        state.elapsed_s += record.wall_s
        state.train_s += record.train_s
    run.save_state(state)
    run.gen_dir(3)   # generation 3 started, no record yet
    return run, state


@pytest.mark.parametrize("damage", [lambda text: text[: len(text) // 2], lambda text: "", lambda text: "[]"])
def test_damaged_state_is_rebuilt_from_the_generation_records(tmp_path, caplog, damage):
    run, state = _finished_run(tmp_path / "run")
    run.state_file.write_text(damage(run.state_file.read_text()))
    with caplog.at_level("WARNING", logger="sia"):
        rebuilt = run.load_state()
    assert rebuilt.history == state.history and rebuilt.incumbent == state.incumbent
    assert rebuilt.next_generation == 3 and rebuilt.status == "running"
    assert rebuilt.elapsed_s == 35.0 and rebuilt.train_s == 7.0
    assert "rebuilt the run state from 3 generation record(s)" in caplog.text
    assert (run.path / "state.json.damaged").is_file()
    assert run.load_state() == rebuilt           # saved: the next resume reads it as is


def test_damaged_state_without_any_record_starts_at_generation_zero(tmp_path):
    run = RunDir(tmp_path / "run")
    run.state_file.write_text('{"version": 2, "sta')
    state = run.load_state()
    assert state.next_generation == 0 and state.history == [] and state.incumbent is None


def test_damaged_state_and_damaged_record_is_a_clear_error(tmp_path):
    from sia.run import StateDamaged

    run, _ = _finished_run(tmp_path / "run")
    run.state_file.write_text('{"version": 2, "hist')
    (run.path / "gen_001" / "record.json").write_text('{"generation": 1, "act')
    with pytest.raises(StateDamaged, match=r"gen_001/record.json is damaged too.*Restore state.json from a backup"):
        run.load_state()
    (run.path / "gen_001" / "record.json").unlink()      # a hole before gen_002's record
    with pytest.raises(StateDamaged, match="gen_002/record.json exists but the record of generation 1 does not"):
        run.load_state()


def test_cli_resume_of_an_unrebuildable_state_exits_2_without_traceback(tmp_path, compose_cfg):
    import subprocess
    import sys

    from omegaconf import OmegaConf

    from conftest import REPO

    run, _ = _finished_run(tmp_path / "run")
    (run.path / "config.yaml").write_text(OmegaConf.to_yaml(compose_cfg("logger=none"), resolve=True))
    run.state_file.write_text('{"version": 2, "hist')
    (run.path / "gen_000" / "record.json").write_text("{")
    proc = subprocess.run([sys.executable, "-m", "sia", f"resume={run.path}"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "cannot be rebuilt from the generation records" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_rebuilt_state_of_a_run_the_feedback_stopped_stays_done(tmp_path):
    run, state = _finished_run(tmp_path / "run")
    stop = GenerationRecord(generation=3, action="stop", rationale="nothing left to try", wall_s=1.0)
    write_json_atomic(run.gen_dir(3) / "record.json", stop.to_json())
    run.state_file.write_text("{")
    rebuilt = run.load_state()
    assert rebuilt.status == "done" and rebuilt.stop_reason == "the feedback agent stopped: nothing left to try"
    assert rebuilt.next_generation == 4
