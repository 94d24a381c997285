"""The weights lever: LoRA adapters trained on what the incumbent harness does.

- ``sft`` (tasks with gold targets): train examples rendered by the harness's own ``sft_pair``
  (the same prompts as inference) with their gold targets.
- ``rs_sft`` / ``grpo`` / ``eaw`` / ``ppo`` (every task): rollouts of the incumbent on train
  examples, rewarded by the task's evaluator (``sia.levers.rollouts``).
- ``auto``: gold SFT when the answers are mostly unreadable and gold exists; else a rollout,
  and the algorithm its reward statistics call for (``sia.train.choose``), or no training at
  all when no sample is positive.

Every step leaves a file in the generation folder (``sft_pairs.json`` / ``rollouts.jsonl``,
``adapter/COMPLETE``, ``train.json``), so a killed run redoes only the missing step.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from sia.agents.decision import AUTO, Decision
from sia.engine.model_cache import COMPLETE_MARKER
from sia.evaluation import Workbench
from sia.harness.contract import Job
from sia.levers.rollouts import RolloutPlan, collect, rollout_samples, rotating_examples
from sia.parts import MIN_ROLLOUT_EXAMPLES, LeverFailed, LeverOffer, TrainedAdapter, TrainReport
from sia.run import RunDir, read_json, write_json_atomic
from sia.tasks import Example, Task

if TYPE_CHECKING:
    from sia.engine.base import Engine
    from sia.train.samples import RewardStats


def adapter_name(generation: int) -> str:
    return f"gen{generation:03d}"


class LoraLever:
    def __init__(self, *, cfg, task: Task, bench: Workbench, run: RunDir, engine: Engine, train: list[Example],
                 progress: bool = False):
        self.cfg, self.task, self.bench, self.run, self.engine = cfg, task, bench, run, engine
        self.train_examples, self.progress = train, progress

    def offer(self, task: Task, harness_code: str) -> LeverOffer:
        budget = self.cfg.budget
        if len(self.train_examples) < MIN_ROLLOUT_EXAMPLES:
            return LeverOffer(False, f"the train split has {len(self.train_examples)} examples; training needs "
                                     f"at least {MIN_ROLLOUT_EXAMPLES}")
        from sia.train.choose import ALGORITHMS   # sft needs gold targets, the others need rewards only

        algorithms = tuple(a for a in ALGORITHMS if a != "sft" or task.supports_gold_sft())
        lora = self.cfg.lora
        k = int(lora.samples_per_prompt)
        per_example = float(lora.rollout_epochs) * k / int(lora.batch_size) if lora.get("rollout_epochs") else None
        return LeverOffer(True, "", algorithms=algorithms, max_steps=int(budget.train_steps),
                          max_examples=int(budget.train_examples), samples_per_prompt=k,
                          rollout_examples=int(lora.rollout_examples), steps_per_example=per_example,
                          min_rollout_examples=MIN_ROLLOUT_EXAMPLES)

    def train(self, generation: int, decision: Decision, harness: Path, adapter: str | None,
              adapter_dir: Path | None, pace: Callable[[int, int], None] | None = None) -> TrainedAdapter:
        gen_dir = self.run.gen_dir(generation)
        info_file, out_dir = gen_dir / "train.json", gen_dir / "adapter"
        if info_file.is_file():
            report = TrainReport.from_json(read_json(info_file))
            if report.skipped or (out_dir / COMPLETE_MARKER).is_file():
                return self._finish(generation, report, out_dir)
        training = decision.training
        examples = training.examples
        started = time.monotonic()
        algorithm, why, samples, stats = self._choose(generation, decision, harness, adapter, examples, pace)
        rollout_s = time.monotonic() - started   # ~0 when resumed from a saved rollouts.jsonl
        if algorithm is None:   # nothing to reinforce: no training this generation, said why
            report = TrainReport(algorithm=None, skipped=why, rationale=why,
                                 reward_stats=stats.to_json() if stats else None, rollout_s=rollout_s)
            write_json_atomic(info_file, report.to_json())
            return self._finish(generation, report, out_dir)
        if algorithm == "sft":
            samples = self._gold_samples(gen_dir, harness, examples, generation)
        from sia.train.trainer import train_adapter

        try:
            with self.engine.asleep():   # vLLM frees the GPU meanwhile
                result = train_adapter(self.cfg.model, self.cfg.lora, self.cfg.cache_dir, samples,
                                       algorithm=algorithm, steps=training.steps, out_dir=out_dir,
                                       init_adapter=adapter_dir, seed=int(self.cfg.seed) + generation,
                                       progress=self.progress, threshold=stats.threshold if stats else None)
        except ValueError as exc:   # the samples cannot train this algorithm (e.g. no reward spread)
            raise LeverFailed(f"{algorithm} cannot train on this rollout: {exc}") from None
        fit = self._fit(samples)   # after training: samples the algorithm refuses fail without a model
        report = TrainReport(algorithm=algorithm, rationale=why, reward_stats=stats.to_json() if stats else None,
                             rollout_s=rollout_s, signal_share=stats.spread_share if stats else None,
                             too_long=fit, losses=list(result.losses), wall_s=result.wall_s, steps=result.steps,
                             examples=result.examples, tokens_per_s=result.tokens_per_s,
                             peak_rss_mb=result.peak_rss_mb, note=result.note or "")
        write_json_atomic(info_file, report.to_json())
        return self._finish(generation, report, out_dir)

    # ---- steps -----------------------------------------------------------------------
    def _choose(self, generation: int, decision: Decision, harness: Path, adapter: str | None,
                examples: int, pace=None) -> tuple[str | None, str, list, RewardStats | None]:
        from sia.train.choose import choose_algorithm
        from sia.train.samples import reward_stats

        lora = self.cfg.lora
        thresholds = dict(lora.thresholds)    # the choice's keywords (conf/lora/default.yaml)
        forced = decision.training.algorithm
        has_gold = self.task.supports_gold_sft()
        # the incumbent's val digest the decision was made on (the loop stamps it)
        score = decision.digest.score if decision.digest is not None else None
        format_rate = decision.digest.format_rate if decision.digest is not None else 0.0
        if forced == "sft" or forced in (AUTO, None) and has_gold and format_rate >= thresholds["format_failure_sft"]:
            return "sft", (f"gold SFT: {format_rate:.0%} of val answers unreadable" if forced != "sft"
                           else "gold SFT (asked for)"), [], None
        rows = self._rollouts(generation, harness, adapter, examples, pace, score)
        samples = rollout_samples(rows)
        mean = sum(r["reward"] for r in rows) / len(rows) if rows else 0.0
        threshold = lora.get("positive_threshold")
        if threshold is None:   # the task's positive (Task.positive_threshold)
            threshold = self.task.positive_threshold(mean, score)
        stats = reward_stats(samples, threshold=threshold)
        if forced not in (AUTO, None):
            return forced, f"{forced} (asked for); rollout: {stats.describe()}", samples, stats
        name, why = choose_algorithm(stats, has_gold=has_gold, format_rate=format_rate,
                                     prior_shape=self.task.scoring.reward_shape, **thresholds)
        return name, why, samples, stats

    def _fit(self, samples: list) -> dict:
        """How many samples do not fit ``lora.max_seq_len`` (refused by the trainer, never cut)."""
        from sia.engine.common import load_tokenizer
        from sia.engine.model_cache import resolve_model_dir
        from sia.train.batching import too_long

        tokenizer = load_tokenizer(resolve_model_dir(self.cfg.model, self.cfg.cache_dir))
        return too_long(tokenizer, samples, int(self.cfg.lora.max_seq_len))

    def _rollouts(self, generation: int, harness: Path, adapter: str | None, examples: int, pace=None,
                  score: float | None = None) -> list[dict]:
        lora = self.cfg.lora
        k_min = int(lora.samples_per_prompt)
        k = k_min
        if self.task.scoring.reward_shape == "binary" and isinstance(score, (int, float)):
            k = samples_for_signal(float(score), k_min, int(lora.get("max_samples_per_prompt") or k_min))
        # K above samples_per_prompt draws fewer examples: the rollout's harness runs stay the same
        n = max(MIN_ROLLOUT_EXAMPLES, min(examples, int(lora.rollout_examples) * k_min // k))
        plan = RolloutPlan(examples=rotating_examples(self.train_examples, n, int(self.cfg.seed), generation),
                           samples_per_prompt=k,
                           temperature=float(lora.rollout_temperature), seed=int(self.cfg.seed) * 1000 + generation)
        return collect(self.task, self.bench, harness, adapter, plan, self.run.gen_dir(generation) / "rollouts.jsonl",
                       desc=f"gen {generation} rollouts", on_progress=pace, resources_for=self._resources_without)

    def _resources_without(self, held: list[Example]) -> dict:
        """``ctx.resources`` built from the train split less ``held`` (leave-one-out): a harness
        rolled out on an example cannot look up that example's target."""
        ids = {e.id for e in held}
        splits = self.task.load()
        kept = [e for e in splits.train if e.id not in ids]
        return self.task.public_resources(dataclasses.replace(splits, train=kept))

    def _gold_samples(self, gen_dir: Path, harness: Path, n: int, generation: int) -> list:
        from sia.train.samples import samples_from_pairs

        pairs_file = gen_dir / "sft_pairs.json"
        if not pairs_file.is_file():
            jobs = [Job(id=e.id, inputs=e.inputs, kind="sft_pair", target=e.target)
                    for e in self.train_examples[:n]]
            results = self.bench.run(harness, jobs, None, desc=f"gen {generation} render sft")
            pairs = [r.answer for r in results if r.error is None and isinstance(r.answer, dict)]
            if not pairs:
                first = next((r.error for r in results if r.error), None)
                raise LeverFailed(f"the harness rendered no SFT pair ({first}); gold SFT needs the harness's "
                                  f"sft_pair(), reward-driven algorithms do not")
            write_json_atomic(pairs_file, pairs)
        return samples_from_pairs(read_json(pairs_file))

    def _finish(self, generation: int, report: TrainReport, adapter_dir: Path) -> TrainedAdapter:
        if report.skipped:
            return TrainedAdapter(name="", path=adapter_dir, report=report)
        name = adapter_name(generation)
        self.engine.add_adapter(name, str(adapter_dir))
        return TrainedAdapter(name=name, path=adapter_dir, report=report)


def samples_for_signal(p: float, k_min: int, k_max: int, target: float = 0.5) -> int:
    """Samples per prompt for a binary reward with success rate ``p`` (the incumbent's val
    score): the smallest K in [k_min, k_max] whose group holds both outcomes, 1 - p^K - (1-p)^K,
    with probability ``target`` or more (GRPO learns only from such groups; at p = 0.1, K = 4
    gives 34%, K = 7 gives 52%); k_max when none does, k_min when p is 0 or 1 (nothing to size)."""
    if not 0.0 < p < 1.0 or k_max <= k_min:
        return k_min
    for k in range(k_min, k_max + 1):
        if 1.0 - p ** k - (1.0 - p) ** k >= target:
            return k
    return k_max
