"""Offline feedback agents: the lever each symptom calls for, and decision validation."""
from __future__ import annotations

import pytest

from sia.agents.decision import Decision, InvalidDecision, TrainingPlan
from sia.agents.context import FeedbackContext
from sia.agents.digest import digest
from sia.agents.rules import AlternateFeedback, HarnessOnlyFeedback, RulesFeedback, WeightsOnlyFeedback
from sia.harness.options import read_options, with_options
from sia.parts import LeverOffer
from sia.records import GenerationRecord
from sia.tasks import HarnessEdit

HARNESS = '''"""A harness."""
# knobs
OPTIONS = {"labels": False, "few_shot": 0}


def solve(inputs, ctx):
    return "x"


def sft_pair(inputs, target, ctx):
    return {"messages": [], "completion": target}
'''
ARMS = {cls.__name__: cls for cls in (RulesFeedback, HarnessOnlyFeedback, WeightsOnlyFeedback, AlternateFeedback)}
NAMES = {"rules": "RulesFeedback", "harness_only": "HarnessOnlyFeedback", "weights_only": "WeightsOnlyFeedback",
         "alternate": "AlternateFeedback"}


def decide(name, ctx):
    feedback = ARMS[NAMES[name]](name=name, abstain_threshold=0.15, error_threshold=0.1, underfit_gap=0.1)
    return feedback.decide(ctx).validate(ctx.offer.algorithms)
EDITS = [
    HarnessEdit("label_list", "format", "list labels", lambda s: with_options(s, labels=True)),
    HarnessEdit("few_shot", "accuracy", "add examples", lambda s: with_options(s, few_shot=3)),
]


def _rows(n_ok=0, n_wrong=0, n_format=0, n_error=0, n_partial=0, tokens=40):
    """Val score rows; each example's model calls used ``tokens`` (0: the harness asked nothing)."""
    rows = [{"id": f"ok{i}", "score": 1.0, "failure": None, "reason": ""} for i in range(n_ok)]
    rows += [{"id": f"w{i}", "score": 0.0, "failure": "wrong", "reason": "a wrong charge"} for i in range(n_wrong)]
    rows += [{"id": f"p{i}", "score": 0.5, "failure": "wrong", "reason": "one of two charges (missing one)"}
             for i in range(n_partial)]
    rows += [{"id": f"f{i}", "score": 0.0, "failure": "format", "reason": "no valid charge name"}
             for i in range(n_format)]
    rows += [{"id": f"e{i}", "score": 0.0, "failure": "error", "reason": "x",
              "error": {"kind": "timeout", "message": "t"}} for i in range(n_error)]
    return [dict(row, tokens=tokens) for row in rows]


def _history(*items):
    return [GenerationRecord(generation=i, **item) for i, item in enumerate(items)]


def _ctx(rows, history=(), train_rows=None, weights=True, code=HARNESS):
    offer = LeverOffer(True, "", algorithms=("sft",), max_steps=5, max_examples=10) if weights \
        else LeverOffer(False, "no gold targets")
    return FeedbackContext(generation=1, harness_code=code, digest=digest(rows, train_rows),
                           history=list(history), offer=offer, edits=EDITS)


def test_digest_counts_failure_kinds_not_words():
    d = digest(_rows(n_ok=2, n_wrong=4, n_format=2, n_error=2))
    assert d.n == 10 and d.error_rate == pytest.approx(0.2) and d.format_rate == pytest.approx(0.2)
    assert d.wrong_rate == pytest.approx(0.4)
    assert d.wellformed_accuracy == pytest.approx(2 / 6) and d.error_kinds == {"timeout": 2}


def test_partly_right_answers_are_readable_and_the_rationale_states_true_fractions():
    """A partly right answer whose reason says "missing" is readable, not unreadable."""
    rows = _rows(n_ok=1, n_partial=9)
    d = digest(rows)
    assert d.format_rate == 0 and d.wrong_rate == pytest.approx(0.9)
    assert d.wellformed_accuracy == pytest.approx((1 + 9 * 0.5) / 10)
    decision = decide("rules", _ctx(rows))
    assert decision.action == "weights"
    assert "100% of val answers are readable" in decision.rationale
    assert "score 55% on average (90% below full credit)" in decision.rationale


def test_rules_treats_unreadable_answers_with_a_format_edit():
    decision = decide("rules", _ctx(_rows(n_ok=2, n_format=8)))
    assert decision.action == "harness" and decision.edit == "label_list"
    assert read_options(decision.harness_code)["labels"] is True
    assert "unreadable" in decision.rationale


def test_rules_trains_weights_when_answers_are_readable_but_wrong():
    decision = decide("rules", _ctx(_rows(n_ok=2, n_wrong=8)))
    assert decision.action == "weights" and decision.training.algorithm == "auto"
    assert decision.training.steps == 5


