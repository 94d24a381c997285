"""The reward-driven trainers: each loss on a hand-computed toy batch, the algorithm choice by
reward shape, the shared batching path, the completion-only LM head (on a tiny random model),
rollouts.jsonl durability, trajectory credit, and 1-2 real steps of every algorithm."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from sia.engine.model_cache import resolve_model_dir
from sia.levers.rollouts import (append_rollouts, credited_calls, read_rollouts, rollout_samples, sample_record,
                                samples_from_events)
from sia.train import Sample, choose_algorithm, reward_stats, train_adapter
from sia.train.batching import BucketBatchSampler, collate
from sia.train.eaw import adaptive_beta, entropic_advantages
from sia.train.eaw import prepare as eaw_prepare
from sia.train.grpo import clipped_surrogate, group_advantages, grpo_loss, kl_to_reference
from sia.train.grpo import prepare as grpo_prepare
from sia.train.lora_module import completion_forward
from sia.train.ppo import gae, outcome_rewards, ppo_loss
from sia.train.rs_sft import select_best
from sia.train.settings import algorithm_settings
from sia.train.sft import sft_loss

REPO = Path(__file__).resolve().parent.parent
approx = pytest.approx
LORA = OmegaConf.load(REPO / "conf" / "lora" / "default.yaml")
GRPO = algorithm_settings(LORA, "grpo")   # lora.grpo as the trainer gets it
THRESHOLDS = dict(LORA.thresholds)        # lora.thresholds: the choice's keywords
LN2 = math.log(2)   # lora.eaw.kl_target in conf/lora/default.yaml


def chat(text):
    return [{"role": "user", "content": text}]


def scored(rewards_by_group: dict[str, list[float]]) -> list[Sample]:
    return [Sample(prompt=chat(g), completion=f"{g}-{i}", reward=r, group=g, sampling_temperature=0.7)
            for g, rewards in rewards_by_group.items() for i, r in enumerate(rewards)]


# ---- losses on toy batches ---------------------------------------------------------------

def test_group_advantages_are_reward_minus_group_mean_over_group_std():
    adv = group_advantages([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 3.0, 1.0], list("aaaabbcc"), "group")
    assert adv[:4] == approx([1, -1, -1, 1], abs=1e-5)   # mean 0.5, std 0.5
    assert adv[4:6] == [0.0, 0.0]                        # equal rewards: no advantage
    assert adv[6:] == approx([1, -1], abs=1e-5)


def test_clipped_surrogate_takes_the_pessimistic_branch():
    old = torch.zeros(4)
    logp = torch.log(torch.tensor([1.5, 0.5, 0.5, 1.5]))  # ratios
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    loss, clipped = clipped_surrogate(logp, old, adv, clip=0.2)
    # min(1.5, 1.2) = 1.2; min(0.5, 0.8) = 0.5; min(-0.5, -0.8) = -0.8; min(-1.5, -1.2) = -1.5
    assert loss.tolist() == approx([-1.2, -0.5, 0.8, 1.5])
    assert clipped.tolist() == [True, False, True, False]


def test_kl_estimator_is_zero_at_equality_and_matches_k3():
    logp = torch.tensor([-1.0, -2.0])
    assert kl_to_reference(logp, logp).tolist() == [0.0, 0.0]
    d = -0.5 - (-1.0)  # ref - logp for the first token
    assert float(kl_to_reference(torch.tensor([-1.0]), torch.tensor([-0.5]))) == approx(math.exp(d) - d - 1)


def test_grpo_loss_type_grpo_averages_tokens_per_row_then_rows_and_ignores_padding():
    mask = torch.tensor([[True, True, False], [True, False, False]])
    old = torch.tensor([[-1.0, -1.0, 0.0], [-2.0, 0.0, 0.0]])
    logp = old + torch.log(torch.tensor([[1.0, 1.5, 7.0], [0.5, 9.0, 9.0]]))  # padding ratios are junk
    adv = torch.tensor([2.0, -1.0])
    loss, metrics = grpo_loss(logp, old, adv, mask, clip=0.2, kl_coef=0.0, loss_type="grpo")
    row0 = (-2.0 + -2.4) / 2          # ratio 1 -> -2; ratio 1.5 clipped to 1.2 -> -2.4
    row1 = 0.8                        # ratio 0.5, A=-1: min(-0.5, -0.8) -> +0.8
    assert float(loss) == approx((row0 + row1) / 2)
    assert float(metrics["clip_frac"]) == approx((0.5 + 1.0) / 2)

    ref = old - 0.3
    with_kl, m = grpo_loss(logp, old, adv, mask, clip=0.2, kl_coef=0.1, ref_logp=ref, loss_type="grpo")
    kl = kl_to_reference(logp, ref)
    kl_rows = [(kl[0, 0] + kl[0, 1]) / 2, kl[1, 0]]
    assert float(with_kl) == approx((row0 + row1) / 2 + 0.1 * float(sum(kl_rows)) / 2, rel=1e-5)
    assert float(m["kl"]) == approx(float(sum(kl_rows)) / 2, rel=1e-5)


def test_grpo_gradient_at_ratio_one_is_minus_advantage_per_token():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, _ = grpo_loss(logp, logp.detach(), torch.tensor([3.0]), torch.tensor([[True, True]]), clip=0.2, kl_coef=0.0,
                        loss_type="dapo")
    loss.backward()
    assert logp.grad.tolist() == [approx([-1.5, -1.5])]  # -A / tokens in the row


def test_grpo_prepare_drops_groups_without_spread_and_keeps_the_temperature():
    kept, note = grpo_prepare(scored({"a": [1, 0], "b": [1, 1]}), GRPO)
    assert [(s.group, f["advantage"], f["temperature"]) for s, f in kept] == [("a", approx(1, abs=1e-5), 0.7),
                                                                           ("a", approx(-1, abs=1e-5), 0.7)]
    assert "1 of 2 groups" in note
    with pytest.raises(ValueError, match="share one reward"):
        grpo_prepare(scored({"b": [1, 1]}), GRPO)
    with pytest.raises(ValueError, match="algorithm=sft"):
        grpo_prepare([Sample(prompt=chat("x"), completion="y")], GRPO)


def test_entropic_advantages_use_a_leave_one_out_baseline_and_an_adaptive_beta():
    rewards = [0.0, 0.0, 0.0, 1.0, 5.0, 5.0]
    adv, betas = entropic_advantages(rewards, list("aaaabb"), LN2)
    b = betas["a"]
    e = [math.exp(b * r) for r in rewards[:4]]
    for i in range(4):   # exp(beta r_i) / mean of the others' - 1
        assert adv[i] == approx(e[i] / ((sum(e) - e[i]) / 3) - 1)
    assert adv[0] < 0 < adv[3]                  # failures are pushed down, not just weighted less
    assert adv[4:] == [0.0, 0.0] and betas["b"] == 0.0   # equal rewards: no preference
    q = [x / sum(e) for x in e]
    assert sum(p * math.log(p * 4) for p in q) == approx(math.log(2), abs=1e-6)   # KL(q || U) = ln 2
    # scale-free: beta absorbs the reward's scale, the advantages stay
    assert entropic_advantages([0.0, 0.0, 0.0, 0.01], list("aaaa"), LN2)[0] == approx(adv[:4], rel=1e-5)
    big, _ = entropic_advantages([0.0, 800.0], ["a", "a"], LN2)   # K=2: a finite beta, no overflow
    assert all(math.isfinite(a) for a in big) and big[0] < 0 < big[1]
    kept, note = eaw_prepare(scored({"a": [0, 1], "b": [0, 0]}), {"kl_target": math.log(2)})
    assert [s.group for s, _ in kept] == ["a", "a"] and "adaptive beta" in note  # a uniform group: no signal
    assert adaptive_beta([1.0, 1.0], LN2) == 0.0
    with pytest.raises(ValueError, match="kl_target"):
        adaptive_beta([0.0, 1.0], kl_target=0.0)


def test_sft_loss_is_the_token_mean_over_the_whole_step():
    logp = torch.tensor([[-1.0, -3.0], [-2.0, 0.0]])
    mask = torch.tensor([[True, True], [True, False]])
    assert float(sft_loss(logp, mask)) == approx(6 / 3)  # token mean over the batch
    assert float(sft_loss(logp, mask, step_tokens=torch.tensor(6.0))) == approx(6 / 6)  # half of a 6-token step


def test_rs_sft_keeps_the_best_distinct_samples_above_the_threshold():
    samples = scored({"a": [0.2, 0.9, 0.9, 0.5], "b": [0.1, 0.0], "c": [1.0]})
    samples[2].completion = samples[1].completion  # a duplicate of the best
    assert [s.completion for s in select_best(samples, threshold=0.3, top_k=1)] == ["a-1", "c-0"]
    assert [s.completion for s in select_best(samples, threshold=0.3, top_k=2)] == ["a-1", "a-3", "c-0"]


def test_gae_matches_hand_computed_values():
    values = torch.tensor([[0.5, 0.2, 0.1], [0.3, 0.4, 9.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    rewards = outcome_rewards(torch.tensor([1.0, 2.0]), mask)
    assert rewards.tolist() == [[0, 0, 1], [0, 2, 0]]
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    # row 0: d2 = 1 - 0.1 = 0.9; d1 = 0.9*0.1 - 0.2 = -0.11, A1 = -0.11 + 0.45*0.9 = 0.295;
    #        d0 = 0.9*0.2 - 0.5 = -0.32, A0 = -0.32 + 0.45*0.295 = -0.18725
    assert adv[0].tolist() == approx([-0.18725, 0.295, 0.9])
    assert ret[0].tolist() == approx([0.31275, 0.495, 1.0])
    # row 1 ends at t=1 (the padded value 9.0 must not leak in): d1 = 2 - 0.4 = 1.6;
    #        d0 = 0.9*0.4 - 0.3 = 0.06, A0 = 0.06 + 0.45*1.6 = 0.78
    assert adv[1].tolist() == approx([0.78, 1.6, 0.0])
    adv1, _ = gae(rewards, torch.zeros(2, 3), mask, gamma=1.0, lam=1.0)
    assert adv1.tolist() == [[1, 1, 1], [2, 2, 0]]  # zero values: every token gets the outcome


def test_ppo_loss_adds_the_value_error():
    mask = torch.tensor([[True, True]])
    logp = torch.zeros(1, 2)
    loss, m = ppo_loss(logp, logp, values=torch.tensor([[1.0, 2.0]]), returns=torch.zeros(1, 2),
                       advantages=torch.tensor([[1.0, -1.0]]), mask=mask, clip=0.2, vf_coef=0.5)
    assert float(m["policy_loss"]) == approx(0.0)       # (-1 + 1) / 2 at ratio 1
    assert float(m["value_loss"]) == approx(0.5 * (1 + 4) / 2)
    assert float(loss) == approx(0.5 * 1.25)


# ---- reward statistics and the choice of algorithm --------------------------------------

def groups_of(n_groups: int, rewards: list[float]) -> list[Sample]:
    return scored({f"g{i}": list(rewards) for i in range(n_groups)})


def test_reward_stats_quote_mean_zero_share_and_group_variance():
    st = reward_stats(scored({"a": [0, 1], "b": [0, 0], "c": [1, 1]}) + [Sample(prompt="p", completion="gold")],
                      threshold=0.5)
    assert (st.n, st.groups, st.per_group, st.n_positive, st.binary) == (6, 3, 2.0, 3, True)
    assert st.mean == approx(0.5) and st.zero_share == approx(0.5) and st.positive_share == approx(0.5)
    assert st.group_variance == approx(0.25 / 3) and st.spread_share == approx(1 / 3)


@pytest.mark.parametrize("rewards,want", [
    ([0, 1, 0, 1], "grpo"),                      # binary, groups spread
    ([0.1, 0.5, 0.3, 0.9], "grpo"),              # graded, groups spread
    ([0] * 9 + [3.0], "eaw"),                    # 90% zero, a few wins
])
def test_choice_follows_the_observed_reward_shape(rewards, want):
    name, why = choose_algorithm(reward_stats(groups_of(8, rewards)), has_gold=False, format_rate=0.0,
                                 prior_shape="graded", **THRESHOLDS)
    assert name == want
    assert "mean reward" in why and "at zero" in why and "variance" in why and "observed shape" in why


def test_choice_without_spread_inside_groups():
    uniform = [Sample(prompt=chat(str(i)), completion="c", reward=float(i % 2), group=str(i)) for i in range(16)]
    uniform += [Sample(prompt=chat(str(i)), completion="d", reward=float(i % 2), group=str(i)) for i in range(16)]
    assert choose_algorithm(reward_stats(uniform), has_gold=False, format_rate=0, prior_shape="graded",
                            **THRESHOLDS)[0] == "rs_sft"
    graded = [Sample(prompt="p", completion=c, reward=0.1 * (i % 4), group=str(i)) for i in range(16) for c in "xy"]
    # graded, no spread: group-relative advantages vanish and ppo's value baseline would only
    # learn which prompts are easy; imitating the samples above the threshold still teaches
    name, why = choose_algorithm(reward_stats(graded), has_gold=False, format_rate=0, prior_shape="binary",
                                 **THRESHOLDS)
    assert name == "rs_sft" and "graded reward" in why
    sparse = [Sample(prompt="p", completion=c, reward=float(i == 0), group=str(i)) for i in range(16) for c in "xy"]
    assert choose_algorithm(reward_stats(sparse), has_gold=False, format_rate=0, prior_shape="sparse",
                            **THRESHOLDS)[0] == "rs_sft"


def test_no_positive_sample_means_no_training_and_says_so():
    stats = reward_stats(groups_of(8, [0.0, 0.0, 0.0]))
    name, why = choose_algorithm(stats, has_gold=False, format_rate=0.0, prior_shape="sparse", **THRESHOLDS)
    assert name is None and "no positive sample" in why and "24 samples" in why
    assert choose_algorithm(stats, has_gold=True, format_rate=0.0, prior_shape="sparse", **THRESHOLDS)[0] == "sft"
    # "positive" is the caller's: correct but not faster than the incumbent (reward 1.0) is not.
    kernels = reward_stats(groups_of(8, [0.0, 1.0, 0.9]), threshold=1.0)
    assert choose_algorithm(kernels, has_gold=False, format_rate=0.0, prior_shape="sparse", **THRESHOLDS)[0] is None


def test_gold_and_poor_format_following_choose_sft():
    name, why = choose_algorithm(reward_stats(groups_of(8, [0, 1])), has_gold=True, format_rate=0.5,
                                 prior_shape="binary", **THRESHOLDS)
    assert name == "sft" and "50% of answers unreadable" in why


def test_prior_shape_decides_only_when_the_rollout_is_too_small():
    small = reward_stats(scored({"a": [0.0, 0.2], "b": [0.0, 0.4]}))  # 2 groups < 8
    assert choose_algorithm(small, has_gold=False, format_rate=0, prior_shape="sparse", **THRESHOLDS)[0] == "eaw"
    name, why = choose_algorithm(small, has_gold=False, format_rate=0, prior_shape="graded", **THRESHOLDS)
    assert name == "grpo" and "task prior 'graded'" in why
    with pytest.raises(ValueError, match="prior_shape"):
        choose_algorithm(small, has_gold=False, format_rate=0, prior_shape="dense", **THRESHOLDS)


# ---- the shared data path and the completion-only head ----------------------------------

def test_collate_gives_completion_targets_positions_and_per_sample_fields():
    batch = collate([{"input_ids": [5, 6, 7, 8], "n_prompt": 2, "advantage": 0.5, "old_logp": [-1.0, -2.0]},
                     {"input_ids": [9, 10], "n_prompt": 1, "advantage": -1.0, "old_logp": [-3.0]}], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [9, 10, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["targets"].tolist() == [[7, 8], [10, 0]]
    assert batch["completion_mask"].tolist() == [[True, True], [True, False]]
    assert batch["positions"].tolist() == [[1, 2], [0, 0]]  # hidden state t predicts token t+1
    assert batch["advantage"].tolist() == [0.5, -1.0]
    assert batch["old_logp"].tolist() == [[-1.0, -2.0], [-3.0, 0.0]]


def test_bucket_sampler_groups_similar_lengths_and_reshuffles_each_epoch():
    lengths = [10, 200, 12, 190, 14, 205, 11, 195]
    sampler = BucketBatchSampler(lengths, batch_size=2, seed=3)
    first, second = list(sampler), list(sampler)
    assert sorted(i for b in first for i in b) == list(range(8))
    for batch in first:
        assert len({lengths[i] > 100 for i in batch}) == 1  # short rows never pad up to long ones
    assert first != second
    assert list(BucketBatchSampler(lengths, 2, seed=3)) == first  # seeded


def test_training_keeps_fp32_base_weights_on_cpu_under_auto_and_follows_an_explicit_dtype():
    from sia.train.lora_module import training_dtype

    cpu = torch.device("cpu")
    assert training_dtype("auto", cpu) == torch.float32      # bf16-mixed autocasts the compute
    assert training_dtype("bfloat16", cpu) == torch.bfloat16
    assert training_dtype("float32", cpu) == torch.float32


def test_auto_precision_autocasts_bf16_only_where_the_cpu_computes_it_natively(monkeypatch):
    from sia.engine import common
    from sia.train import lora_module

    cpu = torch.device("cpu")
    monkeypatch.setattr(common, "cpu_has_native_bf16", lambda: True)
    assert lora_module.training_precision("auto", cpu) == "bf16-mixed"
    monkeypatch.setattr(common, "cpu_has_native_bf16", lambda: False)
    assert lora_module.training_precision("auto", cpu) == "32-true"      # emulated bf16 is far slower
    assert lora_module.training_precision("bf16-mixed", cpu) == "bf16-mixed"   # an explicit choice stands


def test_reward_driven_steps_are_capped_at_rollout_epochs_passes_over_the_samples():
    from sia.train.settings import capped_steps

    lora = OmegaConf.create({"batch_size": 8, "rollout_epochs": 2})
    assert capped_steps(lora, "grpo", 24, 44) == 11        # ceil(2 * 44 / 8): ~40 grpo samples, 2 passes
    assert capped_steps(lora, "rs_sft", 24, 160) == 24     # many samples: the budget's 24 steps bind
    assert capped_steps(lora, "eaw", 24, 3) == 1           # at least one step
    assert capped_steps(lora, "sft", 24, 3) == 24          # gold pairs do not go stale: no cap
    assert capped_steps(OmegaConf.create({"batch_size": 8, "rollout_epochs": None}), "grpo", 24, 3) == 24


def test_micro_batches_split_each_batch_and_the_short_batch_comes_last():
    lengths = [10, 200, 12, 190, 14, 205, 11, 195, 13, 198]
    whole = list(BucketBatchSampler(lengths, batch_size=4, seed=3))
    micro = list(BucketBatchSampler(lengths, batch_size=4, seed=3, micro_batch_size=2))
    assert len(micro) == len(BucketBatchSampler(lengths, 4, seed=3, micro_batch_size=2)) == 5
    assert [len(b) for b in micro] == [2, 2, 2, 2, 2] and sorted(i for b in micro for i in b) == list(range(10))
    # the same rows per optimizer step as whole batches, the short one (2 rows) at the end
    regrouped = [micro[0] + micro[1], micro[2] + micro[3], micro[4]]
    assert sorted(map(sorted, regrouped)) == sorted(map(sorted, whole)) and len(regrouped[-1]) == 2


@pytest.fixture(scope="module")
def tiny_peft():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    model = get_peft_model(LlamaForCausalLM(cfg), LoraConfig(r=2, target_modules=["q_proj", "v_proj"],
                                                             init_lora_weights=False))
    return model.eval()


def test_completion_head_equals_full_logits_at_completion_positions(tiny_peft):
    rows = [{"input_ids": [3, 4, 5, 6, 7], "n_prompt": 3}, {"input_ids": [8, 9, 10], "n_prompt": 1}]
    batch = collate(rows, pad_id=0)
    with torch.no_grad():
        logp, hidden = completion_forward(tiny_peft, batch, temperature=torch.tensor([1.0, 0.5]))
        full = tiny_peft(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert hidden.shape == (2, 2, 16)
    want0 = torch.log_softmax(full[0, 2:4], -1)[[0, 1], [6, 7]]
    want1 = torch.log_softmax(full[1, 0:2] / 0.5, -1)[[0, 1], [9, 10]]
    assert torch.allclose(logp[0], want0, atol=1e-5) and torch.allclose(logp[1], want1, atol=1e-5)


# ---- rollouts.jsonl and trajectory credit -----------------------------------------------

def _job_row(job: str, samples: list[Sample]) -> dict:
    return {"job": job, "example_id": job, "k": 0, "reward": 1.0, "failure": None,
            "samples": [sample_record(s) for s in samples]}


def test_rollouts_round_trip_and_a_torn_last_line_is_dropped_then_overwritten(tmp_path):
    path = tmp_path / "gen" / "rollouts.jsonl"
    samples = scored({"a": [0.0, 1.0]}) + [Sample(prompt="<|im_start|>user\nq", completion="z", group="b", seed=7,
                                                  prompt_ids=[1, 2], completion_ids=[3], finish="eos")]
    rows = [_job_row("a~0", samples[:2]), _job_row("b~0", samples[2:])]
    append_rollouts(path, rows)
    assert read_rollouts(path) == rows and rollout_samples(read_rollouts(path)) == samples
    with open(path, "a") as f:
        f.write('{"job": "c~0", "samples": [{"prompt": "half')  # what a kill -9 mid-write leaves
    assert read_rollouts(path) == rows
    append_rollouts(path, rows[:1])                          # the torn tail is cut, not glued to
    assert read_rollouts(path) == rows + rows[:1]
    path.write_text(path.read_text().replace('"job": "a~0"', '"job": broken', 1))
    with pytest.raises(ValueError, match=r"rollouts.jsonl:1: not a rollout job row .*corrupt"):
        read_rollouts(path)
    path.write_text('{"job": "a~0", "reward": 1.0}\n[]\n')     # JSON, but not job rows
    with pytest.raises(ValueError, match=r"rollouts.jsonl:1: .*lacks \['samples'\]"):
        read_rollouts(path)
    assert read_rollouts(tmp_path / "missing.jsonl") == []


def test_kill_9_during_sampling_keeps_every_finished_job(tmp_path):
    path = tmp_path / "rollouts.jsonl"
    script = (f"import time, sys\nsys.path.insert(0, {str(REPO)!r})\n"
              "from pathlib import Path\nfrom sia.levers.rollouts import append_rollouts\n"
              f"path = Path({str(path)!r})\n"
              "for i in range(10000):\n"
              "    sample = {'prompt': 'p' * 5000, 'completion': str(i)}\n"
              "    append_rollouts(path, [{'job': str(i), 'reward': 1.0, 'samples': [sample]}])\n"
              "    time.sleep(0.002)\n")
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 60
    while time.time() < deadline and (not path.exists() or path.read_text().count("\n") < 5):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = read_rollouts(path)
    assert len(kept) >= 5
    assert [r["job"] for r in kept] == [str(i) for i in range(len(kept))]  # every finished one, in order


def test_credit_goes_to_used_calls_else_the_last_unrejected_one():
    def call(text, **extra):
        return {"type": "llm_call", "messages": chat("q"), "completion": text, "finish_reason": "stop", **extra}
    assert [c["completion"] for c in credited_calls([call("a"), {"type": "tool"}, call("b")])] == ["b"]
    assert [c["completion"] for c in credited_calls([call("a", used=True), call("b")])] == ["a"]
    assert [c["completion"] for c in credited_calls([call("a"), call("fallback", used=False)])] == ["a"]
    assert credited_calls([{"type": "tool"}]) == []
    # a logged fallback replaced every reply before it (a retry included); a later call counts again
    assert credited_calls([call("a"), call("retry"), {"type": "fallback"}]) == []
    assert [c["completion"] for c in credited_calls([call("a"), {"type": "fallback"}, call("b")])] == ["b"]
    assert [c["completion"] for c in credited_calls([call("a", used=True), {"type": "fallback"}])] == ["a"]

    events = [call("draft"), call("final", finish_reason="length")]
    served = [call("draft", temperature=0.8, seed=2), call("final", finish_reason="length", temperature=0.8, seed=3)]
    [s] = samples_from_events(events, 0.5, group="ex1", example_id="ex1", served=served)
    assert (s.completion, s.reward, s.eos, s.sampling_temperature, s.seed) == ("final", 0.5, False, 0.8, 3)
    assert samples_from_events(events, 0.5, group="g", served=[call("something else")]) == []  # forged
    assert samples_from_events(events, 0.5, group="g", served=[]) == []       # nothing served: nothing to train


def test_bad_inputs_name_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="finite"):
        Sample(prompt="p", completion="c", reward=float("nan"))
    with pytest.raises(ValueError, match="list of messages"):
        Sample(prompt=3, completion="c")
    lora = OmegaConf.load(REPO / "conf" / "lora" / "default.yaml")
    with pytest.raises(ValueError, match="unknown training algorithm 'dpo'"):
        train_adapter(None, lora, tmp_path, scored({"a": [1, 0]}), algorithm="dpo", steps=1, out_dir=tmp_path)
    bad = OmegaConf.merge(lora, {"grpo": {"cliip": 0.1}})
    with pytest.raises(ValueError, match="lora.grpo.cliip"):
        train_adapter(None, bad, tmp_path, scored({"a": [1, 0]}), algorithm="grpo", steps=1, out_dir=tmp_path)


# ---- real steps on the embedded model ----------------------------------------------------

MODEL_CFG = OmegaConf.load(REPO / "conf" / "model" / "smollm2_135m.yaml")
# rollout_epochs off: these tests take an exact number of steps on a few samples
LORA_CFG = OmegaConf.merge(OmegaConf.load(REPO / "conf" / "lora" / "default.yaml"),
                           {"batch_size": 4, "max_seq_len": 96, "grpo": {"kl": 0.05}, "rollout_epochs": None})


@pytest.fixture(scope="module")
def cache_dir(model_cache_dir):
    return model_cache_dir   # the session's converted model (tests/conftest.py)


@pytest.fixture(scope="module")
def rollout():
    """Two prompts, four samples each, binary-ish rewards with spread in both groups."""
    out = []
    for g, question in enumerate(["Name a colour.", "Name a fruit."]):
        for k, answer in enumerate(["Blue.", "Red, I think.", "Apple.", "I do not know."]):
            out.append(Sample(prompt=chat(question), completion=answer, reward=float((g + k) % 2) + 0.5 * k,
                              group=question, sampling_temperature=0.8, example_id=str(g), seed=k))
    return out


@pytest.fixture(scope="module")
def init_adapter(cache_dir, rollout, tmp_path_factory):
    out = tmp_path_factory.mktemp("init") / "adapter"
    train_adapter(MODEL_CFG, LORA_CFG, cache_dir, rollout, algorithm="sft", steps=1, out_dir=out)
    return out


def adapter_tensors(path: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(path / "adapter_model.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["sft", "rs_sft", "grpo", "eaw", "ppo"])
def test_real_steps_continue_the_init_adapter_and_save_a_loadable_one(algorithm, cache_dir, rollout,
                                                                      init_adapter, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / algorithm
    result = train_adapter(MODEL_CFG, LORA_CFG, cache_dir, rollout, algorithm=algorithm, steps=2, out_dir=out,
                           init_adapter=init_adapter, threshold=0.6)
    assert result.algorithm == algorithm and result.steps == 2 and len(result.losses) == 2
    assert all(math.isfinite(x) for x in result.losses)
    assert result.tokens_per_s > 0 and result.peak_rss_mb > 0
    assert json.loads((out / "COMPLETE").read_text())["algorithm"] == algorithm
    before, after = adapter_tensors(init_adapter), adapter_tensors(out)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained from the init adapter
    if algorithm == "ppo":
        assert (out / "extra_state.pt").is_file()  # the value head continues next time
    base = AutoModelForCausalLM.from_pretrained(resolve_model_dir(MODEL_CFG, cache_dir))
    model = PeftModel.from_pretrained(base, str(out))
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert torch.isfinite(logits).all()


@pytest.mark.slow
def test_uneven_micro_batches_take_the_same_optimizer_steps_as_whole_batches(cache_dir, rollout, tmp_path,
                                                                              monkeypatch):
    """6 samples, lora.batch_size=8, micro_batch_size=4: one step split 4 + 2. Each loss is
    normalised by the whole step, so the split changes nothing; gradients are clipped."""
    import lightning.pytorch as pl

    made = []
    real_trainer = pl.Trainer
    monkeypatch.setattr(pl, "Trainer", lambda **kw: made.append(kw) or real_trainer(**kw))
    six = rollout[:6]     # group 0's four samples and two of group 1's: every one has an advantage
    exact = OmegaConf.merge(LORA_CFG, {"precision": "32-true", "batch_size": 8, "micro_batch_size": None})
    whole = train_adapter(MODEL_CFG, exact, cache_dir, six, algorithm="grpo", steps=2, out_dir=tmp_path / "a")
    micro = train_adapter(MODEL_CFG, OmegaConf.merge(exact, {"micro_batch_size": 4}), cache_dir, six,
                          algorithm="grpo", steps=2, out_dir=tmp_path / "b")
    assert whole.examples == micro.examples == 6
    assert len(micro.losses) == len(whole.losses) == 2   # one loss per optimizer step, not per micro-batch
    assert micro.losses[0] == approx(whole.losses[0], rel=1e-5, abs=1e-7)   # same rows, same parameters
    assert micro.losses[1] == approx(whole.losses[1], rel=1e-3, abs=1e-4)
    assert [kw["accumulate_grad_batches"] for kw in made] == [1, 2]
    assert {kw["gradient_clip_val"] for kw in made} == {1.0}    # lora.gradient_clip_val


@pytest.mark.slow
@pytest.mark.parametrize("algorithm,loss_type,precision", [("grpo", "dapo", "auto"), ("grpo", "dr_grpo", "32-true"),
                                                           ("grpo", "grpo", "32-true"), ("eaw", None, "32-true")])
def test_the_importance_ratio_is_one_at_step_zero_on_the_real_model(algorithm, loss_type, precision, cache_dir,
                                                                    rollout, tmp_path):
    """The sampling policy's log-probs are recomputed (temperature, precision, no dropout), so
    the first step's ratio is 1 under every loss type and precision (auto: bf16-mixed where the
    CPU has bf16): nothing clipped, and with the grpo type the loss is -mean(advantage) = 0
    (each group's advantages sum to 0; two micro-batches, one step)."""
    lora = OmegaConf.merge(LORA_CFG, {"precision": precision, "batch_size": 8, "micro_batch_size": 4,
                                      "grpo": {"kl": 0.0, "loss_type": loss_type or "dapo"}})
    result = train_adapter(MODEL_CFG, lora, cache_dir, rollout, algorithm=algorithm, steps=1, out_dir=tmp_path / "a")
    assert result.metrics["train/ratio_dev"] < 1e-4
    assert result.metrics["train/clip_frac"] == 0.0
    if loss_type == "grpo":
        assert abs(result.losses[0]) < 1e-5
    else:
        assert result.losses[0] != 0.0 and math.isfinite(result.losses[0])


def test_the_config_thresholds_are_the_choice_keywords():
    thresholds = OmegaConf.load(REPO / "conf" / "lora" / "default.yaml").thresholds
    stats = reward_stats(groups_of(8, [0] * 7 + [1.0, 1.0, 1.0]))  # 70% zero: not sparse at 0.8
    assert choose_algorithm(stats, has_gold=False, format_rate=0, prior_shape="graded", **thresholds)[0] == "grpo"
    lower = {**thresholds, "sparse_zero_share": 0.6}
    assert choose_algorithm(stats, has_gold=False, format_rate=0, prior_shape="graded", **lower)[0] == "eaw"


def test_activation_checkpointing_leaves_the_completion_gradient_unchanged():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, use_cache=False)
    model = get_peft_model(LlamaForCausalLM(cfg), LoraConfig(r=2, target_modules=["q_proj", "down_proj"],
                                                             init_lora_weights=False)).train()
    batch = collate([{"input_ids": [3, 4, 5, 6], "n_prompt": 2}, {"input_ids": [7, 8, 9], "n_prompt": 1}], pad_id=0)

    def grads():
        model.zero_grad()
        logp, _ = completion_forward(model, batch)
        sft_loss(logp, batch["completion_mask"]).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    plain = grads()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert model.get_base_model().model.gradient_checkpointing
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys()
    assert all(torch.allclose(plain[n], checkpointed[n], atol=1e-6) for n in plain)


