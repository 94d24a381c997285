"""The legal_charge task: predict the charge names (罪名) for the facts of a Chinese criminal case.

Data: a local LawBench 3-3 JSON list or CAIL2018 JSON-lines file (``task.data.path``), or an
offline synthetic set (``task.data.path=null``). Scoring: LawBench's charge F1 (``metrics``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sia.data import file_problem
from sia.harness.options import option_edit
from sia.tasks import schema_defaults
from sia.tasks import (EvalReport, Example, ExampleScore, HarnessEdit, Splits, Task, Scoring,
                       merged_config, plain_config)

from .config_schema import Config
from . import synthetic
from .data import (
    FORMATS,
    DataError,
    LAWBENCH_INSTRUCTION,
    by_train_frequency,
    detect_format,
    load_labels,
    load_records,
    split_records,
)
from .metrics import aggregate, failure_kind, failure_reason, score_answer

PRIMARY_METRICS = ("f1", "exact")
DEFAULTS = schema_defaults(Config)   # tasks/legal_charge/config_schema.py holds every default
FEW_SHOT_K = 2  # few-shot edit: two retrieved examples fit SmolLM2's 2k context with the fact


class DataProblem(ValueError):
    """A data file that cannot be used; the message names the config key, value and fix."""


def _examples(n: int) -> str:
    return f"{n} example" if n == 1 else f"{n} examples"


BUNDLED_PREFIX = "bundled:"   # a data file shipped in this folder, e.g. bundled:lawbench/charge_3-3_dev.json


def _path(value: Any) -> Path | None:
    """A data path; ``bundled:<file>`` names a file shipped with the task (a fresh clone or an
    installed wheel has it wherever the command runs)."""
    if value in (None, ""):
        return None
    text = str(value)
    if text.startswith(BUNDLED_PREFIX):
        return Path(__file__).resolve().parent / text[len(BUNDLED_PREFIX):]
    return Path(text).expanduser()


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (links and relative spellings included)."""
    try:
        return a.resolve() == b.resolve() or (a.is_file() and b.is_file() and a.samefile(b))
    except OSError:
        return False


