"""Every command line of the README, as a user types it.

``COMMANDS`` maps each ``python -m sia...`` line of README.md's code blocks to the test that runs
it for real; a README line without an entry fails ``test_every_readme_command_has_a_test`` (so a
new command needs a test). Each line is also composed and validated here exactly as
``python -m sia`` does before any work starts. Lines that differ from a run line only in config
(a LoRA rank, quiet, an algorithm, a key) stop there; each distinct code path (every task, every
feedback arm, each engine, the LLM agents, resume, SLURM, the report) has one real run, here or
in the named test, through the real entry point with the README's arguments plus
``support.readme.SHRINK`` (tiny splits, one generation).
"""
from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from conftest import CONF_DIR, REPO
from support.readme import explain, readme_commands, run_readme, split_command
from tests.support.slurm import ECHO_RUN, job_folders, read_state, require_slurm

DEFAULT = "python -m sia"
OWN_FILES = "python -m sia task.data.path=train.json task.data.test_path=test.json"
LAWBENCH = "python -m sia task.data.path=bundled:lawbench/charge_3-3_dev.json"
RUN_DIR = "outputs/2026-11-25/21-50-00_legal_charge_rules"     # the README's example run dir
RESUME = f"python -m sia resume={RUN_DIR}"
RESUME_MORE = f"python -m sia resume={RUN_DIR} budget.wall_clock_minutes=60"
SWEEP_LOCAL = "python -m sia -m +sweep=ablation hydra/launcher=slurm_local budget=smoke"
SWEEP_GPU = ("python -m sia -m +sweep=ablation hydra/launcher=slurm hydra.launcher.partition=gpu model=gpt_oss_20b "
             "lora.rank=32 lora.activation_checkpointing=true task=legal_charge task.data.path=/data/lawbench.json")
ABLATION_SWEEPS = [   # the README's Results: the sweeps behind docs/ablations/
    "python -m sia -m +sweep=ablation hydra/launcher=slurm_local task=legal_charge feedback=rules,harness_only "
    "budget.wall_clock_minutes=30 hydra.sweep.dir=multirun/ablation_legal_charge",
    "python -m sia -m +sweep=ablation hydra/launcher=slurm_local task=sql_qa budget.wall_clock_minutes=15 "
    "hydra.sweep.dir=multirun/ablation_sql_qa",
    "python -m sia -m +sweep=ablation hydra/launcher=slurm_local task=scrna_denoise feedback=rules,harness_only "
    "budget.wall_clock_minutes=15 hydra.sweep.dir=multirun/ablation_scrna_denoise"]
REPORT_DOCS = "python -m sia.report multirun/ablation_sql_qa --out docs/ablations/sql_qa"
REPORT = "python -m sia.report multirun/2026-12-01/18-00-00"
REPORT_WANDB = "python -m sia.report multirun/2026-12-01/18-00-00 --wandb"   # publishing needs a login: built offline
VLLM = ".venv-vllm/bin/python -m sia model.engine=vllm budget=smoke"
MEMORY_PLAN = "python -m sia.engine.memory_plan gpt_oss_20b lora.rank=32"
LLM_SCRIPTED = "python -m sia agent.meta=llm feedback=llm llm.base_url=http://127.0.0.1:PORT"

HERE = "tests/test_readme_commands.py::"
VLLM_SERVED = "tests/test_vllm_served_agents.py::test_agents_on_a_vllm_served_model_end_cleanly_with_ledger_and_cache"
ABLATIONS = "tests/test_ablations.py::test_ablation_runs_on_every_task"


@dataclass(frozen=True)
class Command:
    """Who runs a README line (or, for a config-only variant, the run of its code path), and the
    config problems a CPU test machine is expected to report for it (regexes)."""
    run_by: str
    machine_problems: tuple[str, ...] = ()


