"""A task's seed harness as a fresh module, for tests that call its functions (``solve``,
``parse``, ``sft_pair``) directly instead of through a sandboxed worker."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from sia.harness.options import with_options
from sia.tasks import TASKS_DIR


def seed_harness(task: str, folder: Path, **options) -> ModuleType:
    """``tasks/<task>/seed_harness.py`` with these OPTIONS values, imported from a file in
    ``folder`` (tracebacks name a real file). A new module per option set, so a change made
    for one test never reaches another."""
    source = (TASKS_DIR / task / "seed_harness.py").read_text("utf-8")
    if options:
        changed = with_options(source, **options)
        assert changed is not None, f"{options} is no change of the {task} seed harness's OPTIONS"
        source = changed
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{task}_{abs(hash(tuple(sorted(options.items()))))}.py"
    path.write_text(source, "utf-8")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
