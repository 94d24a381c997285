"""Offline feedback agents: choose the next lever from trajectory statistics.

- ``RulesFeedback``: the full offline feedback. Harness errors or unreadable answers are the
  harness's fault, so it picks a library edit that treats that symptom; if such an edit was
  already rejected on the current incumbent, it tries an accuracy edit (worked examples show
  the format too) before the first training, then trains the weights. Readable-but-wrong
  answers mean the model lacks the knowledge, so it updates the weights (unless the train
  probe shows the model fits train far better than val: more training would only overfit).
  After a kept weight update it first tries one untried accuracy edit, the cheaper lever.
  It never trains for a harness that asked the model nothing on val: no weights change its answers.
  When a kept harness edit still leaves val below ``baseline_gap`` of the best non-LLM
  baseline's val, the model-side edits have had their chance and the model adds less than the
  baseline alone: it tries the edits that bring a baseline's method into the harness first
  (``HarnessEdit.baseline_use``), the most complete one first (replace, ensemble, fallback);
  later edits may let the model back in where that raises val.
- ``HarnessOnlyFeedback`` / ``WeightsOnlyFeedback`` / ``AlternateFeedback``: the ablations, the same
  rules with a lever off (harness_only: no weights; weights_only: no harness edits) or one
  lever per turn (alternate), so an ablation differs from ``rules`` only in the levers allowed:
  harness_only's harness choices are the rules' until the rules' first weights decision.

Each is built from its ``conf/feedback/<name>.yaml`` by ``hydra.utils.instantiate``.
"""
from __future__ import annotations

from sia.agents.context import FeedbackContext
from sia.agents.decision import Decision, TrainingPlan
from sia.agents.digest import Digest
from sia.keep import KeepSettings
from sia.tasks import HarnessEdit

SYMPTOM_ORDER = ("errors", "format", "accuracy", "variance")
BASELINE_USE_ORDER = ("replace", "ensemble", "fallback")   # far below a baseline: adopt it most fully first
MAX_FAILED_WEIGHT_UPDATES = 2
LEVERS_BOTH = frozenset({"harness", "weights"})


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


