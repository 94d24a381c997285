"""Batched vs one-at-a-time greedy generation on the embedded model.

    python benchmarks/engine_throughput.py [--prompts 32 --max-tokens 32] [--cache-dir DIR]

Prints completion tokens per second for both ways and their ratio (the engine's batching
should give at least 3x on CPU), and checks both ways produced the same texts.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sia.engine import build_engine  # noqa: E402
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--cache-dir", default=os.environ.get("SIA_CACHE_DIR", str(Path.home() / ".cache" / "sia")))
    args = parser.parse_args()

    model_cfg = OmegaConf.load(REPO / "conf" / "model" / "smollm2_135m.yaml")
    engine, load_s = timed(lambda: build_engine(model_cfg, args.cache_dir))
    requests = [GenRequest(messages=[{"role": "user", "content": p}], max_tokens=args.max_tokens)
                for p in prompts(args.prompts)]
    engine.generate(requests[:1])  # warm-up: first-call allocations are not throughput

    batched, batched_s = timed(lambda: engine.generate(requests))
    single, single_s = timed(lambda: [engine.generate([r])[0] for r in requests])

    batched_tokens = sum(r.completion_tokens for r in batched)
    single_tokens = sum(r.completion_tokens for r in single)
    batched_rate, single_rate = batched_tokens / batched_s, single_tokens / single_s
    same = sum(a.text == b.text for a, b in zip(batched, single))
    print(f"model load {load_s:.1f}s; {args.prompts} prompts x {args.max_tokens} max tokens, "
          f"max_batch_size={engine.max_batch_size}")
    print(f"batched:        {batched_tokens} tokens in {batched_s:6.1f}s = {batched_rate:6.1f} tokens/s")
    print(f"one at a time:  {single_tokens} tokens in {single_s:6.1f}s = {single_rate:6.1f} tokens/s")
    print(f"speed-up: {batched_rate / single_rate:.2f}x; identical texts: {same}/{len(requests)}")


if __name__ == "__main__":
    main()
