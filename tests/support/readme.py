"""The README's command lines, as a user types them, for the tests that run them.

``readme_commands()`` reads every ``python -m sia...`` line from README.md's code blocks;
``readme_args(line, ...)`` gives the arguments of one of them (placeholders such as the run dir
filled in); ``SHRINK`` is the one fixed set of overrides the tests add to keep a documented
command short (tiny splits, one generation); ``run_readme`` runs a line through the real entry
point in a subprocess with those overrides."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"

# Budget-shrinking overrides added to every documented command a test runs (a key the command
# sets itself keeps the command's value). The wall clock is generous: a loaded machine must not
# stop a run that is here to show the command works. logger=none quiet=true: no W&B files, no bars.
SHRINK = ("budget.generations=1", "budget.val_examples=2", "budget.test_examples=1", "budget.train_examples=4",
          "budget.train_steps=1", "budget.probe_train_examples=2", "lora.rollout_examples=2",
          "lora.samples_per_prompt=2", "budget.wall_clock_minutes=60",
          "logger=none", "quiet=true")
# ... and per task, where its own example counts set the cost (one kernel attempt per split; a
# 135M model's 1,000-token kernel would take a minute per call)
SHRINK_TASK = {"cuda_kernel": ("task.examples.train=2", "task.examples.val=1", "task.examples.test=1",
                               "agent.max_new_tokens=64")}
# a sweep: one seed of the sweep's seeds (each feedback still runs)
SHRINK_SWEEP = ("seed=0",)

_SIA_LINE = re.compile(r"(?P<python>\S*python)\s+-m\s+(?P<module>sia(?:\.[\w.]+)?)(?P<args>(?:\s+\S+)*)\s*$")


def _code_blocks(text: str) -> list[str]:
    return re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S)


def _logical_lines(block: str) -> list[str]:
    """Lines with backslash continuations joined and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.split("  #")[0].split(" # ")[0].strip() for line in joined.splitlines()]


def readme_commands(text: str | None = None) -> list[str]:
    """Every ``<python> -m sia[.module] args`` command in the README's code blocks, in order,
    once each, normalised to single spaces (``bash scripts/setup.sh && `` prefixes dropped)."""
    text = README.read_text(encoding="utf-8") if text is None else text
    found = []
    for block in _code_blocks(text):
        for line in _logical_lines(block):
            part = line.split("&&")[-1].strip()
            match = _SIA_LINE.match(part)
            if match:
                found.append(" ".join([match["python"], "-m", match["module"], *match["args"].split()]))
    return list(dict.fromkeys(found))


def split_command(line: str, **placeholders: str) -> tuple[str, str, list[str]]:
    """(python, module, args) of a README line, each placeholder (README text -> value) replaced."""
    for text, value in placeholders.items():
        line = line.replace(text, value)
    match = _SIA_LINE.match(line)
    assert match, f"not a python -m sia line: {line!r}"
    return match["python"], match["module"], match["args"].split()


def shrink(args: list[str]) -> list[str]:
    """SHRINK (and the task's and a sweep's own) minus the keys ``args`` already set; nothing for
    a resume, which runs on the saved config (a test shrinks the run it resumes)."""
    if any(a.startswith("resume=") for a in args):
        return []
    given = {a.split("=", 1)[0].lstrip("+~") for a in args if "=" in a}
    task = next((a.split("=", 1)[1] for a in args if a.startswith("task=")), None)
    extra = list(SHRINK) + list(SHRINK_TASK.get(task, ())) + (list(SHRINK_SWEEP) if "-m" in args else [])
    return [o for o in extra if o.split("=", 1)[0] not in given]


def python_for(readme_python: str) -> str:
    """The interpreter a README line names: .venv-vllm's, else the one running the tests."""
    return str(VLLM_PYTHON) if ".venv-vllm" in readme_python else sys.executable


def run_readme(line: str, *plumbing: str, placeholders: dict | None = None, cwd: Path = REPO,
               env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run a README line through its real entry point: the README's arguments, then SHRINK, then
    ``plumbing`` (where outputs go: hydra.run.dir, cache_dir)."""
    python, module, args = split_command(line, **(placeholders or {}))
    cmd = [python_for(python), "-m", module, *args]
    if module == "sia":
        cmd += shrink(args) + list(plumbing)
    else:
        cmd += list(plumbing)
    return subprocess.run(cmd, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def explain(proc: subprocess.CompletedProcess) -> str:
    """What a failed command printed (the tail of each stream) for an assertion message."""
    return f"command: {' '.join(proc.args)}\nexit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n" \
           f"stderr:\n{proc.stderr[-4000:]}"