def test_the_model_configs_own_lora_targets_are_the_ones_trained(cache_dir):
    """gpt-oss names its own modules (model.lora_target_modules): the trainer must adapt those,
    not lora.target_modules' SmolLM2/Llama defaults (the memory plan already counted them)."""
    from sia.train.lora_module import load_lora_model

    model_cfg = OmegaConf.merge(MODEL_CFG, {"lora_target_modules": ["q_proj"]})
    model_dir = resolve_model_dir(MODEL_CFG, cache_dir)
    model = load_lora_model(model_cfg, LORA_CFG, model_dir)
    adapted = {name.split(".")[-4] for name, _ in model.named_parameters() if "lora_A" in name}
    assert adapted == {"q_proj"}
    default = load_lora_model(MODEL_CFG, LORA_CFG, model_dir)
    assert {name.split(".")[-4] for name, _ in default.named_parameters() if "lora_A" in name} == set(LORA_CFG.target_modules)


def test_equal_rewards_with_a_rounding_variance_are_no_spread_for_the_choice_grpo_and_eaw():
    """Three equal graded rewards (0.1) have a variance of ~2e-34 from the mean's rounding: the
    choice must not read that as spread and pick grpo, which then finds every advantage 0 (seen on
    scrna_denoise in benchmarks/weights_algorithms.py); all three share one test."""
    from sia.train import eaw, grpo

    flat = scored({f"g{i}": [0.1, 0.1, 0.1] for i in range(8)})
    stats = reward_stats(flat, threshold=0.05)
    assert stats.spread_share == 0.0
    assert choose_algorithm(stats, has_gold=False, format_rate=0, prior_shape="graded", **THRESHOLDS)[0] == "rs_sft"
    for module in (grpo, eaw):
        with pytest.raises(ValueError, match="share one reward"):
            module.prepare(flat, {"scale_rewards": "group", "loss_type": "dapo", "kl_target": 0.6931})
    small = scored({f"g{i}": [0.1, 0.1 + 1e-3, 0.1] for i in range(8)})   # a real, small difference
    assert reward_stats(small, threshold=0.05).spread_share == 1.0