class OfflineFeedback:
    """Shared bookkeeping of the offline feedback agents (edits tried, failed updates, thresholds)."""

    wants_train_probe = False

    def __init__(self, name: str, abstain_threshold: float = 0.15, error_threshold: float = 0.10,
                 underfit_gap: float = 0.10, baseline_gap: float = 0.5, algorithm: str = "auto",
                 keep: str = "paired", keep_alpha: float = 0.05, keep_margin: float = 2.0, keep_chunk: int = 16):
        self.name = name
        # the keep rule's settings (sia/keep.py): the loop reads them off the feedback it runs
        self.keep_settings = KeepSettings(rule=keep, alpha=keep_alpha, margin=keep_margin, chunk=keep_chunk)
        self.abstain_threshold, self.error_threshold = abstain_threshold, error_threshold
        self.underfit_gap, self.baseline_gap = underfit_gap, baseline_gap
        self.algorithm = algorithm            # lora.algorithm: auto lets the lever choose

    def decide(self, ctx: FeedbackContext) -> Decision:
        raise NotImplementedError

    # ---- helpers ---------------------------------------------------------------------
    @staticmethod
    def applicable_edit(ctx: FeedbackContext, symptoms: tuple[str, ...]) -> tuple[HarnessEdit, str] | None:
        return OfflineFeedback._first_applicable(ctx, [e for s in symptoms for e in ctx.edits if e.addresses == s])

    @staticmethod
    def baseline_edit(ctx: FeedbackContext) -> tuple[HarnessEdit, str] | None:
        return OfflineFeedback._first_applicable(
            ctx, [e for use in BASELINE_USE_ORDER for e in ctx.edits if e.baseline_use == use])

    @staticmethod
    def _first_applicable(ctx: FeedbackContext, edits: list[HarnessEdit]) -> tuple[HarnessEdit, str] | None:
        tried = {h.edit for h in ctx.history if h.edit}
        for edit in edits:
            if edit.name not in tried:
                new_code = edit.apply(ctx.harness_code)
                if new_code is not None:
                    return edit, new_code
        return None

    @staticmethod
    def harness(edit: HarnessEdit, code: str, why: str, d: Digest) -> Decision:
        return Decision(action="harness", rationale=f"{why} -> edit '{edit.name}': {edit.description}",
                        harness_code=code, edit=edit.name, digest=d)

    def weights(self, ctx: FeedbackContext, why: str) -> Decision:
        return Decision(action="weights", rationale=why,
                        training=TrainingPlan(algorithm=self.algorithm, steps=ctx.offer.max_steps,
                                              examples=ctx.offer.max_examples),
                        digest=ctx.digest)

    @staticmethod
    def stop(why: str, d: Digest) -> Decision:
        return Decision(action="stop", rationale=why, digest=d)

    @staticmethod
    def failed_weight_updates(ctx: FeedbackContext) -> int:
        count = 0
        for h in reversed(ctx.history):
            if h.action == "weights":
                if h.kept:
                    break
                count += 1
        return count

    def weights_possible(self, ctx: FeedbackContext) -> bool:
        return ctx.offer.available and self.failed_weight_updates(ctx) < MAX_FAILED_WEIGHT_UPDATES

    def far_below_baselines(self, ctx: FeedbackContext) -> str:
        """Why the incumbent should borrow a baseline's method, or '' (no baselines, no kept
        harness edit yet, or val within ``baseline_gap`` of the best baseline)."""
        if not ctx.baselines or not any(h.action == "harness" and h.kept for h in ctx.history):
            return ""
        name, best = max(ctx.baselines.items(), key=lambda kv: kv[1])
        if best <= 0 or ctx.digest.score >= self.baseline_gap * best:
            return ""
        return (f"after a kept harness edit val is {ctx.digest.score:.3f}, below {_pct(self.baseline_gap)} of the "
                f"best non-LLM baseline's val ({name}: {best:.3f}): bring a baseline's method into the harness")

    @staticmethod
    def edit_rejected_since_last_kept(ctx: FeedbackContext, symptom: str) -> bool:
        addresses = {e.name: e.addresses for e in ctx.edits}
        for h in reversed(ctx.history):
            if h.kept:
                return False
            if h.action == "harness" and addresses.get(h.edit) == symptom:
                return True
        return False


