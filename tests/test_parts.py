"""A new feedback and a new engine are one class and one YAML file each: added here from a
test-only config group (tests/support/conf), without touching sia/, and run through the real
CLI, sandboxed pool and W&B offline files."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO

SUPPORT = REPO / "tests" / "support"


def test_a_toy_feedback_and_engine_from_a_test_config_group_run_the_loop(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(SUPPORT), "WANDB_SILENT": "true"}
    proc = subprocess.run(
        [sys.executable, "-m", "sia", f"hydra.searchpath=[file://{SUPPORT / 'conf'}]", "feedback=toy",
         "model.engine=toy", "budget=smoke", "logger=wandb", "quiet=true", "agent.workers=2",
         f"hydra.run.dir={run_dir}", f"cache_dir={tmp_path / 'cache'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    state = json.loads((run_dir / "state.json").read_text())
    assert [h["action"] for h in state["history"]] == ["seed", "harness", "stop"]
    assert state["history"][1]["rationale"].startswith("toy feedback: ")
    assert state["history"][1]["kept"] is True                     # the label list lets the toy engine answer
    assert "the feedback agent stopped" in state["stop_reason"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["feedback"] == "toy" and summary["decisions"][1].startswith("harness:")
    assert _wandb_decisions(run_dir) == ["seed", summary["decisions"][1], "stop"]


def _wandb_records(path):
    """Records of an offline .wandb file: a LevelDB-style log (7-byte header, 32 KiB blocks of
    chunks: crc32 4, length 2, type 1 (1 full, 2 first, 3 middle, 4 last), data)."""
    data, pos, block, parts = path.read_bytes(), 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - (pos % block)
        if left < 7:                      # block trailer padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0 and length == 0:
            continue
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):
            yield parts


def wandb_history(run_dir) -> list[dict]:
    """Every history row logged to the offline .wandb file of a run, decoded."""
    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    rows = []
    for raw in _wandb_records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return rows


def _wandb_decisions(run_dir) -> list[str]:
    """The `decision` of every logged generation row."""
    return [row["decision"] for row in wandb_history(run_dir) if "decision" in row]
