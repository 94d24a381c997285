"""The sql_qa task: answer a question about a real SQLite database with one SQL query.

Data: a seeded synthetic ``shop`` database with templated questions of five difficulty levels
(``task.data.source=synthetic``), or a local folder in the Spider format
(``task.data.source=spider task.data.path=...``). Scoring: execution accuracy, computed in
a separate evaluator process (``supervised.evaluate_in_child``).
"""
from __future__ import annotations

import shutil
import sqlite3
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from sia.harness.options import option_edit
from sia.tasks import schema_defaults
from sia.tasks import (EvalReport, Example, ExampleScore, HarnessEdit, Splits, Task, Scoring,
                       merged_config, plain_config)

from .config_schema import Config
from .database import DB_ID, build_database
from .execution import clean_answer_sql, readonly_uri
from .questions import assign_splits, generate_instances, interleave
from .schema import describe_database
from .spider import DataError, load_spider, spider_problems
from .supervised import evaluate_in_child

SOURCES = ("synthetic", "spider")
SPLIT_BY = ("instance", "template")
OUTCOMES = ("invalid_sql", "no_sql", "timeout", "wrong_result")
DEFAULTS = schema_defaults(Config)   # tasks/sql_qa/config_schema.py holds every default
FEW_SHOT_K = 3   # three short question/SQL pairs fit SmolLM2's 2k context next to the schema
VOTE_SAMPLES = 4   # five candidates in all: ~3.5x the evaluation time of one greedy query on CPU
# The evaluator could not run these answers ("format"); every other short fall ran and is "wrong".
UNREADABLE = ("no_sql", "invalid_sql")


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_fraction(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1


class TaskImpl(Task):
    name = "sql_qa"
    # one primary metric whatever the config, so it is declared on the class (as cuda_kernel's default)
    scoring = Scoring(primary_metric="execution_accuracy", direction="max", reward_shape="binary",
                      metrics=("execution_accuracy",) + tuple(f"{o}_rate" for o in OUTCOMES))

    def __init__(self, cfg: Any, root: Path):
        super().__init__(cfg, root)
        self.settings = merged_config(DEFAULTS, plain_config(cfg))
        self.data_cfg = self.settings["data"]
        self._splits: Splits | None = None
        self._databases: dict[str, Path] = {}     # db_id -> the evaluator's own copy
        self._workdir: tempfile.TemporaryDirectory | None = None
        self.dropped: dict[str, int] = {}
        self.within_databases = False   # spider: too few databases, questions split within them

    # ---- configuration -------------------------------------------------------------------
    def config_problems(self) -> list[str]:
        d, s, p = self.data_cfg, self.settings, []
        if d["source"] not in SOURCES:
            p.append(f"task.data.source={d['source']!r} is not one of {', '.join(SOURCES)}; "
                     f"use task.data.source=synthetic, or spider with task.data.path=<folder>")
        elif d["source"] == "spider":
            p.extend(spider_problems("task.data.path", d["path"]))
        if d["split_by"] not in SPLIT_BY:
            p.append(f"task.data.split_by={d['split_by']!r} is not one of {', '.join(SPLIT_BY)}; "
                     f"use instance (held-out slot values) or template (held-out query shapes)")
        if s["primary_metric"] != "execution_accuracy":
            p.append(f"task.primary_metric={s['primary_metric']!r}: sql_qa scores execution_accuracy only; "
                     f"set task.primary_metric=execution_accuracy")
        for key, low, fix in (("seed", 0, "e.g. task.data.seed=0"),
                              ("instances_per_template", 1, "e.g. task.data.instances_per_template=10"),
                              ("paraphrases", 1, "e.g. task.data.paraphrases=1"),
                              ("max_per_split", 1, "e.g. task.data.max_per_split=200")):
            if not _is_int(d[key], low):
                p.append(f"task.data.{key}={d[key]!r} must be an integer >= {low}; {fix}")
        for key in ("val_fraction", "test_fraction"):
            if not _is_fraction(d[key]):
                p.append(f"task.data.{key}={d[key]!r} must be a number in (0, 1); e.g. task.data.{key}=0.2")
        if _is_fraction(d["val_fraction"]) and _is_fraction(d["test_fraction"]) \
                and d["val_fraction"] + d["test_fraction"] >= 1:
            p.append(f"task.data.val_fraction + task.data.test_fraction = "
                     f"{d['val_fraction'] + d['test_fraction']:g} leaves no train split; keep the sum below 1")
        timeout = s["query_timeout_s"]
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
            p.append(f"task.query_timeout_s={timeout!r} must be a number > 0; e.g. task.query_timeout_s=2")
        if not _is_int(s["max_result_rows"], 1):
            p.append(f"task.max_result_rows={s['max_result_rows']!r} must be an integer >= 1; e.g. 10000")
        if not _is_int(s["eval_memory_mb"], 256):
            p.append(f"task.eval_memory_mb={s['eval_memory_mb']!r} must be an integer >= 256; e.g. 1024")
        # Read the data now (load() keeps it), so that a bad question file or an empty split
        # stops the run before any work: the model has not loaded yet.
        return p or self._data_problems()

    def _data_problems(self) -> list[str]:
        d = self.data_cfg
        try:
            splits = self.load()
        except DataError as err:
            return [f"task.data.path={str(d['path'])!r}: {err}"]
        sizes = {name: len(splits[name]) for name in ("train", "val", "test")}
        empty = [name for name, n in sizes.items() if n == 0]
        if not empty:
            return []
        got = ", ".join(f"{name} {n}" for name, n in sizes.items())
        dropped = "".join(f"; {n} left out: {why}" for why, n in self.dropped.items())
        if d["source"] == "spider":
            return [f"task.data.path={str(d['path'])!r}: the splits got {got} questions{dropped}, and "
                    f"{', '.join(empty)} may not be empty: add questions to dev.json (or train_spider.json), "
                    f"their database files under database/<db_id>/, or change task.data.val_fraction / "
                    f"task.data.test_fraction (now {d['val_fraction']:g} / {d['test_fraction']:g})"]
        return [f"task.data.instances_per_template={d['instances_per_template']!r}: the splits got {got} "
                f"questions, and {', '.join(empty)} may not be empty: raise task.data.instances_per_template "
                f"or change task.data.val_fraction / task.data.test_fraction"]

    @property
    def data_label(self) -> str:
        if self.data_cfg["source"] == "spider":
            within = ", too few databases: questions split within them" if self.within_databases else ""
            return f"spider ({self.data_cfg['path']}{within})"
        split = "" if self.data_cfg["split_by"] == "instance" else ", held-out templates"
        return f"synthetic shop database (seed {self.data_cfg['seed']}{split})"

    # ---- data ----------------------------------------------------------------------------
    def load(self) -> Splits:
        if self._splits is None:
            self._splits = self._load_spider() if self.data_cfg["source"] == "spider" else self._load_synthetic()
        return self._splits

    def _load_synthetic(self) -> Splits:
        d = self.data_cfg
        # The evaluator's copy of the database lives in a private temp dir for this task object.
        self._workdir = tempfile.TemporaryDirectory(prefix="sia_sql_qa_")
        db_path = build_database(Path(self._workdir.name) / f"{DB_ID}.sqlite", d["seed"])
        self._databases = {DB_ID: db_path}
        conn = sqlite3.connect(readonly_uri(db_path), uri=True)
        try:
            by_template = generate_instances(conn, d["seed"], d["instances_per_template"], d["paraphrases"])
        finally:
            conn.close()
        parts = assign_splits(by_template, d["val_fraction"], d["test_fraction"], d["split_by"], d["seed"])
        return Splits(*(self._examples(interleave(parts[name], d["seed"]), d["paraphrases"])
                        for name in ("train", "val", "test")))

    @staticmethod
    def _examples(instances, paraphrases: int) -> list[Example]:
        out = []
        for inst in instances:
            for k, question in enumerate(inst.questions):
                out.append(Example(
                    id=inst.id if paraphrases == 1 else f"{inst.id}-p{k}",
                    inputs={"question": question, "db_id": DB_ID},
                    target={"sql": inst.sql, "level": inst.template.level, "template": inst.template.id,
                            "instance": inst.id}))
        return out

    def _load_spider(self) -> Splits:
        d = self.data_cfg
        data = load_spider(d["path"], d["seed"], d["val_fraction"], d["test_fraction"], d["max_per_split"])
        self._databases, self.dropped, self.within_databases = data.databases, data.dropped, data.within_databases
        return data.splits

    def _used_databases(self, splits: Splits) -> dict[str, Path]:
        self.load()
        used = {e.inputs["db_id"] for part in (splits.train, splits.val, splits.test) for e in part}
        return {db_id: self._databases[db_id] for db_id in sorted(used)}

    def public_resources(self, splits: Splits) -> dict[str, Any]:
        """Schemas and the train split's questions with their SQL; nothing of val/test but
        the databases' structure."""
        return {
            "dialect": "sqlite",
            "schemas": {db_id: describe_database(path) for db_id, path in self._used_databases(splits).items()},
            "train": [{"question": e.inputs["question"], "sql": e.target["sql"], "db_id": e.inputs["db_id"]}
                      for e in splits.train],
        }

    def public_files(self, splits: Splits, out_dir: Path) -> dict[str, Path]:
        """A read-only copy of each database, named ``<db_id>.sqlite``; keys are db ids."""
        folder = Path(out_dir) / "databases"
        folder.mkdir(parents=True, exist_ok=True)
        files = {}
        for db_id, source in self._used_databases(splits).items():
            target = folder / f"{db_id}.sqlite"
            if target.resolve().parent != folder.resolve():   # db ids are checked at load; never write elsewhere
                raise ValueError(f"database id {db_id!r} would put its public copy outside {folder}")
            if target.exists():
                target.chmod(0o644)
            shutil.copyfile(source, target)
            target.chmod(0o444)
            files[db_id] = target
        return files

    # ---- scoring -------------------------------------------------------------------------
    def evaluate(self, examples: list[Example], answers: list[Any], split: str) -> EvalReport:
        self.load()
        items = [{"db_path": str(self._databases[e.inputs["db_id"]]), "gold": e.target["sql"],
                  "pred": clean_answer_sql(a)} for e, a in zip(examples, answers)]
        verdicts = evaluate_in_child(items, float(self.settings["query_timeout_s"]),
                                     int(self.settings["max_result_rows"]), int(self.settings["eval_memory_mb"]))
        train_ids = {e.id for e in self.load().train}   # their gold is public: reasons may compare with it
        per_example = []
        for example, verdict in zip(examples, verdicts):
            public = split == "train" and example.id in train_ids
            # The evaluator's own reason may quote gold rows: it stays in the trusted details.
            details = {"outcome": verdict.outcome, "level": example.target.get("level"),
                       "evaluator_reason": verdict.reason, **verdict.details}
            failure = None if verdict.score >= 1 else "format" if verdict.outcome in UNREADABLE else "wrong"
            per_example.append(ExampleScore(example.id, verdict.score, self._reason(verdict, public), details,
                                            failure))
        return EvalReport(metrics=self._metrics(examples, verdicts), per_example=per_example,
                          notes={"split": split, "data": self.data_label,
                                 "scorer": "execution accuracy (result multisets; ordered when the gold "
                                           "query has a top-level ORDER BY)",
                                 "query_timeout_s": self.settings["query_timeout_s"]})

    def _reason(self, verdict, public: bool) -> str:
        """What kind of mistake, from the verdict's outcome and counts: never a value of the
        gold result, nor how many rows it has (both would hand out the held-out answer). On
        val/test a wrong result is told by the answer's own row count alone: "fewer/more than
        expected" or "as expected" would let a harness binary-search each gold row count.
        ``public``: a train example, whose gold is public (ctx.resources['train']): its reason
        may compare with it."""
        outcome, rows = verdict.outcome, verdict.details.get("rows")
        if verdict.score >= 1:
            return ""
        if outcome in ("no_sql", "invalid_sql"):   # about the answer only (SQLite's message on it)
            return verdict.reason
        if outcome == "timeout":
            return f"query timed out after {self.settings['query_timeout_s']:g}s (the per-query limit)"
        if outcome == "too_many_rows":
            return f"wrong result: more than {self.settings['max_result_rows']} rows"
        if outcome == "gold_failed":
            return "this example's reference query fails in SQLite, so it cannot be scored"
        if outcome == "crashed":
            return "the query crashed the evaluator process (e.g. it ran out of memory)"
        expected = verdict.details.get("expected_rows")
        if rows is None or expected is None:
            return "wrong result"
        if not public:
            return f"wrong result ({_count(rows)}): not the expected result"
        if rows != expected:
            return f"wrong result: {_count(rows)}, {'fewer' if rows < expected else 'more'} than expected"
        why = verdict.reason   # only its kind is kept (the evaluator words the comparison)
        if "wrong order" in why:
            return f"wrong result: the right {_count(rows)} in the wrong order"
        if "columns, expected" in why:
            return f"wrong result: {_count(rows)} as expected, but a different number of columns"
        return f"wrong result: {_count(rows)} as expected, but some values differ"

    @staticmethod
    def _metrics(examples: list[Example], verdicts) -> dict[str, float]:
        n = len(verdicts) or 1
        outcomes = Counter("wrong_result" if v.outcome == "too_many_rows" else v.outcome for v in verdicts)
        metrics = {"execution_accuracy": sum(v.score for v in verdicts) / n}
        metrics.update({f"{o}_rate": outcomes.get(o, 0) / n for o in OUTCOMES})
        by_level: dict[int, list[float]] = {}
        for example, verdict in zip(examples, verdicts):
            if example.target.get("level") is not None:
                by_level.setdefault(example.target["level"], []).append(verdict.score)
        for level, scores in sorted(by_level.items()):
            metrics[f"level_{level}_accuracy"] = sum(scores) / len(scores)
        return metrics

    # ---- levers ----------------------------------------------------------------------------
    def harness_edits(self) -> list[HarnessEdit]:
        # Invalid or missing SQL is this task's unreadable answer (the digest files reasons
        # starting "invalid SQL"/"no SQL" under format), so the repairs for it address "format".
        return [
            HarnessEdit("few_shot_by_overlap", "format",
                        f"Show the {FEW_SHOT_K} train questions sharing most words with the question, "
                        f"with their SQL, as earlier chat turns (valid SQL over the same schema).",
                        option_edit(few_shot=FEW_SHOT_K)),
            HarnessEdit("retry_with_sql_error", "format",
                        "Run the query with run_sql; when SQLite rejects it (or no SQL came back), ask again "
                        "with the error message, up to two times.",
                        option_edit(retry_on_error=True, max_retries=2)),
            HarnessEdit("value_hints", "format",
                        "Look up the database values the question names and tell the model which column "
                        "holds each ('Ireland' is a value of customers.country), so it filters the right column.",
                        option_edit(value_hints=True)),
            HarnessEdit("schema_sample_values", "accuracy",
                        "Add the most frequent values of each text column to the compact schema, so "
                        "literals in WHERE clauses match the data.",
                        option_edit(sample_values=True)),
            HarnessEdit("execute_and_check", "accuracy",
                        "Run the query before answering; when it returns no rows, ask the model once to "
                        "check table names, columns and values.",
                        option_edit(execute_check=True)),
            HarnessEdit("vote_over_samples", "accuracy",
                        f"Sample {VOTE_SAMPLES} more queries, run them all and answer one whose result most "
                        f"candidates share (execution-guided self-consistency; rejected or empty results get "
                        f"no vote).",
                        option_edit(vote_samples=VOTE_SAMPLES)),
            HarnessEdit("copy_adapt_on_failure", "format",
                        "When the final query is missing or SQLite rejects it, answer the most similar train "
                        "query instead, its literals replaced by the question's when the phrasing matches.",
                        option_edit(copy_adapt="fallback"), baseline_use="fallback"),
            HarnessEdit("prefer_adapted_train_query", "accuracy",
                        "When a train question has the same phrasing up to its literals, answer its query "
                        "with the question's literals without asking the model; the model otherwise.",
                        option_edit(copy_adapt="prefer"), baseline_use="ensemble"),
        ]

    def baselines(self) -> list:
        from .baselines import baselines

        return baselines()


def _count(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


__all__ = ["TaskImpl"]
