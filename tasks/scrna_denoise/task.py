"""scrna_denoise: denoise single-cell RNA counts, scored by molecular cross-validation.

Every count is thinned binomially into train molecules (which the harness reads from a
public file) and held-out test molecules (which stay in this process, as example targets).
Cells are shuffled once and cut into val/test examples of ``cells_per_example`` cells and
smaller train examples of ``train_cells_per_example`` (enough of them for reward-driven
training groups); an answer is the denoised matrix for an example's cells. Split metrics are
computed over all of a split's cells at once, as OpenProblems scores a whole data set.

An answer counts as right (``ExampleScore.failure`` None) at a normalised score of at least
``RIGHT_SCORE``: what the standard methods reach (kNN smoothing 0.18 and MAGIC 0.31 on the
bundled data's val split; ALRA 0.02 does not). Below it a readable answer is "wrong"; a
missing, misshapen, non-finite or negative matrix is "format".
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from sia.data import file_problem
from sia.harness.options import option_edit, read_options
from sia.tasks import schema_defaults
from sia.tasks import EvalReport, Example, ExampleScore, HarnessEdit, Splits, Task, Scoring, plain_config

from .config_schema import DataConfig
from . import baselines
from .data import Counts, CountsError, McvSplit, UnreadableFile, cell_splits, load_bundled_pbmc, load_h5ad_counts, mcv_split
from .metrics import References, answer_problem, perfect_prediction

DEFAULTS = schema_defaults(DataConfig)   # tasks/scrna_denoise/config_schema.py holds every default
PRIMARY_METRICS = ("score",)
# Reported, but a trivial answer wins on each alone (measured on the bundled data's val split),
# so neither may steer the loop.
NOT_PRIMARY = {
    "mse_norm": "the all-zero matrix wins on it alone (0.48, against -0.16 for kNN smoothing and "
                "-0.10 for MAGIC), and zeroing small counts scores 0.25",
    "poisson_norm": "an answer that ignores the cells (every cell given the same gene means) reaches "
                    "0.46 on it alone, above ALRA (0.45)",
}
RIGHT_SCORE = 0.15
TRAIN_COUNTS_FILE = "train_counts.npz"


class TaskImpl(Task):
    name = "scrna_denoise"

    def __init__(self, cfg: Any, root: Path):
        super().__init__(cfg, root)
        config = plain_config(cfg)
        self.data_cfg = {**DEFAULTS, **plain_config(config.get("data"))}
        primary = config.get("primary_metric", "score")
        self.scoring = Scoring(
            primary_metric=primary if primary in PRIMARY_METRICS else "score",
            direction="max", reward_shape="graded",
            # unreadable: share of examples with a missing or invalid answer (lower is better)
            metrics=("score", "mse_norm", "poisson_norm", "mse", "poisson", "unreadable"),
        )
        self._primary_setting = primary
        self._counts: Counts | None = None
        self._mcv: McvSplit | None = None
        self._splits: Splits | None = None

    # ---- configuration ------------------------------------------------------------------
    def config_problems(self) -> list[str]:
        problems = self._setting_problems()
        if not problems:
            try:
                self._load_counts()
            except CountsError as err:
                problems.append(self._counts_problem(err))
            else:   # split now (load() keeps it): an empty split stops the run before any work
                problems += self._split_problems()
        return problems

    def _split_problems(self) -> list[str]:
        d, splits = self.data_cfg, self.load()
        sizes = {name: len(splits[name]) for name in ("train", "val", "test")}
        empty = [name for name in ("val", "test") if not sizes[name]]   # train_cells=0 may leave train empty
        if not empty:
            return []
        return [f"task.data.train_cells={d['train_cells']!r}, val_cells={d['val_cells']!r}: "
                f"{self._mcv.train.shape[0]} usable cells give train {sizes['train']}, val {sizes['val']}, "
                f"test {sizes['test']} examples, and {' and '.join(empty)} may not be empty: use more cells "
                f"(task.data.max_cells, or a larger file in task.data.path) or smaller shares, leaving test "
                f"cells (1 - train_cells - val_cells of them)"]

    def _setting_problems(self) -> list[str]:
        d, problems = self.data_cfg, []
        for key in sorted(set(d) - set(DEFAULTS)):
            problems.append(f"task.data.{key}: unknown setting (value {d[key]!r}); the known ones are "
                            f"{', '.join(DEFAULTS)}")
        if self._primary_setting in NOT_PRIMARY:
            problems.append(f"task.primary_metric: {self._primary_setting!r} cannot be the primary metric: "
                            f"{NOT_PRIMARY[self._primary_setting]}. Use task.primary_metric=score (their mean, "
                            f"where the all-zero matrix scores -1.08 and zeroing small counts -0.09, below "
                            f"no denoising); {self._primary_setting} is still reported")
        elif self._primary_setting not in PRIMARY_METRICS:
            problems.append(f"task.primary_metric: {self._primary_setting!r} is not a metric of this "
                            f"task; use one of {', '.join(PRIMARY_METRICS)}")
        if d["path"] is not None and Path(str(d["path"])).expanduser().is_dir():
            problems.append(self._counts_problem(CountsError("a directory")))
        elif d["path"] is not None and Path(str(d["path"])).suffix != ".h5ad":
            problems.append(f"task.data.path: {d['path']!r} is not an .h5ad file; give an AnnData "
                            f".h5ad holding raw counts, or null for scanpy's bundled pbmc68k_reduced")
        if not _is_number(d["train_fraction"]) or not 0 < d["train_fraction"] < 1:
            problems.append(f"task.data.train_fraction: {d['train_fraction']!r} must be strictly between "
                            f"0 and 1 (the share of each count the harness sees; OpenProblems uses 0.9)")
        if not _is_int(d["max_cells"]) or d["max_cells"] < 10:
            problems.append(f"task.data.max_cells: {d['max_cells']!r} must be an integer >= 10 (default 4000)")
        if d["max_genes"] is not None and (not _is_int(d["max_genes"]) or d["max_genes"] < 2):
            problems.append(f"task.data.max_genes: {d['max_genes']!r} must be null (all genes) or an "
                            f"integer >= 2")
        if not _is_int(d["seed"]):
            problems.append(f"task.data.seed: {d['seed']!r} must be an integer")
        for key, default in (("cells_per_example", 70), ("train_cells_per_example", 14)):
            if not _is_int(d[key]) or d[key] < 1:
                problems.append(f"task.data.{key}: {d[key]!r} must be an integer >= 1 (default {default})")
        shares = [d["train_cells"], d["val_cells"]]
        if not all(_is_number(s) and 0 <= s < 1 for s in shares) or sum(shares) >= 1 or d["val_cells"] == 0:
            problems.append(f"task.data.train_cells={d['train_cells']!r}, val_cells={d['val_cells']!r}: "
                            f"each a share of cells in [0, 1), val_cells > 0, and their sum < 1 so that "
                            f"the rest are test cells (default 0.2 and 0.4)")
        return problems

    def _counts_problem(self, err: CountsError) -> str:
        path = self.data_cfg["path"]
        if path is None:
            return f"task.data.path: null (scanpy's bundled pbmc68k_reduced) cannot be used: {err}"
        missing = file_problem("task.data.path", path, "an AnnData .h5ad file with raw integer counts",
                               (".h5ad",))
        if missing:
            return f"{missing}, or set it to null for scanpy's bundled pbmc68k_reduced"
        if isinstance(err, UnreadableFile):
            return (f"task.data.path={str(path)!r}: {err}; give an .h5ad written by anndata "
                    f"(adata.write_h5ad) or scanpy, or set task.data.path=null for scanpy's bundled "
                    f"pbmc68k_reduced")
        return (f"task.data.path: {err}; store raw UMI counts in X or layers['counts'], or name "
                f"their place with task.data.layer (X, raw or a layer name; now "
                f"{self.data_cfg['layer']!r})")

    @property
    def data_label(self) -> str:
        d = self.data_cfg
        source = "scanpy pbmc68k_reduced (bundled)" if d["path"] is None else str(d["path"])
        shape = ""
        if self._mcv is not None:
            shape = f", {self._mcv.train.shape[0]} cells x {self._mcv.train.shape[1]} genes"
        elif self._counts is not None:  # config_problems() has read the data, load() has not split it
            rows, cols = self._counts.matrix.shape
            shape = f", {min(rows, int(d['max_cells']))} cells x {min(cols, d['max_genes'] or cols)} genes"
        return f"{source}{shape}, MCV {d['train_fraction']:g} train, seed {d['seed']}"

    # ---- data -----------------------------------------------------------------------------
    def _load_counts(self) -> Counts:
        if self._counts is None:
            path = self.data_cfg["path"]
            self._counts = (load_bundled_pbmc() if path is None
                            else load_h5ad_counts(str(path), str(self.data_cfg["layer"])))
        return self._counts

    def load(self) -> Splits:
        if self._splits is None:
            d = self.data_cfg
            self._mcv = mcv_split(self._load_counts(), float(d["train_fraction"]), int(d["seed"]),
                                  int(d["max_cells"]), d["max_genes"])
            parts = cell_splits(self._mcv.train.shape[0], float(d["train_cells"]), float(d["val_cells"]),
                                int(d["cells_per_example"]), int(d["seed"]), int(d["train_cells_per_example"]))
            self._splits = Splits(**{name: [self._example(name, i, rows) for i, rows in enumerate(chunks)]
                                     for name, chunks in parts.items()})
        return self._splits

    def _example(self, split: str, index: int, rows: np.ndarray) -> Example:
        return Example(
            id=f"{split}-{index:03d}",
            inputs={"cells": [int(r) for r in rows], "n_genes": int(self._mcv.train.shape[1])},
            # Held-out molecules of these cells (never written to a public file). Train-split
            # targets concern only train-split cells, which val/test never score.
            target=self._mcv.test[rows].astype(np.float32),
        )

    def public_resources(self, splits: Splits) -> dict[str, Any]:
        mcv = self._mcv
        return {
            "dataset": self.data_label,
            "n_cells": int(mcv.train.shape[0]),
            "n_genes": int(mcv.train.shape[1]),
            "genes": list(mcv.genes),
            "train_fraction": float(self.data_cfg["train_fraction"]),
            "train_counts": f"ctx.files['train_counts']: scipy CSR .npz (scipy.sparse.load_npz) of "
                            f"every cell's train counts, cells x genes; example inputs['cells'] index its rows",
        }

    def public_files(self, splits: Splits, out_dir: Path) -> dict[str, Path]:
        path = Path(out_dir) / TRAIN_COUNTS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        sp.save_npz(path, self._mcv.train.astype(np.int32), compressed=True)
        return {"train_counts": path}

    def private_paths(self) -> list[Path]:
        """Files holding BOTH halves of the counts: a harness that reads one can subtract
        the train counts and recover the held-out half. scanpy's bundled file lies under
        site-packages, which harnesses may read: the sandbox carves these paths out."""
        from .data import bundled_pbmc_path

        path = self.data_cfg["path"]
        try:
            return [bundled_pbmc_path() if path is None else Path(str(path)).resolve()]
        except CountsError:
            return []

    # ---- scoring ----------------------------------------------------------------------------
    def evaluate(self, examples: list[Example], answers: list[Any], split: str) -> EvalReport:
        """Per example: its cells' normalised scores. Split metrics: all examples' cells
        scored together. An invalid or missing answer is scored as no denoising (its cells'
        train counts), i.e. 0, so a failure never pays better than doing nothing."""
        self.load()
        started = time.perf_counter()
        per_example, trains, tests, preds = [], [], [], []
        for example, answer in zip(examples, answers):
            train = self._mcv.train[example.inputs["cells"]].toarray().astype(np.float64)
            test = _dense(example.target)
            pred, why = answer_problem(answer, train.shape)
            if pred is None:
                per_example.append(ExampleScore(example.id, 0.0, why, {"valid": False}, "format"))
                pred = train
            else:
                per_example.append(_example_score(example.id, References(train, test).score(pred)))
            trains.append(train), tests.append(test), preds.append(pred)
        invalid = sum(1 for s in per_example if not s.details.get("valid"))
        metrics = {"unreadable": invalid / len(examples) if examples else 1.0}
        if examples:
            whole = References(np.vstack(trains), np.vstack(tests)).score(np.vstack(preds))
            metrics = {**whole.as_dict(), **metrics}
        else:
            metrics.update(score=0.0, mse_norm=0.0, poisson_norm=0.0, mse=float("nan"), poisson=float("nan"))
        notes = {"data": self.data_label, "split": split, "cells": sum(len(t) for t in tests),
                 "invalid_scored_as": "no denoising (score 0)",
                 "eval_s": round(time.perf_counter() - started, 3)}
        return EvalReport(metrics, per_example, notes)

    def baseline_reports(self, split: str = "test") -> dict[str, EvalReport]:
        """Each reference method (run on all cells' train counts), and the perfect control,
        scored by ``evaluate`` on ``split``'s examples."""
        splits = self.load()
        examples = splits[split]
        train_all = self._mcv.train.toarray().astype(np.float64)
        reports = {}
        for name, method in baselines.METHODS.items():
            started = time.perf_counter()
            pred = method(train_all)
            method_s = time.perf_counter() - started
            reports[name] = self.evaluate(examples, [pred[e.inputs["cells"]] for e in examples], split)
            reports[name].notes["method_s"] = round(method_s, 3)
        rows = np.concatenate([e.inputs["cells"] for e in examples])
        perfect = perfect_prediction(train_all[rows], self._mcv.test[rows].toarray())
        bounds = np.cumsum([0] + [len(e.inputs["cells"]) for e in examples])
        reports["perfect"] = self.evaluate(
            examples, [perfect[a:b] for a, b in zip(bounds[:-1], bounds[1:])], split)
        return reports

    def baselines(self) -> list:
        self.load()
        return baselines.baselines(lambda: self._mcv.train)

    # ---- levers -----------------------------------------------------------------------------
    def harness_edits(self) -> list[HarnessEdit]:
        def fixed(pipeline):
            return option_edit(ask_model=False, default_pipeline=pipeline)

        return [
            HarnessEdit("clip_negative_output", "format",
                        "Clip negative output values to 0 (low-rank output can dip below 0, which "
                        "the evaluator rejects).", option_edit(clip_negative=True)),
            HarnessEdit("round_output_to_counts", "format",
                        "Round the output to integer counts (a count-shaped answer; small values "
                        "become 0, which the Poisson metric punishes).", option_edit(round_output=True)),
            HarnessEdit("retry_unparsed_reply", "errors",
                        "When the model's reply holds no tool call, ask once more with feedback "
                        "before falling back to the default pipeline.", option_edit(retry_unparsed=True)),
            # First of the accuracy edits: it scores the fixed choices below (and the incumbent's
            # own) on the harness's own inner split, so it subsumes them when it is reached first.
            HarnessEdit("mcv_self_tuning", "accuracy",
                        "Choose the method (MAGIC t and k, or kNN k), the sharpening power and the share "
                        "of the unsharpened profile kept, by molecular cross-validation on the harness's "
                        "own train counts: thin them binomially again, score every candidate's prediction "
                        "of the inner held-out part with the task's metric definitions, run the best on "
                        "all train counts. The incumbent's own settings are a candidate and win ties.",
                        option_edit(mcv_tune=True, ask_model=False), baseline_use="replace"),
            HarnessEdit("sharpen_output", "accuracy",
                        "Raise each cell's denoised profile to the power 2: smoothing spreads counts "
                        "over zeros, which the log-space MSE punishes.", option_edit(sharpen=2.0)),
            HarnessEdit("fixed_knn_smoothing", "accuracy",
                        "Always run knn(15) without asking the model.", fixed("knn(15)"), baseline_use="replace"),
            HarnessEdit("fixed_magic", "accuracy",
                        "Always run magic(3, 10) without asking the model.", fixed("magic(3, 10)"), baseline_use="replace"),
            HarnessEdit("fixed_alra", "accuracy",
                        "Always run alra(20) without asking the model.", fixed("alra(20)"), baseline_use="replace"),
            HarnessEdit("no_model_call", "variance",
                        "Skip the model and always run the default pipeline, so every example gets "
                        "the same method.", _when_asking(option_edit(ask_model=False))),
        ]

    def supports_gold_sft(self) -> bool:
        # A target is a count matrix, not a text completion the model could be taught.
        return False


def _when_asking(edit):
    """Only offer ``edit`` to a harness that still asks the model."""
    def apply(source: str) -> str | None:
        options = read_options(source) or {}
        return edit(source) if options.get("ask_model") else None
    return apply


def _example_score(example_id: str, scores) -> ExampleScore:
    parts = f"mse_norm {scores.mse_norm:.3f}, poisson_norm {scores.poisson_norm:.3f}"
    if scores.score >= RIGHT_SCORE:
        reason, failure = "", None
    elif scores.score <= 0:
        reason, failure = f"no better than no denoising ({parts})", "wrong"
    else:
        reason = f"partial credit {scores.score:.3f} of 1, below the {RIGHT_SCORE:g} that counts as right ({parts})"
        failure = "wrong"
    # The reward is clipped to [0, 1]; the raw headline (negative when worse than the
    # input) stays in details and in the split metrics.
    return ExampleScore(example_id, float(min(max(scores.score, 0.0), 1.0)), reason,
                        {"valid": True, **scores.as_dict()}, failure)


def _dense(matrix) -> np.ndarray:
    return (matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)).astype(np.float64)


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