class TaskImpl(Task):
    name = "legal_charge"

    def __init__(self, cfg: Any, root: Path):
        super().__init__(cfg, root)
        self.settings = merged_config(DEFAULTS, plain_config(cfg))
        self.data_cfg = self.settings["data"]
        self.scoring = Scoring(
            primary_metric=str(self.settings.get("primary_metric") or "f1"),
            direction="max",
            reward_shape="graded",
            metrics=("f1", "exact", "abstention"),
        )
        self._splits: Splits | None = None
        self._labels: list[str] = []
        self._records = None   # (train, val, test, labels), read once by config_problems or load

    # ---- configuration -------------------------------------------------------------
    def config_problems(self) -> list[str]:
        d, problems = self.data_cfg, []
        path, test_path, labels_path = _path(d["path"]), _path(d["test_path"]), _path(d["labels_path"])
        if self.scoring.primary_metric not in PRIMARY_METRICS:
            problems.append(
                f"task.primary_metric={self.scoring.primary_metric!r} is unknown: use one of "
                f"{', '.join(PRIMARY_METRICS)} (abstention is reported but is not a score to maximise)"
            )
        if d["format"] not in FORMATS:
            problems.append(
                f"task.data.format={d['format']!r} is unknown: use one of {', '.join(FORMATS)}"
            )
        for key, value in (("path", path), ("test_path", test_path)):
            if value is None:
                continue
            missing = file_problem(f"task.data.{key}", value, "a local LawBench 3-3 JSON file or a CAIL2018 "
                                   "JSON-lines file", (".json", ".jsonl"))
            if missing:
                problems.append(
                    missing + (", or set task.data.path=null for the offline synthetic set" if key == "path" else "")
                )
            elif d["format"] == "auto" and (bad := self._undetectable(key, value)):
                problems.append(bad)
        if test_path is not None and path is not None and _same_file(path, test_path):
            problems.append(
                f"task.data.test_path={str(test_path)!r} is the file of task.data.path: its examples would "
                f"also be train examples, which every harness reads with their charges "
                f"(ctx.resources['train']); give the test split a file of its own, or set "
                f"task.data.test_path=null to cut test from task.data.path"
            )
        if test_path is not None and path is None:
            problems.append(
                f"task.data.test_path={str(test_path)!r} is set but task.data.path is null: give "
                f"task.data.path (train and val come from it) or set task.data.test_path=null"
            )
        if labels_path is not None and (missing := file_problem(
                "task.data.labels_path", labels_path, "a JSON list of charge names (LawBench's charges.json)",
                (".json",))):
            problems.append(missing + ", or set it to null")
        problems += self._fraction_problems()
        if path is None:
            problems += self._synthetic_problems()
        # Read the data now, so that a bad file or an empty split stops the run before any
        # work (the model has not loaded yet); load() reuses what was read.
        return problems or self._data_problems()

    @staticmethod
    def _undetectable(key: str, value: Path) -> str:
        try:
            if detect_format(value) is not None:
                return ""
        except DataError as err:
            return f"task.data.{key}={str(value)!r} {err}"
        return (f"task.data.{key}={str(value)!r}: its format cannot be detected (neither a JSON "
                f"list nor JSON lines with 'fact'): set task.data.format=lawbench or cail")

    def _data_problems(self) -> list[str]:
        try:
            train, val, test, _ = self._load_records()
        except DataProblem as err:
            return [str(err)]
        d = self.data_cfg
        sizes = {"train": len(train), "val": len(val), "test": len(test)}
        empty = [name for name, n in sizes.items() if n == 0]
        if not empty or d["path"] in (None, ""):  # synthetic sizes are checked above
            return []
        got = ", ".join(f"{name} {n}" for name, n in sizes.items())
        if d["test_path"] and empty == ["test"]:
            return [f"task.data.test_path={str(d['test_path'])!r} holds no examples: give a file with "
                    f"at least one, or set task.data.test_path=null to cut test from task.data.path"]
        source = (f"task.data.path={str(d['path'])!r} gives {_examples(len(train) + len(val))} "
                  f"for train and val, and task.data.test_path {len(test)} for test"
                  if d["test_path"] else
                  f"task.data.path={str(d['path'])!r} holds {_examples(sum(sizes.values()))}")
        return [f"{source}: the splits got {got} (val_fraction {d['val_fraction']:g}, test_fraction "
                f"{d['test_fraction']:g}), and {', '.join(empty)} may not be empty: add examples to the "
                f"file, change task.data.val_fraction / task.data.test_fraction, or give the test split "
                f"its own file with task.data.test_path"]

    def _fraction_problems(self) -> list[str]:
        d, problems = self.data_cfg, []
        for key in ("val_fraction", "test_fraction"):
            value = d[key]
            if not isinstance(value, (int, float)) or not 0 <= value < 1:
                problems.append(f"task.data.{key}={value!r} is out of range: use a number in [0, 1)")
        test_share = 0 if d["test_path"] else d["test_fraction"]
        if not problems and d["val_fraction"] + test_share >= 1:
            problems.append(
                f"task.data.val_fraction + test_fraction = {d['val_fraction'] + test_share:g} "
                f"leaves no training data: make the sum smaller than 1"
            )
        return problems

    def _synthetic_problems(self) -> list[str]:
        s, problems = self.data_cfg["synthetic"], []
        n_max = len(synthetic.ALL_CHARGES)
        if not isinstance(s["n_charges"], int) or not 2 <= s["n_charges"] <= n_max:
            problems.append(
                f"task.data.synthetic.n_charges={s['n_charges']!r} is out of range: use 2..{n_max}"
            )
        for key in ("n_train", "n_val", "n_test"):
            if not isinstance(s[key], int) or s[key] < 1:
                problems.append(f"task.data.synthetic.{key}={s[key]!r}: use a whole number >= 1")
        share = s.get("multi_label_share", 0.15)
        if not isinstance(share, (int, float)) or not 0 <= share < 1:
            problems.append(
                f"task.data.synthetic.multi_label_share={share!r} is out of range: use [0, 1)"
            )
        return problems

    @property
    def data_label(self) -> str:
        d = self.data_cfg
        if d["path"] in (None, ""):
            s = d["synthetic"]
            return f"synthetic (seed {s['seed']}, {s['n_charges']} charges)"
        return f"{d['path']} (test: {d['test_path']})" if d["test_path"] else str(d["path"])

    # ---- data ------------------------------------------------------------------------
    def load(self) -> Splits:
        if self._splits is None:
            train, val, test, labels = self._load_records()
            self._labels = by_train_frequency(labels, train)
            self._splits = Splits(
                train=[_example(r) for r in train],
                val=[_example(r) for r in val],
                test=[_example(r) for r in test],
            )
        return self._splits

    def _load_records(self):
        if self._records is None:
            self._records = self._read_records()
        return self._records

    def _read(self, key: str) -> list[dict]:
        path = _path(self.data_cfg[key])
        try:
            return load_records(path, self.data_cfg["format"])
        except DataError as err:
            raise DataProblem(f"task.data.{key}={str(path)!r} {err}") from None

    def _read_records(self):
        d = self.data_cfg
        path = _path(d["path"])
        if path is None:
            s = d["synthetic"]
            parts = synthetic.generate(
                seed=s["seed"], n_charges=s["n_charges"], n_train=s["n_train"],
                n_val=s["n_val"], n_test=s["n_test"],
                multi_label_share=s.get("multi_label_share", 0.15),
            )
            labels = synthetic.charge_names(s["n_charges"])
            return parts["train"], parts["val"], parts["test"], labels
        records = self._read("path")
        test_path = _path(d["test_path"])
        if test_path is not None:
            # The test split is exactly that file; ``path`` feeds train and val only.
            train, val, _ = split_records(records, d["val_fraction"], 0.0, d["split_seed"])
            test = self._read("test_path")
        else:
            train, val, test = split_records(
                records, d["val_fraction"], d["test_fraction"], d["split_seed"]
            )
        try:
            # train only: a list built from val/test gold would name held-out charges to every harness
            labels = load_labels(_path(d["labels_path"]), path, train)
        except DataError as err:
            raise DataProblem(f"task.data.labels_path={d['labels_path']!r} (or, when null, charges.json "
                              f"beside task.data.path): {err}; fix that file, or point "
                              f"task.data.labels_path at a JSON list of charge names") from None
        return train, val, test, labels

    @property
    def labels(self) -> list[str]:
        self.load()
        return list(self._labels)

    def public_resources(self, splits: Splits) -> dict[str, Any]:
        return {
            "labels": self.labels,  # most frequent in train first
            "train": [{"fact": e.inputs["fact"], "charges": list(e.target)} for e in splits.train],
            "instruction": LAWBENCH_INSTRUCTION,
        }

    # ---- scoring ---------------------------------------------------------------------
    def evaluate(self, examples: list[Example], answers: list[Any], split: str) -> EvalReport:
        if len(examples) != len(answers):
            raise ValueError(f"{len(examples)} examples but {len(answers)} answers")
        labels = self.labels
        train_ids = {e.id for e in self.load().train}   # their gold is public: reasons may count hits
        scores, per_example = [], []
        for example, answer in zip(examples, answers):
            score = score_answer(answer, list(example.target or []), labels)
            scores.append(score)
            public = split == "train" and example.id in train_ids
            per_example.append(ExampleScore(
                id=example.id,
                score=score.f1,
                # never names a charge (gold stays in details); counts hits on public train gold only
                reason=failure_reason(answer, score, public_gold=public),
                failure=failure_kind(answer, score),
                details={
                    "predicted": list(score.predicted),
                    "gold": list(score.gold),
                    "exact": score.exact,
                    "abstained": score.abstained,
                },
            ))
        return EvalReport(
            metrics=aggregate(scores),
            per_example=per_example,
            notes={"split": split, "data": self.data_label, "scorer": "LawBench 3-3 charge F1"},
        )

    # ---- levers ----------------------------------------------------------------------
    def harness_edits(self) -> list[HarnessEdit]:
        return [
            HarnessEdit(
                "label_list", "format",
                "Show the valid charge names (most frequent first, capped to fit the context) in the prompt.",
                option_edit(label_list=True),
            ),
            HarnessEdit(
                "nearest_label_parser", "format",
                "Map the model's free text to the closest valid charge names by character overlap.",
                option_edit(parser="nearest"),
            ),
            HarnessEdit(
                "retry_with_feedback", "format",
                "When no valid charge name came back, ask once more, listing the valid names.",
                option_edit(retry=True),
            ),
            HarnessEdit(
                "few_shot_retrieval", "accuracy",
                f"Prepend the {FEW_SHOT_K} train cases most similar by character bigrams, with their charges.",
                option_edit(few_shot=FEW_SHOT_K),
            ),
            HarnessEdit(
                "judge_system_prompt", "accuracy",
                "Add a system prompt casting the model as a criminal judge who answers in the format.",
                option_edit(system_prompt=True),
            ),
            HarnessEdit(
                "self_consistency", "variance",
                "Sample 5 answers and keep the charges that at least half of them name.",
                option_edit(votes=5),
            ),
            HarnessEdit(
                "retrieval_vote_on_abstain", "format",
                "When no valid charge name came back, answer the similarity-weighted charge vote of the "
                "5 train cases nearest by character-bigram TF-IDF.",
                option_edit(retrieval_vote="fallback"),
                baseline_use="fallback",
            ),
            HarnessEdit(
                "ensemble_with_retrieval_vote", "accuracy",
                "Let the model's charge names join the vote of the 5 nearest train cases (half the "
                "neighbours' weight); keep the charges with half of the whole vote.",
                option_edit(retrieval_vote="ensemble"),
                baseline_use="ensemble",
            ),
            HarnessEdit(
                "retrieval_vote_only", "variance",
                "Answer the vote of the 5 nearest train cases without asking the model.",
                option_edit(retrieval_vote="only"),
                baseline_use="replace",
            ),
        ]

    def baselines(self) -> list:
        from .baselines import baselines

        return baselines()


def _example(record: dict) -> Example:
    return Example(
        id=record["id"],
        inputs={"fact": record["fact"], "instruction": record["instruction"]},
        target=list(record["charges"]),
    )

