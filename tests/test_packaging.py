"""A non-editable install runs: the wheel carries conf/, tasks/ and sweeps/ and the Hydra
search-path plugin, so `python -m sia` composes from any working directory."""
from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO


def test_the_wheel_runs_outside_the_source_tree(tmp_path):
    wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "cwd"
    elsewhere.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(REPO)], check=True, capture_output=True, timeout=300)
    wheel = next(wheels.glob("sia-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = subprocess.run([sys.executable, "-c", "import sia, sia.tasks as t; print(sia.__file__); "
                            "print(t.available_tasks())"], cwd=elsewhere, env=env, capture_output=True,
                           text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    assert str(target) in probe.stdout and "legal_charge" in probe.stdout and "sql_qa" in probe.stdout
    composed = subprocess.run([sys.executable, "-m", "sia", "+sweep=seeds", "model.engine=vllm", "--cfg", "all"],
                              cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert composed.returncode == 0, composed.stderr
    assert "seed: 0,1,2,3,4" in composed.stdout                      # sweeps found via the plugin
    assert "_target_: sia.engine.vllm_engine.VLLMEngine" in composed.stdout   # model.engine=vllm alias
