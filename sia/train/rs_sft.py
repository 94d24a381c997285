"""Rejection-sampling SFT (expert iteration): imitate the best sample(s) of each group whose
reward is above the task's threshold; groups without one contribute nothing."""
from __future__ import annotations

from sia.train import sft
from sia.train.samples import Sample, group_by


def select_best(samples: list[Sample], threshold: float, top_k: int) -> list[Sample]:
    """Up to ``top_k`` highest-reward samples per group, each with reward > ``threshold``;
    among equal rewards the earlier sample wins. Duplicate completions in a group count once."""
    if top_k < 1:
        raise ValueError(f"lora.rs_sft.top_k must be >= 1, got {top_k}")
    chosen = []
    for indices in group_by(samples).values():
        ranked = sorted((i for i in indices if samples[i].reward is not None and samples[i].reward > threshold),
                        key=lambda i: -samples[i].reward)
        seen: set[str] = set()
        for i in ranked:
            if samples[i].completion in seen:
                continue
            seen.add(samples[i].completion)
            chosen.append(samples[i])
            if len(seen) == top_k:
                break
    return chosen


class Module(sft.Module):
    """The SFT loss on the selected samples."""


def prepare(samples: list[Sample], settings: dict) -> tuple[list[tuple[Sample, dict]], str]:
    best = select_best(samples, settings["threshold"], int(settings["top_k"]))
    if not best:
        raise ValueError(f"rs_sft: no sample has reward > {settings['threshold']:g}; nothing to imitate "
                         "(lower the threshold or choose another algorithm)")
    groups = len({s.group for s in best})
    return [(s, {}) for s in best], f"{len(best)} best samples from {groups} groups (reward > {settings['threshold']:g})"