# README line -> its real run. Config-only variants name the run of the code path they share.
COMMANDS = {
    ".venv/bin/python -m sia": Command(HERE + "test_default_command"),
    DEFAULT: Command(HERE + "test_default_command"),
    "python -m sia task=legal_charge lora.rank=32 budget=smoke": Command(HERE + "test_default_command"),
    LAWBENCH: Command(HERE + "test_lawbench_command"),
    OWN_FILES: Command(HERE + "test_own_data_files_command"),
    # the four feedback arms run for real in the SLURM sweep (one seed each), weights_only and
    # alternate also on every task in test_ablations
    "python -m sia feedback=harness_only": Command(HERE + "test_slurm_sweep_and_report_commands"),
    "python -m sia task=cuda_kernel lora.rank=32": Command(ABLATIONS),
    "python -m sia task=scrna_denoise": Command(ABLATIONS),
    "python -m sia task=sql_qa": Command(ABLATIONS),
    "python -m sia quiet=true logger=none": Command(HERE + "test_default_command"),
    "python -m sia lora.algorithm=grpo": Command("tests/test_weights_lever.py"),   # a forced algorithm, through the lever
    "python -m sia budget.wall_clock_minutes=30": Command("tests/test_pace.py"),
    "python -m sia agent.meta=llm feedback=llm": Command("tests/test_llm_e2e.py::test_llm_agents_write_and_rewrite_the_harness"),
    "python -m sia agent.meta=llm feedback=llm budget.agent_dollars=5": Command("tests/test_llm_agents.py"),
    "python -m sia agent.meta=llm feedback=llm llm=openai llm.base_url=http://127.0.0.1:8080/v1 "
    "llm.model=<served name>": Command(VLLM_SERVED),
    "python -m sia agent.meta=llm feedback=llm llm=openai llm.base_url=http://127.0.0.1:8000/v1 llm.model=smollm2 "
    "llm.tool_mode=json llm.max_tokens=512": Command(VLLM_SERVED),
    LLM_SCRIPTED: Command("tests/test_llm_e2e.py::test_llm_agents_write_and_rewrite_the_harness"),
    RESUME: Command("tests/test_e2e.py::test_resume_after_kill_9_loses_and_repeats_nothing"),
    RESUME_MORE: Command(HERE + "test_resume_with_more_budget_command"),
    # a GPU cluster's line: composes and validates here up to what only that cluster has
    SWEEP_GPU: Command(HERE + "test_slurm_sweep_and_report_commands",
                       machine_problems=(r"^task\.data\.path='/data/lawbench\.json' does not exist",
                                         r"^model\.device='cuda' but this machine has no usable CUDA device")),
    SWEEP_LOCAL: Command(HERE + "test_slurm_sweep_and_report_commands"),
    REPORT: Command(HERE + "test_slurm_sweep_and_report_commands"),
    **{line: Command(HERE + "test_slurm_sweep_and_report_commands") for line in ABLATION_SWEEPS},
    REPORT_DOCS: Command("tests/test_report.py::test_report_written_elsewhere_names_the_sweep_command_that_made_it"),
    REPORT_WANDB: Command("tests/test_report.py::test_wandb_report_is_built_offline_with_its_panels_and_queries"),
    VLLM: Command("tests/test_vllm.py::test_readme_vllm_smoke_command"),
    MEMORY_PLAN: Command(HERE + "test_memory_plan_command"),
}
PLACEHOLDERS = {"<served name>": "served-model", "127.0.0.1:PORT": "127.0.0.1:8765"}


def test_every_readme_command_has_a_test():
    lines = readme_commands()
    assert lines, "no `python -m sia` line found in README.md's code blocks"
    missing = [line for line in lines if line not in COMMANDS]
    assert not missing, ("README commands without a test: add each to COMMANDS in tests/test_readme_commands.py "
                         "with the test that runs it:\n" + "\n".join(missing))
    stale = [line for line in COMMANDS if line not in lines]
    assert not stale, "COMMANDS lists lines the README no longer has:\n" + "\n".join(stale)
    for line, command in COMMANDS.items():   # each named test exists
        path, _, name = command.run_by.partition("::")
        assert (REPO / path).is_file(), (line, command.run_by)
        assert not name or f"def {name}(" in (REPO / path).read_text(encoding="utf-8"), (line, command.run_by)


def test_readme_commands_are_read_from_code_blocks_only():
    text = ("Run `python -m sia task=x` inline.\n```bash\nbash scripts/setup.sh && .venv/bin/python -m sia\n"
            "python -m sia a=1 \\\n    b=2     # a comment\npython -m pytest -q\n```\n")
    assert readme_commands(text) == [".venv/bin/python -m sia", "python -m sia a=1 b=2"]


# ---- config: what `python -m sia` does before any work starts --------------------------------

def _budget_names(args: list[str]) -> list[str]:
    from sia.schema import BudgetConfig

    names = [a.split("=", 1)[0] for a in args if a.startswith("budget.")]
    return names + ([f"budget.{k}" for k in BudgetConfig.__dataclass_fields__] if any(
        a.startswith("budget=") for a in args) else [])


def _compose(overrides: list[str], hydra_cfg: bool = False):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            return compose(config_name="config", overrides=overrides, return_hydra_config=hydra_cfg)
    finally:
        GlobalHydra.instance().clear()