def test_rules_escalates_to_weights_when_a_format_edit_was_rejected():
    rows = _rows(n_ok=1, n_format=9)
    rejected = _history({"action": "seed", "kept": True}, {"action": "harness", "edit": "label_list", "kept": False})
    cheap_first = decide("rules", _ctx(rows, history=rejected))
    assert cheap_first.action == "harness" and cheap_first.edit == "few_shot"
    rejected.append(GenerationRecord(generation=2, action="harness", edit="few_shot", kept=False))
    decision = decide("rules", _ctx(rows, history=rejected))
    assert decision.action == "weights" and "did not help" in decision.rationale
    # one cheap accuracy edit, not all of them: with another one untried it still trains now
    more = _ctx(rows, history=rejected)
    more.edits = EDITS + [HarnessEdit("vote", "accuracy", "vote", lambda s: with_options(s, labels=False, few_shot=5))]
    assert decide("rules", more).action == "weights"
    assert decide("rules", _ctx(rows, history=rejected, weights=False)).action == "stop"


def test_rules_tries_a_cheap_accuracy_edit_after_kept_weights():
    rows = _rows(n_ok=5, n_wrong=5)
    history = _history({"action": "seed", "kept": True}, {"action": "weights", "kept": True})
    decision = decide("rules", _ctx(rows, history=history))
    assert decision.action == "harness" and decision.edit == "few_shot"
    history.append(GenerationRecord(generation=2, action="harness", edit="few_shot", kept=True))
    assert decide("rules", _ctx(rows, history=history)).action == "weights"


def test_rules_prefers_a_harness_edit_when_the_model_overfits_train():
    train = [{"id": "t", "score": 1.0, "failure": None, "reason": ""}] * 4
    history = _history({"action": "seed", "kept": True}, {"action": "weights", "kept": True},
                       {"action": "harness", "edit": "label_list", "kept": True})
    decision = decide("rules", _ctx(_rows(n_ok=2, n_wrong=8), history=history, train_rows=train))
    assert decision.action == "harness" and decision.edit == "few_shot"
    assert "overfitting" in decision.rationale
    assert decide("rules", _ctx(_rows(n_ok=2, n_wrong=8), history=history)).action == "weights"
    # the base weights cannot overfit: the same gap without a kept update trains
    untrained = _history({"action": "seed", "kept": True}, {"action": "weights", "kept": False})
    assert decide("rules", _ctx(_rows(n_ok=2, n_wrong=8), history=untrained, train_rows=train)).action == "weights"


def test_rules_borrows_a_baselines_method_when_a_kept_edit_leaves_val_far_below_it():
    vote = HarnessEdit("retrieval_vote", "variance", "answer the neighbours' vote",
                       lambda s: with_options(s, labels=True, few_shot=5), baseline_use="replace")
    on_abstain = HarnessEdit("vote_on_abstain", "format", "the vote where the model abstains",
                             lambda s: with_options(s, labels=True), baseline_use="fallback")
    rows = _rows(n_ok=1, n_format=6, n_wrong=3)                       # val 0.10
    kept_edit = _history({"action": "seed", "kept": True}, {"action": "harness", "edit": "few_shot", "kept": True})

    def ctx(history, baselines):
        c = _ctx(rows, history=history)
        c.edits, c.baselines = [*EDITS, on_abstain, vote], baselines
        return c

    decision = decide("rules", ctx(kept_edit, {"knn": 0.30, "majority": 0.05}))
    assert decision.action == "harness" and decision.edit == "retrieval_vote"   # the most complete use first
    assert "knn: 0.300" in decision.rationale and "val is 0.100" in decision.rationale
    # Within half of the best baseline, or before any harness edit was kept: the usual order.
    assert decide("rules", ctx(kept_edit, {"knn": 0.18})).edit == "label_list"
    seed_only = _history({"action": "seed", "kept": True})
    assert decide("rules", ctx(seed_only, {"knn": 0.30})).edit == "label_list"
    assert decide("rules", ctx(kept_edit, {})).edit == "label_list"


def test_rules_does_not_repeat_a_tried_edit_and_stops_when_nothing_is_left():
    history = _history({"action": "harness", "edit": "label_list", "kept": False},
                       {"action": "harness", "edit": "few_shot", "kept": False},
                       {"action": "weights", "kept": False}, {"action": "weights", "kept": False})
    assert decide("rules", _ctx(_rows(n_format=10), history=history)).action == "stop"
    assert decide("rules", _ctx(_rows(n_format=10), history=history[:2])).action == "weights"


def test_rules_never_trains_for_a_harness_that_asks_the_model_nothing():
    """A kept retrieval-vote harness answers without the model: new weights change nothing, so
    the rules try a harness edit instead, and stop (saying why) when none is left."""
    asked, silent = _rows(n_ok=2, n_wrong=8), _rows(n_ok=2, n_wrong=8, tokens=0)
    assert decide("rules", _ctx(asked)).action == "weights"
    decision = decide("rules", _ctx(silent))
    assert decision.action == "harness" and decision.edit == "few_shot"     # the accuracy edit first
    tried = _history({"action": "harness", "edit": "label_list", "kept": False},
                     {"action": "harness", "edit": "few_shot", "kept": False})
    assert decide("rules", _ctx(asked, history=tried)).action == "weights"
    stop = decide("rules", _ctx(silent, history=tried))
    assert stop.action == "stop" and "asks the model nothing" in stop.rationale


