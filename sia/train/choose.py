"""Which training algorithm fits what the rollout shows (not the task's name).

The rules, in order (issue 9): gold targets and poor format-following -> ``sft``; no positive
sample -> no training (or ``sft`` on gold targets when the task has them); no group with two
different rewards -> ``rs_sft``, whatever the reward's shape (every group-relative advantage,
grpo's and eaw's leave-one-out one, is 0 then, and a value baseline, ppo, would only learn
which prompts are easy; imitating the samples above the threshold still reinforces what
worked); mostly zero reward with a few wins -> ``eaw``; otherwise -> ``grpo``. ``prior_shape``
(``Scoring.reward_shape``) stands in for the shape only when the rollout is too small to tell.
"""
from __future__ import annotations

from sia.train.samples import RewardStats

ALGORITHMS = ("sft", "rs_sft", "grpo", "eaw", "ppo")
SHAPES = ("binary", "graded", "sparse")

MIN_PER_GROUP = 2          # fewer samples per group (or fewer groups than min_groups): too small to read the shape


def choose_algorithm(stats: RewardStats, *, has_gold: bool, format_rate: float, prior_shape: str,
                     format_failure_sft: float, sparse_zero_share: float, min_groups: int) -> tuple[str | None, str]:
    """(algorithm or None for "do not train", rationale quoting the statistics).

    ``format_rate`` is the share of answers the evaluator could not read (as
    ``sia.agents.digest.Digest.format_rate``): high means poor format-following. The keyword
    thresholds are ``lora.thresholds`` (pass ``**cfg.lora.thresholds``; their values live in
    conf/lora/default.yaml only)."""
    if prior_shape not in SHAPES:
        raise ValueError(f"prior_shape must be one of {SHAPES}, got {prior_shape!r} (Scoring.reward_shape)")
    if not 0.0 <= format_rate <= 1.0:
        raise ValueError(f"format_rate is a share of answers in [0, 1], got {format_rate}")
    figures = stats.describe() if stats.n else "no scored rollout samples"
    if has_gold and format_rate >= format_failure_sft:
        return "sft", (f"{format_rate:.0%} of answers unreadable (>= {format_failure_sft:.0%}) and the task has "
                       f"gold targets: gold SFT teaches the format first; rollout: {figures}")
    if stats.n_positive == 0:
        if has_gold:
            return "sft", f"no positive rollout sample to learn from ({figures}); gold SFT instead"
        return None, f"no positive sample at all ({figures}): nothing to reinforce, no training this generation"

    too_small = stats.groups < min_groups or stats.per_group < MIN_PER_GROUP
    if too_small:
        shape = prior_shape
        how = (f"rollout too small to read the reward's shape ({stats.groups} groups < {min_groups} or "
               f"{stats.per_group:.1f} samples/group < {MIN_PER_GROUP}): task prior '{prior_shape}'")
    else:
        shape = _observed_shape(stats, sparse_zero_share)
        how = f"observed shape '{shape}'"

    if stats.spread_share == 0:
        # Every group is uniform: group-relative advantages (grpo, eaw) are all zero, and a
        # value baseline (ppo) would learn which prompts are easy, not which replies are better.
        name = "rs_sft"
        why = (f"no group holds two different rewards ({shape} reward), so group-relative advantages vanish; "
               f"rejection-sampling SFT imitates the {stats.n_positive} samples above the threshold")
    elif shape == "sparse":
        name, why = "eaw", (f"{stats.zero_share:.0%} of samples at zero with {stats.n_positive} positive: "
                            "the entropic objective puts the update on the rare wins")
    else:
        name, why = "grpo", (f"{stats.spread_share:.0%} of groups hold different rewards (variance "
                             f"{stats.group_variance:.4f}): group-relative advantages carry the signal")
    return name, f"{name}: {how}; {why}; {figures}"


def _observed_shape(stats: RewardStats, sparse_zero_share: float) -> str:
    if stats.zero_share > sparse_zero_share:
        return "sparse"
    return "binary" if stats.binary else "graded"
