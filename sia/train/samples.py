"""Training samples (gold SFT pairs and scored rollouts) and the reward statistics the weights
decision reads."""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass


@dataclass
class Sample:
    """One prompt/completion pair to train on.

    ``prompt`` is either the exact prompt text the engine fed the model (``Engine.chat_template``,
    ending where the reply starts) or a chat (a list of messages), rendered the same way.
    ``reward`` is None for gold SFT targets. ``group`` ties the K samples drawn for one prompt
    (group-relative algorithms compare rewards inside it). ``sampling_temperature`` is what the
    engine sampled with (None or 0: greedy). ``eos``: the completion ended the turn (the model
    emitted end-of-turn), so the end-of-turn token is trained too (text path only).

    A served rollout sample also carries what the engine really did (the trusted served
    record): ``prompt_ids`` and ``completion_ids`` (every sampled token, the ending EOS and a
    stop string's tokens included), trained exactly as they are, with nothing appended;
    ``top_p`` and ``finish`` ("eos" | "stop" | "length"). Without ids (gold SFT pairs, old
    rollout files) the text is tokenised and EOS appended when ``eos``."""
    prompt: str | list[dict]
    completion: str
    reward: float | None = None
    group: str = ""
    sampling_temperature: float | None = None
    eos: bool = True
    example_id: str = ""
    seed: int | None = None
    top_p: float | None = None
    finish: str | None = None
    prompt_ids: list[int] | None = None
    completion_ids: list[int] | None = None

    def __post_init__(self):
        if not isinstance(self.completion, str):
            raise ValueError(f"Sample.completion must be a str, got {type(self.completion).__name__}")
        for key in ("prompt_ids", "completion_ids"):
            ids = getattr(self, key)
            if ids is not None and not (isinstance(ids, list) and all(
                    isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in ids)):
                raise ValueError(f"Sample.{key} must be a list of token ids (ints >= 0) or None")
        if self.finish is not None and self.finish not in ("eos", "stop", "length"):
            raise ValueError(f"Sample.finish must be eos, stop or length, got {self.finish!r}")
        if isinstance(self.prompt, list):
            if not all(isinstance(m, dict) and "role" in m and "content" in m for m in self.prompt):
                raise ValueError("Sample.prompt as a chat must be a list of {'role', 'content'} messages")
        elif not isinstance(self.prompt, str):
            raise ValueError(f"Sample.prompt must be prompt text or a list of messages, got {type(self.prompt).__name__}")
        if self.reward is not None:
            self.reward = float(self.reward)
            if not math.isfinite(self.reward):
                raise ValueError(f"Sample.reward must be finite, got {self.reward} (group {self.group!r})")


@dataclass
class RewardStats:
    n: int                    # scored samples
    groups: int
    per_group: float          # mean samples per group
    mean: float
    zero_share: float         # samples whose reward is exactly 0
    positive_share: float     # samples above the caller's threshold
    n_positive: int
    group_variance: float     # mean within-group variance of the reward
    spread_share: float       # groups whose samples do not all share one reward
    binary: bool              # at most two distinct reward values
    threshold: float

    def describe(self) -> str:
        """The figures a rationale quotes."""
        return (f"{self.n} samples in {self.groups} groups ({self.per_group:.1f}/group), mean reward "
                f"{self.mean:.3f}, {self.zero_share:.0%} at zero, {self.n_positive} positive "
                f"({self.positive_share:.0%}, reward > {self.threshold:g}), within-group variance "
                f"{self.group_variance:.4f}, {self.spread_share:.0%} of groups with spread, "
                f"{'binary' if self.binary else 'graded'} reward")

    def to_json(self) -> dict:
        return asdict(self)


def reward_stats(samples: list[Sample], threshold: float = 0.0) -> RewardStats:
    """Statistics of the scored samples (gold samples without a reward are left out).
    ``threshold`` is the task's notion of positive: reward strictly above it (e.g. the
    incumbent's mean; for kernels the reward of a correct kernel as fast as the incumbent)."""
    scored = [s for s in samples if s.reward is not None]
    by_group: dict[str, list[float]] = defaultdict(list)
    for s in scored:
        by_group[s.group].append(s.reward)
    n = len(scored)
    rewards = [s.reward for s in scored]
    variances = [_variance(v) for v in by_group.values()]
    positive = sum(r > threshold for r in rewards)
    return RewardStats(
        n=n,
        groups=len(by_group),
        per_group=n / len(by_group) if by_group else 0.0,
        mean=sum(rewards) / n if n else 0.0,
        zero_share=sum(r == 0.0 for r in rewards) / n if n else 0.0,
        positive_share=positive / n if n else 0.0,
        n_positive=positive,
        group_variance=sum(variances) / len(variances) if variances else 0.0,
        spread_share=sum(has_spread(v) for v in by_group.values()) / len(by_group) if by_group else 0.0,
        binary=len(set(rewards)) <= 2,
        threshold=float(threshold),
    )


# A group whose rewards' std is below this holds one reward: three equal rewards can have a
# variance of 1e-34 from the mean's rounding, and no group-relative advantage is taken from that.
SPREAD_EPS = 1e-6


def has_spread(values: list[float]) -> bool:
    """Whether a group's rewards differ (the one test the choice, GRPO and the entropic objective share)."""
    return _variance(values) ** 0.5 >= SPREAD_EPS


def _variance(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / len(values)


def indices_by_group(groups: list[str]) -> dict[str, list[int]]:
    """Indices per group label, groups in first-seen order."""
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    return members


def group_by(samples: list[Sample]) -> dict[str, list[int]]:
    """Sample indices per group, groups in first-seen order."""
    return indices_by_group([s.group for s in samples])


def samples_from_pairs(pairs: list) -> list[Sample]:
    """Gold SFT samples of ``{"messages", "completion"}`` pairs (what a harness's ``sft_pair``
    renders), each checked: a pair is untrusted output."""
    samples = []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, dict) or not isinstance(pair.get("messages"), list) \
                or not isinstance(pair.get("completion"), str):
            keys = sorted(pair) if isinstance(pair, dict) else type(pair).__name__
            raise ValueError(f"SFT pair {i} must be {{'messages': [...], 'completion': str}}, got {keys}")
        samples.append(Sample(prompt=pair["messages"], completion=pair["completion"], group=str(i)))
    return samples
