"""Offline feedback policies: choose the next lever from trajectory statistics.

- ``rules``: the full policy. Harness errors or unreadable answers are the harness's fault,
  so it picks a library edit that treats that symptom; if such an edit was already rejected
  on the current incumbent, it tries an accuracy edit (worked examples show the format too)
  before the first training, then SFT on the harness's own answer format teaches it. Readable-but-wrong answers mean the model lacks the knowledge, so
  it updates the weights (unless the train probe shows the model fits train far better than
  val: more training would only overfit). After a kept weight update it first tries one
  untried accuracy edit on the new weights, the cheaper lever.
- ``harness_only`` / ``weights_only`` / ``alternate``: the ablations, from the same code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sia.agents.decision import Decision
from sia.agents.digest import Digest
from sia.tasks import HarnessEdit

# Order in which symptoms are treated when several are present.
SYMPTOM_ORDER = ("errors", "format", "accuracy", "variance")
MAX_FAILED_WEIGHT_UPDATES = 2


@dataclass
class FeedbackContext:
    generation: int
    harness_code: str                 # the incumbent harness
    digest: Digest                    # of the incumbent on val (+ train probe)
    history: list[dict]               # records of finished generations
    edits: list[HarnessEdit]          # the task's edit library
    weights_available: bool           # gold SFT possible with this task and harness
    train_steps: int
    train_examples: int
    settings: Any = None              # the feedback config group
    notes: dict = field(default_factory=dict)


def _tried_edits(history: list[dict]) -> set[str]:
    return {h["edit"] for h in history if h.get("edit")}


def _failed_weight_updates_since_last_kept(history: list[dict]) -> int:
    count = 0
    for h in reversed(history):
        if h.get("action") == "weights":
            if h.get("kept"):
                break
            count += 1
    return count


def _applicable_edit(ctx: FeedbackContext, symptoms: tuple[str, ...]) -> tuple[HarnessEdit, str] | None:
    tried = _tried_edits(ctx.history)
    for symptom in symptoms:
        for edit in ctx.edits:
            if edit.addresses != symptom or edit.name in tried:
                continue
            new_code = edit.apply(ctx.harness_code)
            if new_code is not None:
                return edit, new_code
    return None


def _harness_decision(edit: HarnessEdit, code: str, why: str, d: Digest) -> Decision:
    return Decision(action="harness", rationale=f"{why} -> edit '{edit.name}': {edit.description}",
                    harness_code=code, edit=edit.name, stats=d.to_json())


def _weights_decision(ctx: FeedbackContext, why: str) -> Decision:
    return Decision(action="weights", rationale=why,
                    training={"algorithm": "sft", "data": "gold", "steps": ctx.train_steps,
                              "examples": ctx.train_examples},
                    stats=ctx.digest.to_json())


def _stop(why: str, d: Digest) -> Decision:
    return Decision(action="stop", rationale=why, stats=d.to_json())


def _weights_possible(ctx: FeedbackContext) -> bool:
    return ctx.weights_available and _failed_weight_updates_since_last_kept(ctx.history) < MAX_FAILED_WEIGHT_UPDATES


def _edit_rejected_since_last_kept(ctx: FeedbackContext, symptom: str) -> bool:
    """Whether an edit for ``symptom`` was tried on the current incumbent and not kept."""
    addresses = {e.name: e.addresses for e in ctx.edits}
    for h in reversed(ctx.history):
        if h.get("kept"):
            return False
        if h.get("action") == "harness" and addresses.get(h.get("edit")) == symptom:
            return True
    return False


def rules_policy(ctx: FeedbackContext) -> Decision:
    d, s = ctx.digest, ctx.settings
    pct = lambda x: f"{100 * x:.0f}%"  # noqa: E731
    overfit = d.train_score is not None and d.train_score - d.score > s.underfit_gap
    can_train = _weights_possible(ctx) and not overfit
    last = ctx.history[-1] if ctx.history else {}
    if d.error_rate >= s.error_threshold:
        found = _applicable_edit(ctx, ("errors",))
        if found:
            return _harness_decision(*found, f"{pct(d.error_rate)} of val examples fail in the harness "
                                             f"({d.error_kinds})", d)
    if d.format_rate >= s.abstain_threshold:
        format_edit_failed = _edit_rejected_since_last_kept(ctx, "format")
        if format_edit_failed and not any(h.get("action") == "weights" for h in ctx.history):
            # Cheap lever first: worked examples also show the format, for one evaluation.
            found = _applicable_edit(ctx, ("accuracy",))
            if found:
                return _harness_decision(*found, f"{pct(d.format_rate)} of val answers are unreadable and a format "
                                                 f"edit did not help; try an accuracy edit before training", d)
        if can_train and format_edit_failed:
            return _weights_decision(
                ctx, f"{pct(d.format_rate)} of val answers are unreadable and a format edit did not help: "
                     f"the model cannot follow the format, so teach it by SFT on the harness's own answer format")
        found = _applicable_edit(ctx, ("format",))
        if found:
            return _harness_decision(*found, f"{pct(d.format_rate)} of val answers are unreadable or abstain", d)
    if last.get("action") == "weights" and last.get("kept"):
        # Cheap lever on the new weights: an edit costs one evaluation, training costs more.
        found = _applicable_edit(ctx, ("accuracy",))
        if found:
            return _harness_decision(*found, f"new weights kept; answers are {pct(d.wellformed_accuracy)} right "
                                             f"when readable: try an untried accuracy edit before more training", d)
    if can_train:
        return _weights_decision(
            ctx, f"answers are well-formed ({pct(1 - d.format_rate)}) but only {pct(d.wellformed_accuracy)} right; "
                 f"train probe {('n/a' if d.train_score is None else pct(d.train_score))} is not above val "
                 f"{pct(d.score)} by more than {pct(s.underfit_gap)}: the model lacks task knowledge, train it")
    found = _applicable_edit(ctx, ("accuracy", "variance", "format", "errors"))
    if found:
        why = ("the model fits train much better than val (overfitting); improve the harness instead"
               if overfit else "weights cannot improve further here; try the next harness edit")
        return _harness_decision(*found, why, d)
    if _weights_possible(ctx):
        return _weights_decision(ctx, "no harness edit left to try; keep training the adapter")
    return _stop("no applicable harness edit left and weight updates are unavailable or stopped improving val", d)


def harness_only_policy(ctx: FeedbackContext) -> Decision:
    d = ctx.digest
    symptoms = SYMPTOM_ORDER
    if d.error_rate < ctx.settings.error_threshold:
        symptoms = ("format", "accuracy", "variance", "errors") if d.format_rate >= ctx.settings.abstain_threshold \
            else ("accuracy", "variance", "format", "errors")
    found = _applicable_edit(ctx, symptoms)
    if found:
        return _harness_decision(*found, "harness-only ablation: next edit for the strongest symptom", d)
    return _stop("harness-only ablation: no harness edit left", d)


def weights_only_policy(ctx: FeedbackContext) -> Decision:
    if ctx.weights_available:
        return _weights_decision(ctx, "weights-only ablation: update the adapter every generation")
    return _stop("weights-only ablation: this task/harness offers no training targets", ctx.digest)


def alternate_policy(ctx: FeedbackContext) -> Decision:
    last = next((h["action"] for h in reversed(ctx.history) if h.get("action") in ("harness", "weights")), "weights")
    if last == "weights":
        decision = harness_only_policy(ctx)
        if decision.action == "harness":
            decision.rationale = "alternate ablation (harness turn): " + decision.rationale
            return decision
    if ctx.weights_available:
        return _weights_decision(ctx, "alternate ablation (weights turn)")
    return harness_only_policy(ctx)


POLICIES = {
    "rules": rules_policy,
    "harness_only": harness_only_policy,
    "weights_only": weights_only_policy,
    "alternate": alternate_policy,
}


def decide(policy: str, ctx: FeedbackContext) -> Decision:
    return POLICIES[policy](ctx).validate()
