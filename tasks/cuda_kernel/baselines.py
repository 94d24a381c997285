"""Non-LLM baselines of cuda_kernel: the two hand-written submissions the task ships,
judged exactly as a harness's answers are (the answer is the module source).

- ``eager_reference``       ``reference.py``: the PyTorch eager TriMul (speed-up 1 by definition);
- ``fused_channel_first``   ``fast_baseline.py``: the fused, channel-first rewrite.
"""
from __future__ import annotations

from pathlib import Path

from sia.tasks import Baseline, Example, Splits

HERE = Path(__file__).resolve().parent
SOURCES = {"eager_reference": "reference.py", "fused_channel_first": "fast_baseline.py"}
DESCRIPTIONS = {
    "eager_reference": "The PyTorch eager reference (reference.py): speed-up 1 when correct.",
    "fused_channel_first": "The fused, channel-first rewrite the task ships (fast_baseline.py).",
}


def source(name: str) -> str:
    return (HERE / SOURCES[name]).read_text(encoding="utf-8")


def baselines() -> list[Baseline]:
    def make(name: str):
        def predict(splits: Splits, examples: list[Example]) -> list[str]:
            text = source(name)
            return [text for _ in examples]
        return predict

    return [Baseline(name, DESCRIPTIONS[name], make(name)) for name in SOURCES]
