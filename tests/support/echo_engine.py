"""Test-only task-model engine: instant and deterministic, so SLURM jobs of the real loop take
seconds. It answers legal_charge prompts like a tiny nearest-neighbour model:

- the answer of the most similar earlier turn in the prompt (few-shot examples), else
- the answer of the most similar pair it was "trained" on (an adapter made by
  ``EchoLever``: the SFT pairs themselves), else
- a charge name picked by hashing the prompt, in the ``[罪名]...<eoa>`` format.

So harness edits (few-shot) and weight updates both change scores, as with a real model, and the
same prompt always gets the same answer. ``delay_s`` (``model.engine.delay_s=...``) sleeps that
long per request, to stretch a run for the requeue and time-limit tests.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from sia.agents.decision import Decision
from sia.engine.base import Engine, EngineStats, GenRequest, GenResult
from sia.harness.contract import Job
from sia.parts import LeverFailed, LeverOffer, TrainedAdapter, TrainReport
from sia.run import read_json, write_json_atomic, write_text_atomic

CHARGES = ("盗窃", "故意伤害", "诈骗", "危险驾驶", "交通肇事", "抢劫", "寻衅滋事", "走私、贩卖、运输、制造毒品")
PAIRS_FILE = "echo_pairs.json"
MIN_OVERLAP = 0.2


def _cfg_get(cfg, key, default):
    try:
        value = cfg.get(key, default) if cfg is not None else default
    except AttributeError:
        value = getattr(cfg, key, default)
    return default if value is None else value


def _grams(text: str) -> set[str]:
    return {text[i:i + 2] for i in range(len(text) - 1)}


def _similarity(a: set[str], b: set[str]) -> float:
    return len(a & b) / max(1, min(len(a), len(b)))


def _nearest(query: str, pairs: list[tuple[str, str]]) -> str | None:
    """The answer of the pair whose prompt is most like ``query``, compared after the prefix
    they share (the instruction every prompt repeats)."""
    best, best_sim = None, MIN_OVERLAP
    for prompt, answer in pairs:
        cut = len(os.path.commonprefix([query, prompt]))
        sim = _similarity(_grams(query[cut:]), _grams(prompt[cut:]))
        if sim > best_sim:
            best, best_sim = answer, sim
    return best


class EchoEngine(Engine):
    def __init__(self, model_cfg=None, cache_dir=None, delay_s: float = 0.0, salt: str | int = ""):
        self.max_batch_size = int(_cfg_get(model_cfg, "max_batch_size", 16))
        self.delay_s = float(delay_s)
        self.salt = str(salt)           # the run's seed: seeds differ where the answer is a guess
        self.stats = EngineStats()
        self.adapters: dict[str, list[tuple[str, str]]] = {}

    def add_adapter(self, name: str, path: str) -> None:
        pairs = json.loads((Path(path) / PAIRS_FILE).read_text(encoding="utf-8"))
        self.adapters[name] = [(p["messages"][-1]["content"], p["completion"]) for p in pairs]

    def chat_template(self, messages: list[dict], completion: str | None = None) -> str:
        text = "".join(f"<|{m['role']}|>{m['content']}\n" for m in messages)
        return text + ("<|assistant|>" + completion if completion is not None else "")

    def _answer(self, request: GenRequest, adapter: str | None) -> str:
        messages = request.messages
        query = messages[-1]["content"] if messages else ""
        shots = [(messages[i]["content"], messages[i + 1]["content"]) for i in range(len(messages) - 1)
                 if messages[i]["role"] == "user" and messages[i + 1]["role"] == "assistant"]
        found = _nearest(query, shots)
        if found is None and adapter is not None:
            found = _nearest(query, self.adapters.get(adapter, []))
        if found is not None:
            return found
        digest = hashlib.sha256((self.salt + self.chat_template(messages)).encode("utf-8")).digest()
        return f"[罪名]{CHARGES[digest[0] % len(CHARGES)]}<eoa>"

    def generate(self, requests: list[GenRequest], adapter: str | None = None) -> list[GenResult]:
        if adapter is not None and adapter not in self.adapters:
            raise KeyError(f"adapter {adapter!r} was never added; known: {sorted(self.adapters)}")
        started = time.perf_counter()
        if self.delay_s:      # per request, so a run's length does not depend on how calls are batched
            time.sleep(self.delay_s * len(requests))
        results = []
        for request in requests:
            text = self._answer(request, adapter)
            for stop in request.stop or ():
                text = text.split(stop, 1)[0]
            prompt_tokens = len(self.chat_template(request.messages))
            results.append(GenResult(text=text, prompt_tokens=prompt_tokens, completion_tokens=len(text),
                                     token_logprobs=[-0.1] * len(text), finish_reason="stop"))
        elapsed = time.perf_counter() - started
        for r in results:
            r.latency_s = elapsed
        self.stats.requests += len(requests)
        self.stats.batches += 1
        self.stats.prompt_tokens += sum(r.prompt_tokens for r in results)
        self.stats.completion_tokens += sum(r.completion_tokens for r in results)
        self.stats.generate_seconds += elapsed
        return results


class EchoLever:
    """A weights lever (sia.parts.WeightsLever) for the echo engine: the incumbent harness renders
    gold SFT pairs in its sandbox, as for the real LoRA lever; the "adapter" is those pairs (plus
    the ones it was initialised from), written the way a trainer writes one (COMPLETE last)."""

    def __init__(self, *, cfg, task, bench, run, engine, train, progress: bool = False):
        self.cfg, self.task, self.bench, self.run, self.engine, self.train_examples = cfg, task, bench, run, engine, train

    def offer(self, task, harness_code: str) -> LeverOffer:
        if not task.supports_gold_sft() or len(self.train_examples) < 2:
            return LeverOffer(False, "the echo lever needs gold targets and at least 2 train examples")
        return LeverOffer(True, "", algorithms=("sft",), max_steps=int(self.cfg.budget.train_steps),
                          max_examples=int(self.cfg.budget.train_examples))

    def train(self, generation: int, decision: Decision, harness: Path, adapter: str | None,
              adapter_dir: Path | None, pace=None) -> TrainedAdapter:      # no rollouts: no pace to watch
        started = time.perf_counter()
        gen_dir = self.run.gen_dir(generation)
        out, info_file, pairs_file = gen_dir / "adapter", gen_dir / "train.json", gen_dir / "sft_pairs.json"
        training = decision.training
        if not pairs_file.is_file():
            examples = self.train_examples[:training.examples]
            jobs = [Job(id=e.id, inputs=e.inputs, kind="sft_pair", target=e.target) for e in examples]
            results = self.bench.run(harness, jobs, None, desc=f"gen {generation} render sft")
            pairs = [r.answer for r in results if r.error is None and isinstance(r.answer, dict)]
            if not pairs:
                raise LeverFailed(f"the harness rendered no SFT pair ({next((r.error for r in results), None)})")
            write_json_atomic(pairs_file, pairs)
        # COMPLETE last: a SIGTERM (requeue) during any earlier write leaves no COMPLETE, so the
        # resumed job redoes the whole step instead of finding an adapter without its train.json
        if not ((out / "COMPLETE").is_file() and info_file.is_file()):
            merged = read_json(pairs_file)
            if adapter_dir is not None and (Path(adapter_dir) / PAIRS_FILE).is_file():
                merged = read_json(Path(adapter_dir) / PAIRS_FILE) + merged
            write_json_atomic(out / PAIRS_FILE, merged)
            steps = training.steps
            report = TrainReport(algorithm="sft", losses=[round(2.0 / (1 + i), 4) for i in range(steps)],
                                 wall_s=time.perf_counter() - started, steps=steps, examples=len(merged))
            write_json_atomic(info_file, report.to_json())
            write_text_atomic(out / "COMPLETE", "echo\n")
        name = f"gen{generation:03d}"
        self.engine.add_adapter(name, str(out))
        return TrainedAdapter(name=name, path=out, report=TrainReport.from_json(read_json(info_file)))
