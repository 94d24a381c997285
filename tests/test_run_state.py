"""Atomic writes and the state file."""
from __future__ import annotations

import json
import os

import pytest

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
    run.save_state(state)
    assert run.load_state() == state
    state["version"] = 99
    run.save_state(state)
    with pytest.raises(RuntimeError, match="version"):
        run.load_state()
