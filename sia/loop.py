"""The generation loop: a thin scheduler over injected parts.

Generation 0 is the Meta-Agent's harness. Every later generation: the feedback agent decides
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

from sia.agents.context import FeedbackContext, TrainTrier
from sia.agents.decision import AgentCost, Decision, InvalidDecision, PlanForecast, TrainingPlan
from sia.agents.digest import digest
from sia.data import RunData
from sia.evaluation import SplitScores
from sia.keep import PairedRule, checked, paired_gains
from sia.pace import OutOfTime, PaceGuard, Rates, WeightsPlan, plan_weights
from sia.parts import LeverFailed, LeverOffer, MetaOutcome, Parts, TrainReport
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
        self.keep = checked(parts.feedback.keep_settings)   # feedback.keep*: how a candidate is judged on val

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
        """The train examples a kept generation is also scored on (for feedback agents that read them)."""
        return self.data.probe if self.parts.feedback.wants_train_probe else []

    @staticmethod
    def _fill(record: GenerationRecord, scores: dict[str, SplitScores]) -> GenerationRecord:
        record.val, record.val_metrics = scores["val"].primary, scores["val"].metrics
        record.val_n = len(scores["val"].rows)
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
            write_json_atomic(gen_dir / "meta.json", outcome.to_json())
            write_text_atomic(harness, outcome.code)
        problem = self.parts.evaluator.bench.check(harness)
        if problem:
            raise RuntimeError(f"the first harness ({harness}) does not load in the sandbox: {problem}")
        meta = MetaOutcome.from_json(read_json(gen_dir / "meta.json") if (gen_dir / "meta.json").is_file() else {})
        fell_back = "; fell back to the seed harness" if meta.fell_back_to_seed else ""
        record = GenerationRecord(generation=0, action="seed", kept=True, harness=str(harness),
                                  rationale=f"first harness (Meta-Agent {meta.agent}){fell_back}",
                                  **_agent_cost(meta.cost or AgentCost()))
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
            train_trajectories=self.parts.evaluator.trajectories(inc.generation, "train"),
            train_examples=self._probe(),
            baselines={k: v["val"] for k, v in self.baselines.items() if v.get("val") is not None},
            train_probe=digest(probe) if probe else None, task_text=self.task.description(),
            checker=self.parts.env.checker,
            trier=TrainTrier(self.parts.evaluator.bench, self.task, self.data.splits.train,
                             self.run.gen_dir(generation) / "tries", inc.adapter),
            budget_left={"generations": self.budget.generations - generation + 1,
                         "minutes": self.budget.wall_clock_minutes - self.state.elapsed_s / 60})

    def _decide(self, generation: int, inc: Incumbent, started: float) -> Decision:
        path = self.run.gen_dir(generation) / "decision.json"
        if path.is_file():
            return Decision.from_json(read_json(path))
        ctx = self._context(generation, inc)
        decision = self.parts.feedback.decide(ctx)
        decision.validate(ctx.offer.algorithms if decision.action == "weights" else None)
        decision.digest = ctx.digest   # what the weights lever sizes and chooses by (score, format rate)
        if decision.action == "weights":   # planned before it is written: a resume runs the plan as decided
            decision = self._fit_weights(ctx, decision, started)
        write_json_atomic(path, decision.to_json())
        return decision

    # ---- planning a weight update --------------------------------------------------------
    def _fit_weights(self, ctx: FeedbackContext, decision: Decision, started: float) -> Decision:
        """The weight update as it fits the time left: as decided, shrunk, or (when even its
        smallest would end late) the feedback's harness choice without the weights lever; a
        feedback without one stops the run (``OutOfTime``: a resume with more time trains)."""
        training = decision.training
        plan = self._plan(training, ctx.offer, started)
        training.forecast = PlanForecast(fits=plan.fits, examples=plan.examples, steps=plan.steps,
                                         forecast_s=round(plan.forecast_s, 1))
        if plan.fits:
            if plan.shrunk:   # plan.examples: rollout examples (what the rollout uses of training.examples)
                training.examples, training.steps = plan.examples, plan.steps
            decision.rationale += f" | budget: {plan.why}"
            return decision
        other = self.parts.feedback.decide_with(ctx, frozenset({"harness"}))
        if other is not None and other.validate().action == "harness":
            other.digest = ctx.digest
            other.rationale = f"budget: no weight update fits ({plan.why}); instead: {other.rationale}"
            return other
        raise OutOfTime(plan.why)

    def _plan(self, training: TrainingPlan, offer: LeverOffer, started: float) -> WeightsPlan:
        """The update's forecast, shaped by what the lever says a rollout and a step take (``offer``)."""
        rollouts = training.algorithm != "sft"
        examples = training.examples
        if rollouts and offer.rollout_examples is not None:
            examples = min(examples, offer.rollout_examples)
        return plan_weights(budget_s=self.budget.wall_clock_minutes * 60,
                            spent_s=self.state.elapsed_s + time.monotonic() - started, rates=self._rates(),
                            examples=examples, samples_per_prompt=offer.samples_per_prompt, steps=training.steps,
                            jobs_after=len(self.data.val) + len(self.data.test) + len(self._probe()),
                            steps_per_example=offer.steps_per_example, min_examples=offer.min_rollout_examples,
                            rollouts=rollouts)

    def _rates(self) -> Rates:
        """Seconds per harness job (the incumbent's runs), per rollout job and per optimizer step
        (the last weight update's, when there was one)."""
        inc = self.state.incumbent
        inc_dir = self.run.gen_dir(inc.generation)
        wall, jobs = 0.0, 0
        for split in ("val", "test", "train"):
            path = inc_dir / f"scores_{split}.json"
            data = read_json(path) if path.is_file() else {}
            if data.get("wall_s") is not None:
                wall, jobs = wall + float(data["wall_s"]), jobs + len(data.get("rows") or [])
        record = next((h for h in self.state.history if h.generation == inc.generation), None)
        if (not jobs or wall <= 0) and record is not None:   # a run dir from before scores files held their time
            wall, jobs = record.wall_s, (record.val_n or len(self.data.val)) + len(self.data.test)
        job_s, source = (wall / jobs, f"job pace of generation {inc.generation}") if jobs and wall > 0 \
            else (0.0, "no job pace measured yet")
        step_s, rollout_s = self.budget.get("train_step_s") or 0.0, job_s
        source += ", step from budget.train_step_s" if step_s else ", training not counted (budget.train_step_s unset)"
        for h in reversed(self.state.history):
            info_path = self.run.gen_dir(h.generation) / "train.json"
            if h.action != "weights" or not info_path.is_file():
                continue
            report = TrainReport.from_json(read_json(info_path))
            if report.steps and report.wall_s:
                step_s = float(report.wall_s) / int(report.steps)
                jobs_rolled = _lines(self.run.gen_dir(h.generation) / "rollouts.jsonl")
                if report.rollout_s and jobs_rolled:
                    rollout_s = float(report.rollout_s) / jobs_rolled
                source += f"; step and rollout pace of generation {h.generation}"
                break
        return Rates(job_s=job_s, rollout_job_s=rollout_s, step_s=float(step_s), source=source)

    def _generation(self, generation: int, started: float) -> GenerationRecord:
        inc = self.state.incumbent
        try:
            decision = self._decide(generation, inc, started)
        except InvalidDecision as exc:
            return GenerationRecord(generation=generation, action="invalid", failed=str(exc))
        record = GenerationRecord(generation=generation, action=decision.action, rationale=decision.rationale,
                                  edit=decision.edit, fallback=decision.fallback, **_agent_cost(decision.cost))
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
                report = trained.report
                adapter, losses = trained.name, report.losses or [None]
                record.algorithm = report.algorithm
                if report.rationale:
                    record.rationale += f" | weights lever: {report.rationale}"
                record.train_loss_first, record.train_loss_last = losses[0], losses[-1]
                record.train_losses = list(report.losses)
                record.train_s = float(report.wall_s)
                if report.skipped:      # e.g. no positive reward: nothing to train on
                    record.failed = report.skipped
                    return record
        except LeverFailed as exc:
            log.warning("generation %d failed: %s", generation, exc)
            record.failed = str(exc)
            return record
        val = self._judge(generation, harness, adapter, inc, record, self._pace_guard(started, rollouts=False))
        record.harness, record.adapter = str(harness), adapter
        scores = self._score(generation, harness, adapter, full=True) if record.kept else {"val": val}
        return self._fill(record, scores)

    def _judge(self, generation: int, harness: Path, adapter: str | None, inc: Incumbent,
               record: GenerationRecord, guard: PaceGuard) -> SplitScores:
        """Score the candidate on val and decide ``record.kept`` by the keep rule (sia/keep.py).
        Paired: in chunks, stopping at the first look that rejects; the decision is replayed
        from the rows on disk, so a resumed run decides the same."""
        ev, record.keep_rule = self.parts.evaluator, self.keep.rule
        if self.keep.rule == "strict":
            val = ev.evaluate(generation, "val", self.data.val, harness, adapter, on_progress=guard)
            record.kept = self.task.scoring.better(val.primary, inc.val)
            return val
        rule, inc_rows = self._paired_rule(inc)
        direction = self.task.scoring.direction

        def judge(rows: list[dict]) -> str | None:
            verdict = rule.replay(paired_gains(rows, inc_rows, direction))
            return verdict.why if verdict.decision == "reject" else None

        val = ev.evaluate(generation, "val", self.data.val, harness, adapter, on_progress=guard,
                          chunk=self.keep.chunk, judge=judge)
        verdict = rule.replay(paired_gains(val.rows, inc_rows, direction))
        record.kept = verdict.decision == "keep"
        record.keep_gain, record.keep_low, record.keep_high = verdict.gain, verdict.low, verdict.high
        record.keep_n, record.keep_why = verdict.n, verdict.why
        return val

    def _paired_rule(self, inc: Incumbent) -> tuple[PairedRule, list[dict]]:
        """The paired rule against the incumbent's per-example val scores, in pool order."""
        path = self.run.gen_dir(inc.generation) / "scores_val.json"
        rows = read_json(path)["rows"]
        by_id = {r["id"]: float(r["score"]) for r in rows}
        missing = [e.id for e in self.data.val if e.id not in by_id]
        if missing:
            raise RuntimeError(f"{path} has no score for {len(missing)} val example(s) (first {missing[0]!r}): "
                               f"the incumbent was not scored on the whole val pool, so a paired decision "
                               f"cannot be made; rerun with feedback.keep=strict or from a fresh run dir")
        scores = [by_id[e.id] for e in self.data.val]
        bounded = self.task.scoring.direction == "max" and all(0.0 <= v <= 1.0 for v in scores)
        return PairedRule(scores, self.task.scoring.direction, self.keep, (0.0, 1.0) if bounded else None), rows

    def _pace_guard(self, started: float, rollouts: bool) -> PaceGuard:
        """Stops a candidate's val run (or a weight update's rollouts, with the val run after
        them) once its own pace says the generation ends too late."""
        jobs_after, what, after = len(self.data.test) + len(self._probe()), "val", "test/probe jobs of a kept one"
        if rollouts:
            jobs_after += len(self.data.val)
            what, after = "rollout", "val/test/probe jobs after them (training not counted)"
        return PaceGuard(budget_s=self.budget.wall_clock_minutes * 60,
                         spent_s=self.state.elapsed_s + time.monotonic() - started, jobs_after=jobs_after,
                         first_wave=self.parts.evaluator.bench.workers, what=what,
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
                self.state.stop_reason = f"the feedback agent stopped: {record.rationale}"
                break
        self.state.status = "done"
        self.run.save_state(self.state)
        return self.state


def _agent_cost(cost: AgentCost) -> dict:
    """Record fields of what an LLM agent's calls cost (nothing for offline agents)."""
    return {"agent_tokens": int(cost.tokens_in + cost.tokens_out), "agent_dollars": float(cost.dollars)}


def _lines(path: Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip()) if path.is_file() else 0


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
