"""The examples and public material of one run, prepared once from the task."""
from __future__ import annotations

from dataclasses import dataclass

from sia.run import RunDir, write_json_atomic
from sia.tasks import Example, Splits, Task


@dataclass
class RunData:
    splits: Splits
    val: list[Example]          # keep-best decisions
    test: list[Example]         # reported, never decided on
    probe: list[Example]        # train examples scored per kept generation (over/under-fitting)
    resources: dict             # ctx.resources of every harness
    files: dict[str, str]       # ctx.files of every harness


def prepare_data(task: Task, run: RunDir, budget) -> RunData:
    splits = task.load()
    if not splits.val:
        raise RuntimeError(f"task {task.name} has an empty val split; it cannot make keep-best decisions")
    public_dir = run.path / "public"
    public_dir.mkdir(exist_ok=True)
    resources = task.public_resources(splits)
    files = {k: str(v) for k, v in task.public_files(splits, public_dir).items()}
    write_json_atomic(public_dir / "resources.json", resources)
    return RunData(splits=splits, val=splits.val[: budget.val_examples], test=splits.test[: budget.test_examples],
                   probe=splits.train[: budget.probe_train_examples], resources=resources, files=files)
