"""legal_charge: LawBench scorer, loaders, synthetic data, harness edits and the seed harness.

Fast and model-free: the seed harness runs in-process against a scripted fake ``ctx``.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from sia.harness.contract import Completion
from sia.harness.options import read_options
from sia.tasks import TASKS_DIR, Example, _tasks_package, load_task
from tests.support.harnesses import seed_harness

ROOT = Path(__file__).resolve().parents[1]
TASK_DIR = TASKS_DIR / "legal_charge"


LAWBENCH = TASK_DIR / "lawbench"   # the shipped LawBench 3-3 dev half (README there)


def _module(name: str):
    _tasks_package(TASKS_DIR)
    return importlib.import_module(f"sia_tasks.legal_charge.{name}")


metrics = _module("metrics")
data = _module("data")
synthetic = _module("synthetic")


def make_task(**data_cfg):
    return load_task("legal_charge", {"primary_metric": "f1", "data": data_cfg})


# ---- metrics (LawBench 3-3 scorer) ------------------------------------------------------------
LABELS = ["盗窃", "抢劫", "诈骗", "合同诈骗", "故意伤害", "故意杀人"]


def test_single_label_hit_and_suffix():
    score = metrics.score_answer("[罪名]盗窃罪<eoa>", ["盗窃"], LABELS)
    assert (score.f1, score.exact, score.abstained) == (1.0, True, False)


def test_multi_label_partial_credit():
    # gold {盗窃, 诈骗}: one of two found -> P=1, R=1/2 -> F1=2/3
    assert metrics.score_answer("盗窃", ["盗窃", "诈骗"], LABELS).f1 == pytest.approx(2 / 3)
    # one right, one wrong -> P=1/2, R=1/2 -> F1=1/2
    assert metrics.score_answer("盗窃;抢劫", ["盗窃", "诈骗"], LABELS).f1 == pytest.approx(0.5)
    # a list answer is joined with ';'
    both = metrics.score_answer(["诈骗", "盗窃"], ["盗窃", "诈骗"], LABELS)
    assert both.f1 == 1.0 and both.exact


def test_overlapping_names_all_count_like_lawbench():
    # "合同诈骗" also contains "诈骗": predicted {合同诈骗, 诈骗} -> P=1/2, R=1 -> F1=2/3
    score = metrics.score_answer("[罪名]合同诈骗<eoa>", ["合同诈骗"], LABELS)
    assert set(score.predicted) == {"合同诈骗", "诈骗"}
    assert score.f1 == pytest.approx(2 / 3) and not score.exact


def test_whole_output_is_searched_not_only_the_span():
    echoed = "例如[罪名]盗窃;诈骗<eoa>。[罪名]抢劫<eoa>"
    score = metrics.score_answer(echoed, ["抢劫"], LABELS)
    assert set(score.predicted) == {"盗窃", "诈骗", "抢劫"}
    assert score.f1 == pytest.approx(0.5)  # P=1/3, R=1


def test_abstention_and_unreachable_gold():
    for answer in ("我无法判断", None, ""):
        score = metrics.score_answer(answer, ["抢劫"], LABELS)
        assert score.abstained and score.f1 == 0.0
    # gold names outside the label list stay in the gold set and can never be matched
    score = metrics.score_answer("爆炸;抢劫", ["爆炸", "抢劫"], LABELS)
    assert score.predicted == ("抢劫",) and score.f1 == pytest.approx(2 / 3)


def test_aggregate_means():
    scores = [
        metrics.score_answer("盗窃", ["盗窃"], LABELS),          # 1, exact
        metrics.score_answer("盗窃", ["盗窃", "诈骗"], LABELS),  # 2/3
        metrics.score_answer("不知道", ["抢劫"], LABELS),        # 0, abstained
        metrics.score_answer("故意杀人", ["故意伤害"], LABELS),  # 0
    ]
    result = metrics.aggregate(scores)
    assert result["f1"] == pytest.approx((1 + 2 / 3) / 4)
    assert result["exact"] == pytest.approx(0.25)
    assert result["abstention"] == pytest.approx(0.25)


def test_gold_parsing_and_normalisation():
    assert data.parse_gold_answer("罪名:盗窃;掩饰、隐瞒犯罪所得、犯罪所得收益") == [
        "盗窃", "掩饰、隐瞒犯罪所得、犯罪所得收益"]
    assert [data.normalise_charge(n) for n in ("盗窃罪", "[故意伤害]", " 诈骗 ")] == [
        "盗窃", "故意伤害", "诈骗"]


def test_evaluate_reports_reasons_and_failure_kinds():
    task = make_task()
    examples = [Example(f"e{i}", {"fact": "事实:x"}, [gold]) for i, gold in enumerate(["抢劫"] * 3)]
    examples.append(Example("e3", {"fact": "事实:x"}, ["合同诈骗"]))
    examples.append(Example("e4", {"fact": "事实:x"}, ["抢劫"]))
    answers = ["[罪名]抢劫<eoa>", "[罪名]盗窃<eoa>", "被告人的行为构成犯罪，应当依法惩处" * 3, "合同诈骗", None]
    report = task.evaluate(examples, answers, "val")
    assert [round(e.score, 3) for e in report.per_example] == [1.0, 0.0, 0.0, 0.667, 0.0]
    assert [e.failure for e in report.per_example] == [None, "wrong", "format", "wrong", "format"]
    reasons = [e.reason for e in report.per_example]
    assert reasons[0] == ""
    assert reasons[1] == "not the gold charge set: named 1 valid charge"
    assert reasons[2].startswith("no valid charge name in the output (abstention)")
    assert "被告人的行为构成犯罪" in reasons[2]
    # 合同诈骗 also predicts 诈骗 (LawBench's substring rule); on val the hits are not counted
    assert reasons[3] == "not the gold charge set: named 2 valid charges"
    assert reasons[4] == "the harness produced no answer"
    assert report.per_example[3].details["gold"] == ["合同诈骗"]   # gold stays in trusted details
    assert report.metrics["abstention"] == pytest.approx(0.4)
    assert set(report.metrics) == {"f1", "exact", "abstention"}


@pytest.mark.parametrize("split", ["val", "test"])
def test_held_out_reasons_do_not_count_right_charges(split):
    """Per-charge hit counts in val reasons recover every val gold set over a few generations
    (issue 20): two answers of the same size, one with a gold charge and one without, get the
    same reason on val/test."""
    task = make_task()
    example = next(e for e in task.load()[split] if len(e.target) == 1)
    gold = example.target[0]
    others = [n for n in task.labels if gold not in n and n not in gold][:3]
    answers = ["[罪名]" + ";".join([gold, others[0]]) + "<eoa>",         # 1 right, 1 extra
               "[罪名]" + ";".join(others[1:3]) + "<eoa>"]                 # none right
    report = task.evaluate([example, example], answers, split)
    assert [round(s.score, 3) for s in report.per_example] == [0.667, 0.0]
    reasons = [s.reason for s in report.per_example]
    assert reasons[0] == reasons[1] == "not the gold charge set: named 2 valid charges"


def test_train_reasons_count_right_charges_only_for_train_examples():
    """Train gold is public (ctx.resources['train']): there the reasons say how close; a val
    example labelled "train" by mistake still gets the held-out wording."""
    task = make_task()
    splits = task.load()
    train = next(e for e in splits.train if len(e.target) == 1)
    val = next(e for e in splits.val if len(e.target) == 1)
    wrong = lambda e: "[罪名]" + ";".join(  # noqa: E731
        [e.target[0]] + [n for n in task.labels if e.target[0] not in n and n not in e.target[0]][:1]) + "<eoa>"
    report = task.evaluate([train, val], [wrong(train), wrong(val)], "train")
    assert report.per_example[0].reason == "partly right: named 2 valid charges, 1 right, 1 extra"
    assert report.per_example[1].reason == "not the gold charge set: named 2 valid charges"


# ---- loaders --------------------------------------------------------------------------------
def test_lawbench_loader_and_labels():
    path = LAWBENCH / "charge_3-3_dev.json"
    assert data.detect_format(path) == "lawbench"
    records = data.load_records(path)
    assert len(records) == 250 and len({r["id"] for r in records}) == 250
    assert all(r["fact"].startswith("事实:") and r["charges"] for r in records)
    assert sum(len(r["charges"]) > 1 for r in records) > 50  # about a third are multi-label

    task = make_task(path=str(path))
    assert task.config_problems() == []
    splits = task.load()
    assert (len(splits.train), len(splits.val), len(splits.test)) == (150, 50, 50)
    ids = [e.id for part in (splits.train, splits.val, splits.test) for e in part]
    assert len(set(ids)) == 250
    assert len(task.labels) == 189  # charges.json beside the data file
    resources = task.public_resources(splits)
    assert len(resources["train"]) == 150 and resources["labels"][0] in {"盗窃", "故意伤害"}
    # deterministic splits
    assert [e.id for e in make_task(path=str(path)).load().test] == [e.id for e in splits.test]


def _write_cail(path: Path) -> Path:
    rows = [
        {"fact": "被告人甲某窃取手机一部。", "meta": {"accusation": ["盗窃罪"]}},
        {"fact": "被告人乙某持刀将人捅伤。", "meta": {"accusation": ["故意伤害"]}},
        {"fact": "被告人丙某抢走财物后又殴打被害人。", "meta": {"accusation": ["[抢劫]", "故意伤害罪"]}},
        {"fact": "被告人丁某骗取钱财。", "meta": {"accusation": ["诈骗"]}},
        {"fact": "被告人戊某醉酒驾车。", "meta": {"accusation": ["危险驾驶"]}},
    ]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", "utf-8")
    return path


def test_cail_loader_normalises_names(tmp_path):
    path = _write_cail(tmp_path / "cail.jsonl")
    assert data.detect_format(path) == "cail"
    records = data.load_records(path)
    assert [r["charges"] for r in records][:3] == [["盗窃"], ["故意伤害"], ["抢劫", "故意伤害"]]
    assert records[0]["fact"] == "事实:被告人甲某窃取手机一部。"
    task = make_task(path=str(path), val_fraction=0.2, test_fraction=0.2)
    splits = task.load()
    assert (len(splits.train), len(splits.val), len(splits.test)) == (3, 1, 1)
    # no charges.json beside it: the label list is the train split's gold names, no held-out one
    assert set(task.labels) == {name for e in splits.train for name in e.target}


def test_label_list_without_charges_json_names_no_charge_seen_only_in_val_or_test(tmp_path):
    """Issue 20: built from every split, the list held val/test-only charges (at its tail, as
    the least frequent in train), public to every harness (ctx.resources['labels'])."""
    names = synthetic.ALL_CHARGES[:12]
    items = [{"question": f"被告人某{i}于2019年实施犯罪行为，案号{i}。", "answer": f"罪名:{names[i % 12]}"}
             for i in range(30)]      # 12 charges over 30 cases: some land only in val or test
    path = tmp_path / "cases.json"
    path.write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    task = make_task(path=str(path), val_fraction=0.2, test_fraction=0.2)
    splits = task.load()
    train = {name for e in splits.train for name in e.target}
    held_only = {name for e in splits.val + splits.test for name in e.target} - train
    assert held_only                                       # the case the issue is about
    assert set(task.labels) == train and not held_only & set(task.labels)
    assert set(task.public_resources(splits)["labels"]) == train


def test_test_path_is_the_whole_test_split(tmp_path):
    test_file = _write_cail(tmp_path / "test.jsonl")
    task = make_task(path=str(LAWBENCH / "charge_3-3_dev.json"), test_path=str(test_file))
    assert task.config_problems() == []
    splits = task.load()
    assert [e.inputs["fact"] for e in splits.test] == [
        r["fact"] for r in data.load_records(test_file)]
    assert (len(splits.train), len(splits.val)) == (200, 50)
    assert all(e.id.startswith("lb33-") for e in splits.train + splits.val)
    assert "test.jsonl" in task.data_label


def test_config_problems_name_key_value_and_fix(tmp_path):
    missing = tmp_path / "nope.json"
    problems = make_task(path=str(missing)).config_problems()
    assert len(problems) == 1
    assert "task.data.path" in problems[0] and str(missing) in problems[0]
    assert "path=null" in problems[0]  # the fix

    problems = make_task(format="xml", val_fraction=1.5, test_path=str(missing)).config_problems()
    joined = "\n".join(problems)
    assert "task.data.format='xml'" in joined
    assert "task.data.val_fraction=1.5" in joined
    assert "task.data.test_path" in joined and "task.data.path is null" in joined
    bad_metric = load_task("legal_charge", {"primary_metric": "accuracy"}).config_problems()
    assert len(bad_metric) == 1 and "'accuracy'" in bad_metric[0] and "f1" in bad_metric[0]
    assert make_task(synthetic={"n_charges": 99}).config_problems()[0].startswith(
        "task.data.synthetic.n_charges=99")
    assert make_task().config_problems() == []


# ---- synthetic data -------------------------------------------------------------------------
def test_synthetic_is_deterministic_and_well_formed():
    first, again = synthetic.generate(seed=3), synthetic.generate(seed=3)
    assert first == again
    assert first["train"] != synthetic.generate(seed=4)["train"]
    records = first["train"] + first["val"] + first["test"]
    charges = {c for r in records for c in r["charges"]}
    assert len(charges) >= 20 and charges == set(synthetic.charge_names(24))
    labels = synthetic.charge_names(len(synthetic.ALL_CHARGES))
    for r in records:
        body = r["fact"].removeprefix("事实:")
        assert r["fact"].startswith("事实:") and 60 <= len(body) <= 160, r["fact"]
        assert 1 <= body.count("。") <= 3
        assert not [name for name in labels if name in r["fact"]], r["fact"]
        answer = "罪名:" + ";".join(r["charges"])
        assert data.parse_gold_answer(answer) == r["charges"]
    share = sum(len(r["charges"]) > 1 for r in records) / len(records)
    assert 0.10 <= share <= 0.20
    facts = [r["fact"] for r in records]
    assert len(set(facts)) == len(facts)  # no fact repeated within or across splits
    # varied, not one fixed string per charge
    theft = [r["fact"] for r in records if r["charges"] == ["盗窃"]]
    assert len({f.split("被告人", 1)[1][3:12] for f in theft}) >= 3


def test_synthetic_uses_real_lawbench_names_and_hides_them():
    lawbench = json.loads((LAWBENCH / "charges.json").read_text("utf-8"))
    assert set(synthetic.ALL_CHARGES) <= set(lawbench)
    for r in synthetic.generate(seed=1)["test"]:
        assert not [name for name in lawbench if name in r["fact"]], r["fact"]


def test_synthetic_test_split_does_not_depend_on_train_size():
    small = synthetic.generate(seed=0, n_train=10)
    assert small["test"] == synthetic.generate(seed=0)["test"]


def test_synthetic_task_is_learnable_from_train(tmp_path):
    # 1-nearest-neighbour over the harness's bigram retrieval: a weak learner already clears 0.8
    task = make_task()
    splits = task.load()
    resources = task.public_resources(splits)
    harness = load_harness(tmp_path)
    answers = [harness.retrieve(e.inputs["fact"], resources["train"], 1)[-1]["charges"]
               for e in splits.test]
    assert task.evaluate(splits.test, answers, "test").metrics["f1"] >= 0.8
    assert task.data_label == "synthetic (seed 0, 24 charges)"


# ---- harness edits --------------------------------------------------------------------------
def test_every_edit_rewrites_options_once():
    task = make_task()
    seed = task.seed_harness()
    edits = task.harness_edits()
    assert {e.addresses for e in edits} >= {"format", "accuracy", "variance"}
    for edit in edits:
        edited = edit.apply(seed)
        assert edited is not None, edit.name
        compile(edited, f"<{edit.name}>", "exec")
        assert read_options(edited) != read_options(seed), edit.name
        assert edit.apply(edited) is None, edit.name


# ---- the seed harness, in-process with a scripted fake ctx ----------------------------------
class FakeLLM:
    def __init__(self, replies):
        self.replies = list(replies)
        self.calls = []

    def _next(self):
        return Completion(text=self.replies.pop(0), prompt_tokens=1, completion_tokens=1)

    def chat(self, messages, **kwargs):
        self.calls.append(("chat", messages, kwargs))
        return self._next()

    def sample(self, messages, n, **kwargs):
        self.calls.append(("sample", messages, kwargs))
        return [self._next() for _ in range(n)]


class FakeCtx:
    def __init__(self, replies, resources):
        self.llm = FakeLLM(replies)
        self.resources = resources
        self.files = {}
        self.example_id = "t"
        self.events = []

    def log(self, kind, **payload):
        self.events.append((kind, payload))


TRAIN = [
    {"fact": "事实:被告人甲某趁被害人不备，秘密窃取其手机，价值人民币3000元。", "charges": ["盗窃"]},
    {"fact": "事实:被告人乙某持刀威胁被害人，劫得现金500元。", "charges": ["抢劫"]},
    {"fact": "事实:被告人丙某冒充朋友，以急需用钱为由骗取人民币2000元。", "charges": ["诈骗"]},
]
RESOURCES = {"labels": LABELS, "train": TRAIN, "instruction": data.LAWBENCH_INSTRUCTION}
INPUTS = {"fact": "事实:被告人丁某趁被害人不备，秘密窃取其电脑，价值人民币5000元。",
          "instruction": data.LAWBENCH_INSTRUCTION}


def load_harness(tmp_path: Path, **options):
    return seed_harness("legal_charge", tmp_path, **options)


def run(harness, replies):
    ctx = FakeCtx(replies, RESOURCES)
    return harness.solve(dict(INPUTS), ctx), ctx


def test_seed_options_are_all_off():
    options = read_options((TASK_DIR / "seed_harness.py").read_text("utf-8"))
    assert options["few_shot"] == 0 and options["votes"] == 1 and options["parser"] == "raw"
    assert not (options["label_list"] or options["retry"] or options["system_prompt"])


def test_plain_harness_extracts_the_span(tmp_path):
    harness = load_harness(tmp_path)
    assert run(harness, ["[罪名]盗窃<eoa>"])[0] == "盗窃"
    assert run(harness, ["例如[罪名]盗窃;诈骗<eoa>。答案：[罪名]抢劫"])[0] == "抢劫"
    assert run(harness, ["罪名:诈骗"])[0] == "诈骗"
    answer, ctx = run(harness, ["被告人构成盗窃罪。"])
    assert answer == "被告人构成盗窃罪。"
    kind, messages, kwargs = ctx.llm.calls[0]
    assert kind == "chat" and len(ctx.llm.calls) == 1 and kwargs["temperature"] == 0.0
    assert [m["role"] for m in messages] == ["user"]
    assert messages[0]["content"] == data.LAWBENCH_INSTRUCTION + "\n" + INPUTS["fact"]


def test_long_facts_are_cut(tmp_path):
    harness = load_harness(tmp_path)
    ctx = FakeCtx([], RESOURCES)
    messages = harness.build_messages({"fact": "事实:" + "甲" * 1000}, ctx)
    assert messages[-1]["content"].endswith("事实:" + "甲" * 300)


def test_nearest_parser_maps_to_valid_labels(tmp_path):
    harness = load_harness(tmp_path, parser="nearest")
    assert run(harness, ["[罪名]偷窃罪;故意伤人<eoa>"])[0] == ["盗窃", "故意伤害"]
    assert run(harness, ["[罪名]合同诈骗罪<eoa>"])[0] == ["合同诈骗"]
    assert run(harness, ["[罪名]抢劫罪、诈骗罪<eoa>"])[0] == ["抢劫", "诈骗"]
    assert run(harness, ["我不知道"])[0] == []


def test_retry_with_feedback_when_nothing_valid(tmp_path):
    harness = load_harness(tmp_path, retry=True)
    answer, ctx = run(harness, ["我不知道", "[罪名]抢劫<eoa>"])
    assert answer == "抢劫" and len(ctx.llm.calls) == 2
    assert ctx.events and ctx.events[0][0] == "retry"
    feedback = ctx.llm.calls[1][1][-1]["content"]
    assert "盗窃" in feedback and "合同诈骗" in feedback
    answer, ctx = run(harness, ["[罪名]盗窃<eoa>"])
    assert answer == "盗窃" and len(ctx.llm.calls) == 1 and not ctx.events
    # the retry turn drops few-shot turns so the conversation stays inside the 2k context
    answer, ctx = run(load_harness(tmp_path, retry=True, few_shot=2), ["不知道", "[罪名]盗窃<eoa>"])
    assert answer == "盗窃" and len(ctx.llm.calls[0][1]) == 5
    assert [m["role"] for m in ctx.llm.calls[1][1]] == ["user", "assistant", "user"]
    # no retry without the option
    answer, ctx = run(load_harness(tmp_path), ["我不知道"])
    assert answer == "我不知道" and len(ctx.llm.calls) == 1


def test_votes_keep_the_majority(tmp_path):
    harness = load_harness(tmp_path, votes=3)
    answer, ctx = run(harness, ["[罪名]盗窃<eoa>", "[罪名]盗窃;抢劫<eoa>", "[罪名]诈骗<eoa>"])
    assert answer == ["盗窃"]
    assert ctx.llm.calls[0][0] == "sample" and ctx.llm.calls[0][2]["temperature"] > 0


def test_label_list_system_prompt_and_few_shot(tmp_path):
    harness = load_harness(tmp_path, label_list=True, system_prompt=True, few_shot=2)
    ctx = FakeCtx([], RESOURCES)
    messages = harness.build_messages(dict(INPUTS), ctx)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert "可选罪名：盗窃;抢劫;诈骗" in messages[1]["content"]
    assert messages[-2]["content"] == "[罪名]盗窃<eoa>"  # the most similar case sits last
    assert messages[-1]["content"] == INPUTS["fact"]
    # a train case never retrieves itself
    shots = harness.retrieve(TRAIN[0]["fact"], TRAIN, 3)
    assert TRAIN[0] not in shots and len(shots) == 2


def test_sft_pair_round_trips_through_the_parser(tmp_path):
    for options in ({}, {"parser": "nearest", "few_shot": 1}):
        harness = load_harness(tmp_path, **options)
        ctx = FakeCtx([], RESOURCES)
        target = ["抢劫", "故意伤害"]
        pair = harness.sft_pair(dict(INPUTS), target, ctx)
        assert pair["completion"] == "[罪名]抢劫;故意伤害<eoa>"
        assert pair["messages"] == harness.build_messages(dict(INPUTS), ctx)
        answer, valid = harness.parse(pair["completion"], LABELS)
        assert sorted(valid) == sorted(target)
        assert metrics.score_answer(answer, target, LABELS).exact