def test_ablations():
    rows = _rows(n_ok=2, n_wrong=8)
    assert decide("harness_only", _ctx(rows)).action == "harness"
    assert decide("weights_only", _ctx(rows)).action == "weights"
    assert decide("weights_only", _ctx(rows, weights=False)).action == "stop"
    assert decide("alternate", _ctx(rows)).action == "harness"
    assert decide("alternate", _ctx(rows, history=_history({"action": "harness", "edit": "few_shot"}))).action \
        == "weights"


def test_decisions_are_validated():
    with pytest.raises(InvalidDecision):
        Decision(action="rewrite", rationale="x").validate()
    with pytest.raises(InvalidDecision):
        Decision(action="harness", rationale="x", harness_code="print(1)").validate()
    with pytest.raises(InvalidDecision):
        Decision(action="weights", rationale="x", training=TrainingPlan("sft", steps=0, examples=3)).validate()
    with pytest.raises(InvalidDecision, match="needs training: a TrainingPlan"):   # a plan is typed, not a dict
        Decision(action="weights", rationale="x", training={"algorithm": "sft", "steps": 2, "examples": 3}).validate()
    with pytest.raises(InvalidDecision, match="offers now"):
        Decision(action="weights", rationale="x", training=TrainingPlan("grpo", steps=2, examples=3)) \
            .validate(("sft",))
    ok = Decision(action="weights", rationale="x", training=TrainingPlan("sft", steps=2, examples=3))
    assert Decision.from_json(ok.validate().to_json()) == ok


def test_with_options_rewrites_only_the_literal():
    new = with_options(HARNESS, few_shot=2)
    assert read_options(new) == {"labels": False, "few_shot": 2}
    assert "# knobs" in new and "def sft_pair" in new
    compile(new, "h.py", "exec")
    assert with_options(new, few_shot=2) is None            # nothing to change
    assert with_options(HARNESS, unknown=1) is None          # not a knob of this harness
    assert with_options("def solve(i, c): pass", x=1) is None


def _simulate(feedback, task, generations=6):
    """Drive ``feedback`` on legal_charge's real seed harness and edit library, in a recorded world:
    a harness's val rows follow from its options (the same for every feedback), a candidate is kept
    when its val is higher, and a weight update is rejected. Returns the decisions' labels."""
    from sia.agents.digest import digest as make_digest

    def rows_of(code):
        o = read_options(code)
        if o["retrieval_vote"] == "only":      # asks the model nothing, and is worse here
            return _rows(n_ok=1, n_wrong=9, tokens=0)
        if o["retrieval_vote"] != "off":
            return _rows(n_ok=8, n_wrong=2)
        if o["few_shot"]:
            return _rows(n_ok=6, n_wrong=4)
        if o["parser"] == "nearest":
            return _rows(n_ok=3, n_wrong=5, n_format=2)
        if o["label_list"]:
            return _rows(n_ok=2, n_wrong=4, n_format=4)
        return _rows(n_format=10)

    code, history, labels = task.seed_harness(), [], []
    score = make_digest(rows_of(code)).score
    for generation in range(1, generations + 1):
        rows = rows_of(code)
        ctx = FeedbackContext(generation=generation, harness_code=code, digest=make_digest(rows, rows),
                              history=list(history), offer=LeverOffer(True, "", ("sft",), 5, 10),
                              edits=task.harness_edits(), baselines={"knn": 0.9})
        decision = feedback.decide(ctx).validate(("sft",))
        labels.append(decision.action + (f":{decision.edit}" if decision.edit else ""))
        if decision.action == "stop":
            break
        kept = False
        if decision.action == "harness":
            new = make_digest(rows_of(decision.harness_code)).score
            kept = new > score
            if kept:
                code, score = decision.harness_code, new
        history.append(GenerationRecord(generation=generation, action=decision.action, edit=decision.edit,
                                        kept=kept))
    return labels


def test_ablation_arms_make_the_rules_harness_choices_until_the_first_weights_decision():
    """harness_only is the rules with the weights lever off: the same harness edits up to the
    rules' first weights decision, then its next harness edit where the rules train; weights_only
    trains where the rules edit; alternate's harness turns are the rules' harness choices."""
    from omegaconf import OmegaConf

    from sia.tasks import load_task

    task = load_task("legal_charge", OmegaConf.create({"name": "legal_charge"}))
    arms = {name: _simulate(ARMS[NAMES[name]](name=name), task) for name in NAMES}
    rules = arms["rules"]
    first_weights = next(i for i, label in enumerate(rules) if label == "weights")
    assert first_weights >= 2                                   # some harness choices to compare
    assert arms["harness_only"][:first_weights] == rules[:first_weights]
    assert arms["harness_only"][first_weights].startswith("harness:")
    assert "weights" not in arms["harness_only"] and all(a.startswith(("weights", "stop"))
                                                         for a in arms["weights_only"])
    assert arms["alternate"][0] == rules[0]
