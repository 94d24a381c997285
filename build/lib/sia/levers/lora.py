"""The weights lever: LoRA adapters trained on what the incumbent harness renders.

Gold SFT (``sft``): train examples rendered by the harness's own ``sft_pair`` (the same
prompts as inference) with their gold targets. Every step leaves a file in the generation
folder (``sft_pairs.json``, ``adapter/COMPLETE``, ``train.json``), so a killed run redoes
only the missing step.
"""
from __future__ import annotations

import ctypes
import gc
from pathlib import Path

from sia.agents.decision import AUTO, Decision
from sia.evaluation import Workbench
from sia.harness.contract import Job
from sia.parts import LeverOffer, TrainedAdapter
from sia.run import RunDir, read_json, write_json_atomic
from sia.tasks import Example, Task


class LeverFailed(RuntimeError):
    """A candidate could not be built (no training data, ...): the generation fails and the
    loop goes on with the incumbent."""


def adapter_name(generation: int) -> str:
    return f"gen{generation:03d}"


def release_memory() -> None:
    """Hand the trainer's activations back to the OS: glibc keeps freed arenas otherwise, and
    the engine and harness workers of the next generation need that memory."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


class LoraLever:
    def __init__(self, *, cfg, task: Task, bench: Workbench, run: RunDir, engine, train: list[Example],
                 progress: bool = False):
        self.cfg, self.task, self.bench, self.run, self.engine = cfg, task, bench, run, engine
        self.train_examples, self.progress = train, progress
        self.train_seconds = 0.0

    def offer(self, task: Task, harness_code: str) -> LeverOffer:
        budget = self.cfg.budget
        if not task.supports_gold_sft():
            return LeverOffer(False, f"task {task.name} has no gold targets to train on")
        if not self.train_examples:
            return LeverOffer(False, "the train split is empty")
        return LeverOffer(True, "", algorithms=("sft",), max_steps=int(budget.train_steps),
                          max_examples=int(budget.train_examples))

    def train(self, generation: int, decision: Decision, harness: Path,
              incumbent_adapter: Path | None) -> TrainedAdapter:
        from sia.train.sft import train_sft

        gen_dir = self.run.gen_dir(generation)
        training = dict(decision.training or {})
        algorithm = "sft" if training.get("algorithm") in (AUTO, None) else training["algorithm"]
        pairs = self._sft_pairs(gen_dir, harness, int(training.get("examples", 1)), generation)
        adapter_dir, info_file = gen_dir / "adapter", gen_dir / "train.json"
        if not (adapter_dir / "COMPLETE").is_file():
            result = train_sft(self.cfg.model, self.cfg.lora, self.cfg.cache_dir, pairs,
                               steps=int(training["steps"]), out_dir=adapter_dir, init_adapter=incumbent_adapter,
                               seed=int(self.cfg.seed) + generation, progress=self.progress)
            self.train_seconds += result.wall_s
            release_memory()
            write_json_atomic(info_file, {"algorithm": algorithm, "losses": result.losses, "wall_s": result.wall_s,
                                          "steps": result.steps, "examples": len(pairs)})
        name = adapter_name(generation)
        self.engine.add_adapter(name, str(adapter_dir))
        info = read_json(info_file) if info_file.is_file() else {"algorithm": algorithm}
        return TrainedAdapter(name=name, path=adapter_dir, info=info)

    def _sft_pairs(self, gen_dir: Path, harness: Path, n: int, generation: int) -> list[dict]:
        pairs_file = gen_dir / "sft_pairs.json"
        if not pairs_file.is_file():
            jobs = [Job(id=e.id, inputs=e.inputs, kind="sft_pair", target=e.target)
                    for e in self.train_examples[:n]]
            results = self.bench.run(harness, jobs, None, desc=f"gen {generation} render sft")
            pairs = [r.answer for r in results if r.error is None and isinstance(r.answer, dict)]
            if not pairs:
                first = next((r.error for r in results if r.error), None)
                raise LeverFailed(f"the harness rendered no SFT pair ({first}); a harness needs sft_pair() "
                                  f"for gold SFT")
            write_json_atomic(pairs_file, pairs)
        return read_json(pairs_file)