class RulesFeedback(OfflineFeedback):
    """The rules; an ablation is the same rules with a lever off (``levers``): where the rules
    would pull the lever that is off, they take the next choice they would make without it."""

    wants_train_probe = True
    levers = LEVERS_BOTH

    def decide(self, ctx: FeedbackContext) -> Decision:
        return self.decide_with(ctx, self.levers)

    def decide_with(self, ctx: FeedbackContext, levers: frozenset[str]) -> Decision:
        """The rules' decision with only ``levers`` (harness, weights) allowed."""
        decision = self._rules(ctx, "weights" in levers)
        if decision.action != "harness" or "harness" in levers:
            return decision
        if self.weights_possible(ctx) and ctx.digest.tokens > 0:
            return self.weights(ctx, f"the rules would edit the harness ({decision.rationale}); the harness lever "
                                     f"is off: train instead")
        why = ctx.offer.reason or ("the incumbent harness asks the model nothing" if ctx.digest.tokens <= 0
                                   else "two updates in a row were rejected")
        return self.stop(f"the harness lever is off and weight updates are unavailable or stopped improving val "
                         f"({why})", ctx.digest)

    def _rules(self, ctx: FeedbackContext, weights_on: bool) -> Decision:
        d = ctx.digest
        # Overfitting is a trained adapter's: with the base weights a train/val gap is the split's
        # (e.g. held-out query shapes that retrieval cannot reach), and training may close it.
        trained = any(h.action == "weights" and h.kept for h in ctx.history)
        overfit = trained and d.train_score is not None and d.train_score - d.score > self.underfit_gap
        # A harness that asked the model nothing on val (e.g. it answers a retrieval vote): new
        # weights cannot change one of its answers.
        asks_model = d.tokens > 0
        can_train = weights_on and self.weights_possible(ctx) and not overfit and asks_model
        last = ctx.history[-1] if ctx.history else None
        if d.error_rate >= self.error_threshold:
            found = self.applicable_edit(ctx, ("errors",))
            if found:
                return self.harness(*found, f"{_pct(d.error_rate)} of val examples fail in the harness "
                                            f"({d.error_kinds})", d)
        behind = self.far_below_baselines(ctx)
        if behind:
            found = self.baseline_edit(ctx)
            if found:
                return self.harness(*found, behind, d)
        if d.format_rate >= self.abstain_threshold:
            format_edit_failed = self.edit_rejected_since_last_kept(ctx, "format")
            if (format_edit_failed and not any(h.action == "weights" for h in ctx.history)
                    and not self.edit_rejected_since_last_kept(ctx, "accuracy")):
                found = self.applicable_edit(ctx, ("accuracy",))
                if found:   # cheap lever first (once): worked examples also show the format
                    return self.harness(*found, f"{_pct(d.format_rate)} of val answers are unreadable and a "
                                                f"format edit did not help; try an accuracy edit before training", d)
            if can_train and format_edit_failed:
                return self.weights(ctx, f"{_pct(d.format_rate)} of val answers are unreadable and a format edit "
                                         f"did not help: the model cannot follow the format, so train it on "
                                         f"the harness's own answer format")
            found = self.applicable_edit(ctx, ("format",))
            if found:
                return self.harness(*found, f"{_pct(d.format_rate)} of val answers are unreadable or abstain", d)
        if last is not None and last.action == "weights" and last.kept:
            found = self.applicable_edit(ctx, ("accuracy",))
            if found:   # an edit costs one evaluation, training costs more
                return self.harness(*found, f"new weights kept; readable answers score "
                                            f"{_pct(d.wellformed_accuracy)}: try an untried accuracy edit "
                                            f"before more training", d)
        if can_train:
            probe = "n/a" if d.train_score is None else _pct(d.train_score)
            return self.weights(ctx, f"{_pct(1 - d.format_rate - d.error_rate)} of val answers are readable and "
                                     f"they score {_pct(d.wellformed_accuracy)} on average ({_pct(d.wrong_rate)} "
                                     f"below full credit); train probe {probe} is not above val {_pct(d.score)} "
                                     f"by more than {_pct(self.underfit_gap)}: the model lacks task knowledge, "
                                     f"train it")
        found = self.applicable_edit(ctx, ("accuracy", "variance", "format", "errors"))
        if found:
            why = ("the model fits train much better than val (overfitting); improve the harness instead"
                   if overfit else "weights cannot improve further here; try the next harness edit")
            return self.harness(*found, why, d)
        if weights_on and self.weights_possible(ctx) and asks_model:
            return self.weights(ctx, "no harness edit left to try; keep training the adapter")
        why = ("the weights lever is off" if not weights_on else ctx.offer.reason) or \
            ("the incumbent harness asks the model nothing" if not asks_model else "two updates in a row were rejected")
        return self.stop(f"no applicable harness edit left and weight updates are unavailable or stopped "
                         f"improving val ({why})", d)


class HarnessOnlyFeedback(RulesFeedback):
    """Ablation: the rules with the weights lever off (where they would train, they take their
    next harness edit), so its harness choices are the rules' until their first weights one."""

    levers = frozenset({"harness"})


class WeightsOnlyFeedback(RulesFeedback):
    """Ablation: the rules with the harness lever off (where they would edit, they train)."""

    levers = frozenset({"weights"})


class AlternateFeedback(RulesFeedback):
    """Ablation: the rules with one lever per turn, harness first; a turn whose lever has nothing
    left to do takes the other one."""

    def decide(self, ctx: FeedbackContext) -> Decision:
        last = next((h.action for h in reversed(ctx.history) if h.action in ("harness", "weights")), "weights")
        turn, other = ("harness", "weights") if last == "weights" else ("weights", "harness")
        decision = self.decide_with(ctx, frozenset({turn}))
        if decision.action == "stop":
            decision = self.decide_with(ctx, frozenset({other}))
        if decision.action != "stop":
            decision.rationale = f"alternate ablation ({turn} turn): {decision.rationale}"
        return decision
