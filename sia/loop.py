"""The generation loop: a thin scheduler over injected parts.

Generation 0 is the Meta-Agent's harness. Every later generation: the feedback policy decides
(rewrite the harness, update the weights, or stop), the candidate is built, scored on val,
kept only if it beats the incumbent (then test and the train probe are scored too).

Every step leaves a file in the generation's folder before the next one starts (decision,
harness, adapter, scores); after a crash the loop re-enters the generation and redoes only
the steps whose file is missing. ``state.json`` moves on only after a generation is recorded.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

from sia.agents.context import FeedbackContext
from sia.agents.decision import Decision, InvalidDecision
from sia.agents.digest import digest
from sia.data import RunData
from sia.evaluation import SplitScores
from sia.levers.lora import LeverFailed
from sia.pace import OutOfTime, PaceGuard
from sia.parts import Parts
from sia.records import GenerationRecord, Incumbent, RunState
from sia.run import RunDir, read_json, write_json_atomic, write_text_atomic
from sia.tasks import Task

log = logging.getLogger(__name__)


class Loop:
    def __init__(self, *, run: RunDir, task: Task, data: RunData, parts: Parts, tracker, state: RunState,
                 budget, generate_seconds: Callable[[], float], baselines: dict[str, dict] | None = None):
        self.run, self.task, self.data, self.parts, self.tracker = run, task, data, parts, tracker
        self.state, self.budget, self.generate_seconds = state, budget, generate_seconds
        self.baselines = baselines or {}   # name -> {description, val, test}

    # ---- scoring ---------------------------------------------------------------------
    def _score(self, generation: int, harness: Path, adapter: str | None, full: bool) -> dict[str, SplitScores]:
        ev = self.parts.evaluator
        scores = {"val": ev.evaluate(generation, "val", self.data.val, harness, adapter)}
        if full and self.data.test:
            scores["test"] = ev.evaluate(generation, "test", self.data.test, harness, adapter)
        probe = self._probe()
        if full and probe:
            scores["train"] = ev.evaluate(generation, "train", probe, harness, adapter)
        return scores

    def _probe(self) -> list:
        """The train examples a kept generation is also scored on (for policies that read them)."""
        return self.data.probe if getattr(self.parts.policy, "wants_train_probe", False) else []

    @staticmethod
    def _fill(record: GenerationRecord, scores: dict[str, SplitScores]) -> GenerationRecord:
        record.val, record.val_metrics = scores["val"].primary, scores["val"].metrics
        record.tokens = sum(r["tokens"] for r in scores["val"].rows)
        if "test" in scores:
            record.test, record.test_metrics = scores["test"].primary, scores["test"].metrics
        if "train" in scores:
            record.train_probe = scores["train"].primary
        return record

    # ---- generations -----------------------------------------------------------------
    def _generation_zero(self) -> GenerationRecord:
        gen_dir = self.run.gen_dir(0)
        harness = gen_dir / "harness.py"
        if not harness.is_file():
            outcome = self.parts.meta.first_harness(self.parts.env)
            write_json_atomic(gen_dir / "meta.json", outcome.info)
            write_text_atomic(harness, outcome.code)
        problem = self.parts.evaluator.bench.check(harness)
        if problem:
            raise RuntimeError(f"the first harness ({harness}) does not load in the sandbox: {problem}")
        info = read_json(gen_dir / "meta.json") if (gen_dir / "meta.json").is_file() else {}
        fell_back = "; fell back to the seed harness" if info.get("fell_back_to_seed") else ""
        record = GenerationRecord(generation=0, action="seed", kept=True, harness=str(harness),
                                  rationale=f"first harness (Meta-Agent {info.get('agent', '?')}){fell_back}",
                                  **_agent_cost(info.get("cost")))
        return self._fill(record, self._score(0, harness, None, full=True))

    def _context(self, generation: int, inc: Incumbent) -> FeedbackContext:
        inc_dir = self.run.gen_dir(inc.generation)
        val = read_json(inc_dir / "scores_val.json")["rows"]
        probe = read_json(inc_dir / "scores_train.json")["rows"] if (inc_dir / "scores_train.json").is_file() else None
        code = Path(inc.harness).read_text(encoding="utf-8")
        return FeedbackContext(
            generation=generation, harness_code=code, digest=digest(val, probe), history=list(self.state.history),
            offer=self.parts.lever.offer(self.task, code), edits=self.task.harness_edits(),
            trajectories=self.parts.evaluator.trajectories(inc.generation, "val"),
            baselines={k: v["val"] for k, v in self.baselines.items() if v.get("val") is not None},
            train_probe=digest(probe) if probe else None, task_text=self.task.description(),
            checker=self.parts.env.checker,
            budget_left={"generations": self.budget.generations - generation + 1,
                         "minutes": self.budget.wall_clock_minutes - self.state.elapsed_s / 60})

    def _decide(self, generation: int, inc: Incumbent) -> Decision:
        path = self.run.gen_dir(generation) / "decision.json"
        if path.is_file():
            return Decision.from_json(read_json(path))
        ctx = self._context(generation, inc)
        decision = self.parts.policy.decide(ctx)
        decision.validate(ctx.offer.algorithms if decision.action == "weights" else None)
        write_json_atomic(path, decision.to_json())
        return decision

    def _generation(self, generation: int, started: float) -> GenerationRecord:
        inc = self.state.incumbent
        try:
            decision = self._decide(generation, inc)
        except InvalidDecision as exc:
            return GenerationRecord(generation=generation, action="invalid", failed=str(exc))
        late = self._training_would_end_late() if decision.action == "weights" else ""
        if late:
            raise OutOfTime(late)
        record = GenerationRecord(generation=generation, action=decision.action, rationale=decision.rationale,
                                  edit=decision.edit, fallback=bool(decision.stats.get("fallback")),
                                  **_agent_cost(decision.stats.get("cost")))
        if decision.action == "stop":
            return record
        harness, adapter = Path(inc.harness), inc.adapter
        try:
            if decision.action == "harness":
                harness = self.run.gen_dir(generation) / "harness.py"
                if not harness.is_file():
                    write_text_atomic(harness, decision.harness_code)
                problem = self.parts.evaluator.bench.check(harness)
                if problem:
                    raise LeverFailed(f"the new harness does not load: {problem}")
            else:
                trained = self.parts.lever.train(generation, decision, harness, inc.adapter,
                                                 self.run.incumbent_adapter_dir(self.state),
                                                 pace=self._pace_guard(started, rollouts=True))
                adapter, losses = trained.name, trained.info.get("losses") or [None]
                record.algorithm = trained.info.get("algorithm")
                if trained.info.get("rationale"):
                    record.rationale += f" | weights lever: {trained.info['rationale']}"
                record.train_loss_first, record.train_loss_last = losses[0], losses[-1]
                record.train_losses = list(trained.info.get("losses") or [])
                record.train_s = float(trained.info.get("wall_s", 0.0))
                if trained.info.get("skipped"):      # e.g. no positive reward: nothing to train on
                    record.failed = trained.info["skipped"]
                    return record
        except LeverFailed as exc:
            log.warning("generation %d failed: %s", generation, exc)
            record.failed = str(exc)
            return record
        val = self.parts.evaluator.evaluate(generation, "val", self.data.val, harness, adapter,
                                            on_progress=self._pace_guard(started, rollouts=False))
        record.kept = self.task.meta.better(val.primary, inc.val)
        record.harness, record.adapter = str(harness), adapter
        scores = self._score(generation, harness, adapter, full=True) if record.kept else {"val": val}
        return self._fill(record, scores)

    def _training_would_end_late(self) -> str:
        """Why a weights generation would end after the wall-clock budget, judged by the last one
        that ran to its evaluation (training, unlike a val run, is not watched as it goes); ''
        when it fits or is the first."""
        same = [h for h in self.state.history if h.action == "weights" and h.val is not None]
        if not same:
            return ""
        forecast_s = self.state.elapsed_s + same[-1].wall_s
        if forecast_s <= self.budget.wall_clock_minutes * 60:
            return ""
        return (f"wall-clock budget of {self.budget.wall_clock_minutes} min: the next generation (weights) would "
                f"end at ~{forecast_s / 60:.1f} min (generation {same[-1].generation}, the last weights one, "
                f"took {same[-1].wall_s:.0f} s)")

    def _pace_guard(self, started: float, rollouts: bool) -> PaceGuard:
        """Stops a candidate's val run (or a weight update's rollouts, with the val run after
        them) once its own pace says the generation ends too late."""
        jobs_after, what, after = len(self.data.test) + len(self._probe()), "val", "test/probe jobs of a kept one"
        if rollouts:
            jobs_after += len(self.data.val)
            what, after = "rollout", "val/test/probe jobs after them (training not counted)"
        return PaceGuard(budget_s=self.budget.wall_clock_minutes * 60,
                         spent_s=self.state.elapsed_s + time.monotonic() - started, jobs_after=jobs_after,
                         first_wave=getattr(self.parts.evaluator.bench.pool, "workers", 1), what=what,
                         after=after, clock=time.monotonic)

    def _finish(self, record: GenerationRecord, started: float, generate_before: float) -> None:
        record.wall_s = time.monotonic() - started
        if record.kept:
            self.state.incumbent = Incumbent(record.generation, record.harness, record.adapter, record.val,
                                             record.test)
        inc = self.state.incumbent
        record.incumbent_val, record.incumbent_test = inc.val, inc.test
        write_json_atomic(self.run.gen_dir(record.generation) / "record.json", record.to_json())
        st = self.state
        st.history.append(record)
        st.next_generation = record.generation + 1
        st.elapsed_s += record.wall_s
        st.generate_s = generate_before + self.generate_seconds()
        st.train_s += record.train_s
        self.run.save_state(st)
        self.tracker.log_generation(record, st.history)
        mark = "kept" if record.kept else (f"failed: {record.failed}" if record.failed else "rejected")
        log.info("gen %d %s val=%s (%s) incumbent val=%s test=%s", record.generation, record.label,
                 _fmt(record.val), mark, _fmt(inc.val), _fmt(inc.test))

    def run_all(self) -> RunState:
        generate_before = self.state.generate_s
        deadline_s = self.budget.wall_clock_minutes * 60
        while self.state.status == "running":
            generation = self.state.next_generation
            if generation > self.budget.generations:
                self.state.stop_reason = f"all {self.budget.generations} generations of budget.generations spent"
                break
            if generation > 0 and self.state.elapsed_s >= deadline_s:
                self.state.stop_reason = f"wall-clock budget of {self.budget.wall_clock_minutes} min spent"
                log.warning("%s; stopping before generation %d", self.state.stop_reason, generation)
                break
            started = time.monotonic()
            try:
                record = self._generation_zero() if generation == 0 else self._generation(generation, started)
            except OutOfTime as exc:   # its decision (and a trained adapter) stay on disk: a resume with more time runs it
                self.state.elapsed_s += time.monotonic() - started   # a val run stopped midway took time too
                self.state.stop_reason = str(exc)
                log.warning("%s; stopping at generation %d (a resume with more time runs it)", exc, generation)
                break
            self._finish(record, started, generate_before)
            if record.action == "stop":
                self.state.stop_reason = f"the feedback policy stopped: {record.rationale}"
                break
        self.state.status = "done"
        self.run.save_state(self.state)
        return self.state


def _agent_cost(cost: dict | None) -> dict:
    """Record fields of what an LLM agent's calls cost (nothing for offline agents)."""
    cost = cost or {}
    return {"agent_tokens": int(cost.get("tokens_in", 0) + cost.get("tokens_out", 0)),
            "agent_dollars": float(cost.get("dollars", 0.0))}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
