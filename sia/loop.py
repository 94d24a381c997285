"""The generation loop: first harness, then per generation a feedback decision (rewrite the
harness or update the weights), a val evaluation, keep-best, and test reporting.

Every step leaves a file in the generation's folder before the next one starts (decision,
SFT pairs, adapter, scores); after a crash the loop re-enters the generation and redoes
only the steps whose file is missing. ``state.json`` moves to the next generation only
after the current one is recorded, so no generation is lost or repeated.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from sia.agents import feedback, meta
from sia.agents.decision import Decision, InvalidDecision
from sia.agents.digest import digest
from sia.harness.contract import Job, JobResult
from sia.run import RunDir, read_json, write_json_atomic, write_jsonl_atomic, write_text_atomic
from sia.tasks import Example, Splits, Task

log = logging.getLogger(__name__)


@dataclass
class SplitScores:
    primary: float
    metrics: dict[str, float]
    rows: list[dict]             # per example: id, score, reason, error, answer_missing, tokens

    @classmethod
    def from_json(cls, data: dict) -> "SplitScores":
        return cls(primary=data["primary"], metrics=data["metrics"], rows=data["rows"])


def _answer_preview(answer: Any) -> Any:
    """What a trajectory keeps of an answer: all of it, unless it is a large array."""
    if hasattr(answer, "shape") and hasattr(answer, "dtype"):
        return {"array": {"shape": list(answer.shape), "dtype": str(answer.dtype)}}
    return answer


class Loop:
    def __init__(self, cfg: DictConfig, run: RunDir, task: Task, engine, pool, tracker, state: dict):
        self.cfg, self.run, self.task, self.engine, self.pool, self.tracker = cfg, run, task, engine, pool, tracker
        self.state = state
        self.budget = cfg.budget
        self.progress = not cfg.quiet
        self.train_seconds = 0.0

    # ---- data ------------------------------------------------------------------------
    def _prepare(self) -> None:
        self.splits: Splits = self.task.load()
        self.val = self.splits.val[: self.budget.val_examples]
        self.test = self.splits.test[: self.budget.test_examples]
        self.probe = self.splits.train[: self.budget.probe_train_examples] if self.cfg.feedback.policy == "rules" else []
        public_dir = self.run.path / "public"
        public_dir.mkdir(exist_ok=True)
        self.resources = self.task.public_resources(self.splits)
        self.files = {k: str(v) for k, v in self.task.public_files(self.splits, public_dir).items()}
        write_json_atomic(public_dir / "resources.json", self.resources)
        if not self.val:
            raise RuntimeError(f"task {self.task.name} has an empty val split; it cannot make keep-best decisions")

    # ---- evaluation ------------------------------------------------------------------
    def _run_jobs(self, harness: Path, jobs: list[Job], adapter: str | None, desc: str) -> list[JobResult]:
        return self.pool.run(harness, jobs, self.resources, self.files, adapter=adapter,
                             progress=self.progress, desc=desc)

    def _evaluate(self, generation: int, split: str, examples: list[Example], harness: Path,
                  adapter: str | None) -> SplitScores:
        gen_dir = self.run.gen_dir(generation)
        scores_file = gen_dir / f"scores_{split}.json"
        if scores_file.is_file():
            return SplitScores.from_json(read_json(scores_file))
        results = self._run_jobs(harness, [Job(id=e.id, inputs=e.inputs) for e in examples], adapter,
                                 desc=f"gen {generation} {split}")
        answers = [r.answer if r.error is None else None for r in results]
        report = self.task.evaluate(examples, answers, split)
        rows, trajectories = [], []
        for example, result, scored in zip(examples, results, report.per_example):
            reason = scored.reason
            if result.error:
                reason = f"harness {result.error['kind']}: {result.error['message'][-300:]}"
            row = {"id": example.id, "score": scored.score, "reason": reason, "error": result.error,
                   "answer_missing": result.error is None and result.answer is None,
                   "tokens": result.prompt_tokens + result.completion_tokens}
            rows.append(row)
            trajectories.append({"generation": generation, "split": split, "id": example.id,
                                 "adapter": adapter, "events": result.events,
                                 "answer": _answer_preview(result.answer), "error": result.error,
                                 "score": scored.score, "reason": reason, "details": scored.details,
                                 "wall_s": result.wall_s, "llm_s": result.llm_s,
                                 "prompt_tokens": result.prompt_tokens,
                                 "completion_tokens": result.completion_tokens})
        scores = SplitScores(primary=report.primary(self.task.meta), metrics=report.metrics, rows=rows)
        write_jsonl_atomic(gen_dir / f"trajectories_{split}.jsonl", trajectories)
        write_json_atomic(scores_file, {"primary": scores.primary, "metrics": scores.metrics, "rows": rows,
                                        "notes": report.notes, "split": split, "n": len(examples)})
        return scores

    def _score_incumbent_candidate(self, generation: int, harness: Path, adapter: str | None,
                                   with_test: bool) -> dict[str, SplitScores]:
        scores = {"val": self._evaluate(generation, "val", self.val, harness, adapter)}
        if with_test:
            if self.test:
                scores["test"] = self._evaluate(generation, "test", self.test, harness, adapter)
            if self.probe:
                scores["train"] = self._evaluate(generation, "train", self.probe, harness, adapter)
        return scores

    # ---- levers ----------------------------------------------------------------------
    def _train(self, generation: int, decision: Decision, harness: Path) -> tuple[str, dict]:
        from sia.train.sft import train_sft

        gen_dir = self.run.gen_dir(generation)
        pairs_file = gen_dir / "sft_pairs.json"
        if not pairs_file.is_file():
            examples = self.splits.train[: decision.training["examples"]]
            jobs = [Job(id=e.id, inputs=e.inputs, kind="sft_pair", target=e.target) for e in examples]
            results = self._run_jobs(harness, jobs, None, desc=f"gen {generation} render sft")
            pairs = [r.answer for r in results if r.error is None and isinstance(r.answer, dict)]
            failed = [r.error for r in results if r.error is not None]
            if not pairs:
                raise LeverFailed(f"the harness rendered no SFT pair ({failed[:1]})")
            write_json_atomic(pairs_file, pairs)
        pairs = read_json(pairs_file)
        adapter_dir = gen_dir / "adapter"
        info_file = gen_dir / "train.json"
        if not (adapter_dir / "COMPLETE").is_file():
            incumbent = self.state["incumbent"]
            init = self.run.gen_dir(incumbent["generation"]) / "adapter" if incumbent["adapter"] else None
            result = train_sft(self.cfg.model, self.cfg.lora, self.cfg.cache_dir, pairs,
                               steps=decision.training["steps"], out_dir=adapter_dir, init_adapter=init,
                               seed=self.cfg.seed + generation, progress=self.progress)
            self.train_seconds += result.wall_s
            _release_memory()
            write_json_atomic(info_file, {"losses": result.losses, "wall_s": result.wall_s,
                                          "steps": result.steps, "examples": len(pairs)})
        name = adapter_name(generation)
        self.engine.add_adapter(name, str(adapter_dir))
        return name, read_json(info_file) if info_file.is_file() else {}

    def _decide(self, generation: int) -> Decision:
        path = self.run.gen_dir(generation) / "decision.json"
        if path.is_file():
            return Decision.from_json(read_json(path))
        inc = self.state["incumbent"]
        inc_dir = self.run.gen_dir(inc["generation"])
        val = SplitScores.from_json(read_json(inc_dir / "scores_val.json"))
        probe_file = inc_dir / "scores_train.json"
        probe_rows = read_json(probe_file)["rows"] if probe_file.is_file() else None
        harness_code = Path(inc["harness"]).read_text(encoding="utf-8")
        ctx = feedback.FeedbackContext(
            generation=generation, harness_code=harness_code,
            digest=digest(val.rows, val.metrics, probe_rows), history=self.state["history"],
            edits=self.task.harness_edits(),
            weights_available=self.task.supports_gold_sft() and "def sft_pair" in harness_code,
            train_steps=self.budget.train_steps, train_examples=self.budget.train_examples,
            settings=self.cfg.feedback)
        decision = feedback.decide(self.cfg.feedback.policy, ctx)
        write_json_atomic(path, decision.to_json())
        return decision

    # ---- generations -----------------------------------------------------------------
    def _generation_zero(self) -> dict:
        gen_dir = self.run.gen_dir(0)
        harness = gen_dir / "harness.py"
        if not harness.is_file():
            write_text_atomic(harness, meta.first_harness(self.cfg.agent.meta, self.task))
        problem = self.pool.check(harness, self.resources, self.files)
        if problem:
            raise RuntimeError(f"the first harness ({harness}) does not load in the sandbox: {problem}")
        scores = self._score_incumbent_candidate(0, harness, None, with_test=True)
        return {"generation": 0, "action": "seed", "edit": None, "rationale": "first harness (Meta-Agent)",
                "kept": True, "harness": str(harness), "adapter": None, **self._score_fields(scores)}

    def _generation(self, generation: int) -> dict:
        inc = self.state["incumbent"]
        gen_dir = self.run.gen_dir(generation)
        try:
            decision = self._decide(generation)
        except InvalidDecision as exc:
            return {"generation": generation, "action": "invalid", "kept": False, "failed": str(exc)}
        record = {"generation": generation, "action": decision.action, "edit": decision.edit,
                  "rationale": decision.rationale, "kept": False}
        if decision.action == "stop":
            return record
        harness, adapter = Path(inc["harness"]), inc["adapter"]
        try:
            if decision.action == "harness":
                harness = gen_dir / "harness.py"
                if not harness.is_file():
                    write_text_atomic(harness, decision.harness_code)
                problem = self.pool.check(harness, self.resources, self.files)
                if problem:
                    raise LeverFailed(f"the new harness does not load: {problem}")
            else:
                adapter, train_info = self._train(generation, decision, harness)
                record["train_loss_first"] = train_info["losses"][0] if train_info.get("losses") else None
                record["train_loss_last"] = train_info["losses"][-1] if train_info.get("losses") else None
        except LeverFailed as exc:
            log.warning("generation %d failed: %s", generation, exc)
            return {**record, "failed": str(exc)}
        val = self._evaluate(generation, "val", self.val, harness, adapter)
        kept = self.task.meta.better(val.primary, inc["val"])
        scores = self._score_incumbent_candidate(generation, harness, adapter, with_test=kept) if kept \
            else {"val": val}
        return {**record, "kept": kept, "harness": str(harness), "adapter": adapter, **self._score_fields(scores)}

    @staticmethod
    def _score_fields(scores: dict[str, SplitScores]) -> dict:
        fields = {"val": scores["val"].primary, "val_metrics": scores["val"].metrics,
                  "tokens": sum(r["tokens"] for r in scores["val"].rows)}
        if "test" in scores:
            fields.update(test=scores["test"].primary, test_metrics=scores["test"].metrics)
        if "train" in scores:
            fields["train_probe"] = scores["train"].primary
        return fields

    def _finish_generation(self, record: dict, started: float) -> None:
        record["wall_s"] = time.monotonic() - started
        if record.get("kept"):
            self.state["incumbent"] = {k: record.get(k) for k in ("generation", "harness", "adapter", "val", "test")}
        inc = self.state["incumbent"]
        record["incumbent_val"], record["incumbent_test"] = inc["val"], inc["test"]
        write_json_atomic(self.run.gen_dir(record["generation"]) / "record.json", record)
        self.state["history"].append(record)
        self.state["next_generation"] = record["generation"] + 1
        self.state["elapsed_s"] += record["wall_s"]
        timing = self.state.setdefault("timing", {"generate_s": 0.0, "train_s": 0.0})
        timing["generate_s"] = self._generate_s_before + self.engine.stats.generate_seconds
        timing["train_s"] += self.train_seconds
        self.train_seconds = 0.0
        self.run.save_state(self.state)
        self.tracker.log_generation({k: v for k, v in record.items() if k != "rationale"}, self.state["history"])
        mark = "kept" if record.get("kept") else ("failed: " + record["failed"] if record.get("failed") else "rejected")
        log.info("gen %d %s%s val=%s (%s) incumbent val=%s test=%s", record["generation"], record["action"],
                 f":{record['edit']}" if record.get("edit") else "", _fmt(record.get("val")), mark,
                 _fmt(inc["val"]), _fmt(inc["test"]))

    def run_all(self) -> dict:
        self._prepare()
        self._generate_s_before = self.state.get("timing", {}).get("generate_s", 0.0)
        inc = self.state["incumbent"]
        if inc and inc["adapter"]:   # resumed: serve the incumbent's adapter again
            self.engine.add_adapter(inc["adapter"], str(self.run.gen_dir(inc["generation"]) / "adapter"))
        deadline_s = self.budget.wall_clock_minutes * 60
        while self.state["status"] == "running":
            generation = self.state["next_generation"]
            if generation > self.budget.generations:
                break
            if generation > 0 and self.state["elapsed_s"] >= deadline_s:
                log.warning("wall-clock budget of %s min spent; stopping before generation %d",
                            self.budget.wall_clock_minutes, generation)
                break
            started = time.monotonic()
            record = self._generation_zero() if generation == 0 else self._generation(generation)
            self._finish_generation(record, started)
            if record["action"] == "stop":
                break
        self.state["status"] = "done"
        self.run.save_state(self.state)
        return self.state


class LeverFailed(RuntimeError):
    """A candidate could not be built (harness does not load, no training data): the
    generation fails and the loop goes on with the incumbent."""


def _release_memory() -> None:
    """Hand the trainer's activations back to the OS: glibc keeps freed arenas otherwise, and
    the engine and harness workers of the next generation need that memory."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def adapter_name(generation: int) -> str:
    return f"gen{generation:03d}"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
