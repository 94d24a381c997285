"""The loop on cuda_kernel with recorded feedback: scripted completions stand in for a capable
model (a slow correct kernel first, then a broken one, a hack, a faster correct one). Keep-best
must accept only the faster correct kernel."""
from __future__ import annotations

import json

from sia.agents.decision import Decision
from sia.assemble import assemble
from sia.engine.base import EngineStats, GenResult
from sia.harness.pool import HarnessPool
from sia.parts import Feedback
from sia.run import RunDir, new_state
from sia.tasks import load_task
from sia.tracking import Tracker

from test_cuda_kernel import BENCH, CAUCHY, MASKED, completion, needs_sandbox, small_cfg

SCRIPT = {0: "slow_correct", 1: "broken", 2: "hack", 3: "fast_correct"}


class RecordedModel:
    """Answers every request with the recorded completion of the current generation."""

    max_batch_size = 8

    def __init__(self):
        self.stats = EngineStats()
        self.current = SCRIPT[0]

    def add_adapter(self, name, path):
        raise AssertionError("no weight update in this scripted run")

    def generate(self, requests, adapter=None):
        text = completion(self.current)
        return [GenResult(text=text, prompt_tokens=100, completion_tokens=len(text) // 4, finish_reason="stop")
                for _ in requests]


@needs_sandbox
def test_recorded_feedback_accepts_only_the_faster_correct_kernel(compose_cfg, tmp_path):
    cfg = compose_cfg("task=cuda_kernel", "feedback=harness_only", "logger=none", "quiet=true",
                      "budget.generations=3", "budget.val_examples=1", "budget.test_examples=1",
                      "budget.wall_clock_minutes=60")   # the judge, not the budget, is under test
    task = load_task("cuda_kernel", small_cfg(correctness=(MASKED, CAUCHY), benchmark=(BENCH,), repeats=3))
    model = RecordedModel()
    seed = task.seed_harness()

    class RecordedFeedback(Feedback):   # the protocol's decide_with: no other choice than its own
        name = "recorded"
        wants_train_probe = False

        def decide(self, ctx):
            model.current = SCRIPT[ctx.generation]
            # A new harness file per generation (same code), so each candidate is evaluated afresh.
            return Decision(action="harness", rationale=f"recorded: {model.current}",
                            harness_code=seed + f"\n# recorded completion: {model.current}\n", edit=model.current)

    run = RunDir(tmp_path / "run")
    with HarnessPool(model, workers=2, example_timeout_s=60, memory_mb=1024, scratch_root=str(tmp_path / "s")) as pool:
        loop = assemble(cfg, run, task, model, pool, Tracker(cfg, run.path, None, False), new_state(),
                        feedback=RecordedFeedback())
        final = loop.run_all()

    history = final.history
    assert [h.kept for h in history] == [True, False, False, True]
    assert final.incumbent.generation == 3
    reasons = {g: json.loads((run.path / f"gen_{g:03d}" / "scores_val.json").read_text())["rows"][0]["reason"]
               for g in (1, 2)}
    assert reasons[1].startswith("compile error") and reasons[2].startswith("wrong result")
    assert history[3].val > history[0].val > 0
    assert history[3].test is not None
