"""The weights_only and alternate ablations on every shipped task, through the real CLI: the
embedded model, real rollouts scored by each task's trusted evaluator, real LoRA steps (tiny
budgets, so each run takes about a minute)."""
from __future__ import annotations

import json

import pytest

from conftest import REPO
from test_e2e import _finish, _sia

SUPPORT_CONF = REPO / "tests" / "support" / "conf"

pytestmark = pytest.mark.slow

# the wall clock is not what these check: a loaded machine must not stop a lever by the budget
TINY = ("logger=none", "budget.wall_clock_minutes=60", "budget.val_examples=2", "budget.test_examples=1", "budget.train_examples=4",
        "budget.train_steps=1", "budget.probe_train_examples=2", "lora.rollout_examples=2",
        "lora.samples_per_prompt=2")   # lora.max_seq_len stays 384: a legal_charge prompt + answer needs ~300
TASK_ARGS = {
    "legal_charge": (),
    "sql_qa": (),
    "scrna_denoise": (),
    # one attempt per split, and short completions: the embedded model cannot write a kernel
    # anyway, and the seed harness's 1,536-token answer takes two minutes per call here (the
    # test-only agent.meta=short_seed caps the seed harness's max_tokens; agent.max_new_tokens is
    # only the default of a call that names none)
    "cuda_kernel": ("task.examples.train=2", "task.examples.val=1", "task.examples.test=1",
                    f"hydra.searchpath=[file://{SUPPORT_CONF}]", "agent.meta=short_seed"),
}
ALGORITHMS = ("sft", "rs_sft", "grpo", "eaw", "ppo")


@pytest.mark.parametrize("policy", ["weights_only", "alternate"])
@pytest.mark.parametrize("task", sorted(TASK_ARGS))
def test_ablation_runs_on_every_task(task, policy, tmp_path, model_cache_dir):
    generations = 1 if policy == "weights_only" else 2
    run_dir = tmp_path / "run"
    _finish(_sia(run_dir, model_cache_dir, f"task={task}", f"feedback={policy}", f"budget.generations={generations}",
                 *TINY, *TASK_ARGS[task]))
    state = json.loads((run_dir / "state.json").read_text())
    assert state["status"] == "done"
    actions = [h["action"] for h in state["history"]]
    if policy == "alternate" and state["history"][1]["kept"] and state["history"][1]["tokens"] == 0:
        # the kept harness edit asks the model nothing (scrna_denoise's mcv_self_tuning): no weights can
        # change its answers, so the weights turn gives way to the next harness edit (weights_only
        # covers this task's weights lever)
        assert actions == ["seed", "harness", "harness"], actions
        return
    assert actions[0] == "seed" and actions.count("weights") == 1
    if policy == "alternate":
        assert actions == ["seed", "harness", "weights"]    # the harness turn comes first
    weights = next(h for h in state["history"] if h["action"] == "weights")
    gen_dir = run_dir / f"gen_{weights['generation']:03d}"
    info = json.loads((gen_dir / "train.json").read_text())
    if info.get("skipped"):     # no positive sample: no training, and the record says why
        assert weights["failed"] == info["skipped"] and "positive" in info["skipped"]
        assert info["reward_stats"]["n_positive"] == 0 and not (gen_dir / "adapter" / "COMPLETE").exists()
    else:
        assert weights["algorithm"] in ALGORITHMS and (gen_dir / "adapter" / "COMPLETE").is_file()
        assert len(weights["train_losses"]) == 1 and weights["val"] is not None
    if weights["algorithm"] != "sft":    # reward-driven: 2 train examples x 2 samples, all scored
        rows = [json.loads(line) for line in (gen_dir / "rollouts.jsonl").read_text().splitlines()]
        assert len(rows) == 4 and all(0.0 <= r["reward"] for r in rows)