def _sweep_jobs(args: list[str]) -> list[list[str]]:
    """The overrides of every job of a multirun line (its sweep's params x the line's lists)."""
    def swept(arg: str) -> bool:
        key, _, value = arg.partition("=")
        return "," in value and not key.startswith(("+", "hydra"))

    fixed = [a for a in args if a != "-m" and not swept(a)]
    hydra = _compose(fixed, hydra_cfg=True).hydra
    params = {k: str(v).split(",") for k, v in (hydra.sweeper.params or {}).items()}
    params.update({a.partition("=")[0]: a.partition("=")[2].split(",") for a in args if swept(a)})
    fixed = [a for a in fixed if a.partition("=")[0] not in params]
    return [fixed + [f"{k}={v}" for k, v in zip(params, combo)] for combo in itertools.product(*params.values())]


def config_problems_of(args: list[str], run_dir: Path) -> list[str]:
    """Every problem ``python -m sia <args>`` reports before work starts (none: it would run)."""
    from sia.app import _checked
    from sia.build import normalise_overrides
    from sia.config import ConfigError, precheck_overrides

    args = normalise_overrides(args)
    jobs = _sweep_jobs(args) if "-m" in args else [args]
    problems: list[str] = []
    for job in jobs:
        early = precheck_overrides([a for a in job if not a.startswith("hydra")])
        if early:
            problems += early
            continue
        cfg = _compose([f"run_dir={run_dir}", *job])
        try:
            _checked(cfg, _budget_names(job) if cfg.resume else [])
        except ConfigError as exc:
            problems += exc.problems
    return list(dict.fromkeys(problems))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished run dir for the resume lines (the echo engine: seconds)."""
    run = tmp_path_factory.mktemp("readme") / "run"
    proc = subprocess.run([sys.executable, "-m", "sia", *ECHO_RUN, "budget.generations=1", "quiet=true",
                           f"hydra.run.dir={run}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, explain(proc)
    return run


@pytest.mark.parametrize("line", [line for line in COMMANDS if " -m sia " in line + " "], ids=lambda line: line[:90])
def test_readme_command_composes_and_validates(line, tmp_path, monkeypatch, request):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-readme-test")   # the README's `export` before the LLM lines
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)           # "no key" for a local server
    monkeypatch.chdir(tmp_path)
    placeholders = dict(PLACEHOLDERS)
    if "resume=" in line:
        placeholders[RUN_DIR] = str(request.getfixturevalue("finished_run"))
    if line == OWN_FILES:
        write_own_files(tmp_path)
    _, _, args = split_command(line, **placeholders)
    problems = config_problems_of(args, tmp_path / "run")
    expected = COMMANDS[line].machine_problems
    unexpected = [p for p in problems if not any(re.search(e, p) for e in expected)]
    assert not unexpected, f"{line}\n  " + "\n  ".join(unexpected)
    if expected:   # those the machine lacks are found, so the check really ran
        assert problems, line



# ---- real runs --------------------------------------------------------------------------------

def _finished(run_dir: Path) -> dict:
    state = json.loads((run_dir / "state.json").read_text())
    assert state["status"] == "done", state.get("stop_reason")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["first"]["val"] is not None
    assert [h["generation"] for h in state["history"]] == list(range(len(state["history"])))
    return state


@pytest.mark.slow
def test_default_command(tmp_path, model_cache_dir):
    run = tmp_path / "run"
    proc = run_readme(DEFAULT, f"hydra.run.dir={run}", f"cache_dir={model_cache_dir}")
    assert proc.returncode == 0, explain(proc)
    state = _finished(run)
    assert [h["action"] for h in state["history"]][0] == "seed" and len(state["history"]) == 2
    assert f"sia: run dir {run}" in proc.stdout and "synthetic" in proc.stdout


def write_own_files(folder: Path) -> None:
    """train.json and test.json in LawBench 3-3's format (a user's own data)."""
    from tasks.legal_charge.synthetic import generate

    splits = generate(seed=7, n_charges=6, n_train=30, n_val=1, n_test=6)
    for name, records in (("train", splits["train"]), ("test", splits["test"])):
        items = [{"id": r["id"], "question": r["fact"], "answer": "罪名:" + ";".join(r["charges"])} for r in records]
        (folder / f"{name}.json").write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")


@pytest.mark.slow
def test_own_data_files_command(tmp_path, model_cache_dir):
    write_own_files(tmp_path)     # relative paths, from the user's own folder
    run = tmp_path / "run"
    proc = run_readme(OWN_FILES, f"hydra.run.dir={run}", f"cache_dir={model_cache_dir}", cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    _finished(run)
    summary = json.loads((run / "summary.json").read_text())
    assert "train.json" in summary["data"] and "test.json" in summary["data"], summary["data"]


@pytest.mark.slow
def test_lawbench_command(tmp_path, model_cache_dir):
    # the shipped copy: the command works from any folder of a fresh clone
    run = tmp_path / "run"
    proc = run_readme(LAWBENCH, f"hydra.run.dir={run}", f"cache_dir={model_cache_dir}", cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    _finished(run)
    assert "charge_3-3_dev.json" in json.loads((run / "summary.json").read_text())["data"]


def test_resume_with_more_budget_command(tmp_path):
    """A run that ended on its wall clock goes on when resumed with more (echo engine: seconds)."""
    run = tmp_path / "run"
    first = subprocess.run([sys.executable, "-m", "sia", *ECHO_RUN, "budget.generations=3", "quiet=true",
                            "budget.wall_clock_minutes=0.001", f"hydra.run.dir={run}"], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, explain(first)
    before = read_state(run)
    assert before["status"] == "done" and "wall" in (before["stop_reason"] or ""), before
    proc = run_readme(RESUME_MORE, placeholders={RUN_DIR: str(run)})
    assert proc.returncode == 0, explain(proc)
    assert "going on with budget.wall_clock_minutes=0.001->60" in proc.stdout, explain(proc)
    after = _finished(run)
    assert len(after["history"]) > len(before["history"]) and after["history"][:len(before["history"])] == \
        before["history"]


def test_memory_plan_command():
    proc = run_readme(MEMORY_PLAN, timeout=120)
    assert proc.returncode == 0, explain(proc)
    assert "memory plan for gpt-oss-20b" in proc.stdout and "no problems" in proc.stdout, proc.stdout[-2000:]


@pytest.mark.slow
@pytest.mark.slurm
def test_slurm_sweep_and_report_commands(model_cache_dir):
    """The README's local SLURM sweep (one seed: the four feedback arms on the real model), then
    the README's report on its folder."""
    require_slurm()
    root = Path(tempfile.mkdtemp(prefix="sia-readme-sweep-"))   # not under pytest's basetemp: see support/slurm
    try:
        sweep = root / "sweep"
        proc = run_readme(SWEEP_LOCAL, f"hydra.sweep.dir={sweep}", f"cache_dir={model_cache_dir}", timeout=900)
        assert proc.returncode == 0, explain(proc)
        runs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
        assert [r.name.split("_", 1)[1] for r in runs] == [
            "legal_charge_rules_r8_s0", "legal_charge_harness_only_r8_s0", "legal_charge_weights_only_r8_s0",
            "legal_charge_alternate_r8_s0"], runs
        first_turn = {"harness_only": "harness", "weights_only": "weights", "alternate": "harness"}
        for run in runs:
            state = _finished(run)
            actions = [h["action"] for h in state["history"]]
            feedback = run.name.split("_legal_charge_")[1].rsplit("_r8_", 1)[0]
            assert actions[0] == "seed" and len(actions) == 2, (run, actions)
            assert actions[1] == first_turn.get(feedback, actions[1]), (run, actions)   # each arm pulls its lever
            if actions[1] == "weights":   # trained, or no positive sample (and the record says so)
                info = json.loads((run / "gen_001" / "train.json").read_text())
                assert (run / "gen_001" / "adapter" / "COMPLETE").is_file() or "positive" in info.get("skipped", ""), \
                    (run, info)
        assert len({f.name.split("_")[0] for f in job_folders(sweep)}) == 1     # one job array

        report = run_readme(REPORT, placeholders={"multirun/2026-12-01/18-00-00": str(sweep)}, timeout=300)
        assert report.returncode == 0, explain(report)
        md = (sweep / "report.md").read_text(encoding="utf-8")
        comparison = [line.split("|") for line in md.split("## Comparison", 1)[1].split("\n## ", 1)[0].splitlines()
                      if line.startswith("| legal_charge |")]
        arms = {cells[2].strip() for cells in comparison}
        assert arms == {"rules", "harness_only", "weights_only", "alternate"}, md
        assert md.count("| finished |") == 4 and (sweep / "report.png").is_file()
    finally:
        if not os.environ.get("SIA_KEEP_TEST_DIRS"):
            shutil.rmtree(root, ignore_errors=True)
