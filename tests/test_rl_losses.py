"""The reward-driven losses of issue 22: GRPO's loss types and reward scaling, step-level loss
normalisation across uneven micro-batches (gradients compared with one whole batch), PPO's
advantages (lam=1, whitening, value clipping), every loss on the ``meta`` device (device
mixing caught without a GPU), and the settings' checks."""
from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from conftest import REPO
from sia.train.batching import BucketBatchSampler, collate
from sia.train.grpo import group_advantages, grpo_loss
from sia.train.grpo import prepare as grpo_prepare
from sia.train.lora_module import completion_forward, reduce_tokens
from sia.train.ppo import gae, outcome_rewards, ppo_loss, whiten
from sia.train.samples import Sample
from sia.train.settings import algorithm_settings, gradient_clip
from sia.train.sft import sft_loss
from sia.train.trainer import StepSampler, _StepRows, step_collate

approx = pytest.approx
LORA = OmegaConf.load(REPO / "conf" / "lora" / "default.yaml")
GRPO = algorithm_settings(LORA, "grpo")   # lora.grpo as the trainer gets it


# ---- loss types and reward scaling -------------------------------------------------------

def toy():
    """Two rows of 3 and 1 completion tokens; per-token losses 1, 2, 3 | 4 (padding junk)."""
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 99.0, 99.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    return per_token, mask


def test_dapo_weighs_every_token_of_the_step_the_same():
    per_token, mask = toy()
    assert float(reduce_tokens(per_token, mask, "dapo")) == approx(10 / 4)
    # half of a step of 8 tokens: the other micro-batch's tokens count in the divisor
    assert float(reduce_tokens(per_token, mask, "dapo", step_tokens=torch.tensor(8.0))) == approx(10 / 8)


def test_dr_grpo_divides_by_rows_times_a_constant_length():
    per_token, mask = toy()
    assert float(reduce_tokens(per_token, mask, "dr_grpo", max_len=5)) == approx(10 / (2 * 5))
    assert float(reduce_tokens(per_token, mask, "dr_grpo")) == approx(10 / (2 * 3))   # no constant: batch width
    assert float(reduce_tokens(per_token, mask, "dr_grpo", step_rows=4, max_len=5)) == approx(10 / 20)


def test_grpo_type_averages_each_row_then_rows():
    per_token, mask = toy()
    assert float(reduce_tokens(per_token, mask, "grpo")) == approx((2.0 + 4.0) / 2)
    assert float(reduce_tokens(per_token, mask, "grpo", step_rows=4)) == approx((2.0 + 4.0) / 4)
    with pytest.raises(ValueError, match="loss_type"):
        reduce_tokens(per_token, mask, "token_mean")


def test_dapo_gives_a_long_reply_the_weight_of_its_tokens():
    """The length bias the per-row mean has: at ratio 1 the gradient per token is -A / tokens of
    the step under dapo (the same for both rows), -A / (rows x row length) under grpo."""
    mask = torch.tensor([[True, True, True, True], [True, False, False, False]])
    adv = torch.tensor([1.0, 1.0])
    grads = {}
    for loss_type in ("dapo", "grpo"):
        logp = torch.zeros(2, 4, requires_grad=True)
        loss, _ = grpo_loss(logp, logp.detach(), adv, mask, clip=0.2, kl_coef=0.0, loss_type=loss_type)
        loss.backward()
        grads[loss_type] = logp.grad
    assert grads["dapo"][0, 0] == approx(grads["dapo"][1, 0]) == approx(-1 / 5)
    assert float(grads["grpo"][0, 0]) == approx(-1 / 8) and float(grads["grpo"][1, 0]) == approx(-1 / 2)


def test_scale_rewards_none_keeps_the_reward_difference():
    rewards, groups = [1.0, 0.0, 0.2, 0.0], list("aabb")
    assert group_advantages(rewards, groups, "group") == approx([1, -1, 1, -1], abs=1e-4)   # both +-1: difficulty bias
    assert group_advantages(rewards, groups, "none") == approx([0.5, -0.5, 0.1, -0.1])
    samples = [Sample(prompt="p", completion=str(i), reward=r, group=g)
               for i, (r, g) in enumerate(zip(rewards, groups))]
    kept, note = grpo_prepare(samples, {**GRPO, "scale_rewards": "none", "loss_type": "dr_grpo"})
    assert [f["advantage"] for _, f in kept] == approx([0.5, -0.5, 0.1, -0.1]) and "dr_grpo" in note
    with pytest.raises(ValueError, match="scale_rewards"):
        group_advantages(rewards, groups, "batch")


# ---- uneven micro-batches: each row and token its share of the step ---------------------

@pytest.fixture(scope="module")
def tiny():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    return get_peft_model(LlamaForCausalLM(cfg), LoraConfig(r=2, target_modules=["q_proj", "v_proj"],
                                                            init_lora_weights=False)).eval()


# 5 rows, completions of 6, 1, 2, 3 and 9 tokens: a step of 5 split 4 + 1 (lora.batch_size=8,
# micro_batch_size=4 and 5 samples), the lone row a long one
ROWS = [{"input_ids": list(range(3, 3 + n_prompt + n)), "n_prompt": n_prompt, "advantage": a, "reward": r,
         "old_logp": [-1.0] * n, "returns": [r] * n, "token_advantage": [a] * n, "old_values": [0.1] * n}
        for n_prompt, n, a, r in [(2, 6, 1.0, 1.0), (3, 1, -0.5, 0.0), (2, 2, 0.7, 0.5), (1, 3, -1.2, 0.0),
                                  (2, 9, 0.4, 1.0)]]


def losses(tiny, batch, kind, counts):
    logp, hidden = completion_forward(tiny, batch)
    mask = batch["completion_mask"]
    if kind == "sft":
        return sft_loss(logp, mask, counts.get("step_tokens"))
    if kind == "ppo":
        values = hidden.sum(-1)   # a stand-in value head that depends on the weights
        return ppo_loss(logp, batch["old_logp"], values, batch["returns"], batch["token_advantage"], mask, 0.2, 0.5,
                        old_values=batch["old_values"], value_clip=0.2, step_tokens=counts.get("step_tokens"))[0]
    return grpo_loss(logp, batch["old_logp"], batch["advantage"], mask, clip=0.2, kl_coef=0.0, loss_type=kind,
                     **counts)[0]


def grads_of(tiny, micro_batches: list[list[dict]], kind: str, step_counts: bool) -> dict:
    """Gradients of one optimizer step over these micro-batches, as Lightning accumulates them
    (each micro-batch's loss divided by accumulate_grad_batches = the number of micro-batches,
    times that again where the loss carries the step's counts, as LoraModule does)."""
    tiny.zero_grad()
    accumulate = len(micro_batches)
    rows = sum(len(m) for m in micro_batches)
    tokens = sum(len(r["input_ids"]) - r["n_prompt"] for m in micro_batches for r in m)
    for rows_of in micro_batches:
        batch = collate(rows_of, pad_id=0)
        counts = {"step_tokens": torch.tensor(float(tokens)), "step_rows": torch.tensor(float(rows)),
                  "max_len": 9} if step_counts else {"max_len": 9}
        loss = losses(tiny, batch, kind, counts)
        (loss * (accumulate if step_counts else 1) / accumulate).backward()
    return {n: p.grad.clone() for n, p in tiny.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("kind", ["dapo", "dr_grpo", "grpo", "sft", "ppo"])
def test_uneven_micro_batches_give_each_row_its_share(tiny, kind):
    whole = grads_of(tiny, [ROWS], kind, step_counts=True)
    split = grads_of(tiny, [ROWS[:4], ROWS[4:]], kind, step_counts=True)
    assert all(torch.allclose(whole[n], split[n], rtol=1e-4, atol=1e-7) for n in whole)
    # what a per-micro-batch mean did: the lone row counted like the other four together
    per_micro = grads_of(tiny, [ROWS[:4], ROWS[4:]], kind, step_counts=False)
    assert not all(torch.allclose(whole[n], per_micro[n], rtol=1e-3, atol=1e-6) for n in whole)


def test_step_sampler_hands_each_micro_batch_its_steps_counts():
    lengths = [8, 3, 4, 4, 11, 9, 6, 5, 12, 10]            # 10 rows: steps of 4, 4 and a short 2
    prompt = 2
    examples = [{"input_ids": list(range(n)), "n_prompt": prompt} for n in lengths]
    inner = BucketBatchSampler(lengths, 4, seed=1, micro_batch_size=2)
    sampler = StepSampler(inner, accumulate=2, completion_lengths=[n - prompt for n in lengths])
    micro = list(sampler)
    assert len(micro) == len(sampler) == 5
    steps = [micro[0] + micro[1], micro[2] + micro[3], micro[4]]
    for step in steps:
        want = (len(step), sum(lengths[i] - prompt for i, _, _ in step))
        assert {(rows, tokens) for _, rows, tokens in step} == {want}
    assert sorted(i for step in steps for i, _, _ in step) == list(range(10))
    batch = step_collate([_StepRows(examples)[key] for key in micro[4]], pad_id=0)
    assert float(batch["step_rows"]) == 2
    assert float(batch["step_tokens"]) == sum(lengths[i] - prompt for i, _, _ in micro[4])


# ---- PPO: advantages a fresh value head does not invert ---------------------------------

def test_zero_value_head_with_lam_one_keeps_every_winning_token_positive():
    n = 100
    mask = torch.ones(2, n, dtype=torch.bool)
    values = torch.zeros(2, n)
    reward = torch.tensor([1.0, 0.0])
    adv, ret = gae(outcome_rewards(reward, mask), values, mask, gamma=1.0, lam=1.0)
    assert adv[0].tolist() == [1.0] * n and adv[1].tolist() == [0.0] * n   # Monte Carlo: R - V on every token
    white = whiten([adv[0].tolist(), adv[1].tolist()])
    assert min(white[0]) > 0 > max(white[1])
    assert white[0][0] == approx(white[0][-1])        # the first token is credited like the last
    # what lam=0.95 did: the first token got 0.95^99 of the outcome
    adv95, _ = gae(outcome_rewards(reward, mask), values, mask, gamma=1.0, lam=0.95)
    assert float(adv95[0, 0]) == approx(0.95 ** 99, rel=1e-4)
    assert sum(a < 0 for a in whiten([adv95[0].tolist(), adv95[1].tolist()])[0]) > 0


def test_whitening_weighs_replies_not_tokens():
    """A long losing reply does not drag the baseline: every reply weighs the same."""
    long_loser, short_winner = [0.0] * 90, [1.0] * 10
    white = whiten([long_loser, short_winner])
    assert white[1][0] == approx(-white[0][0]) and white[1][0] == approx(1.0, rel=1e-4)
    assert whiten([[0.5, 0.5], [0.5]]) == [[0.0, 0.0], [0.0]]   # no spread: centred, not divided by ~0


def test_value_clipping_takes_the_larger_error_around_the_sampling_time_value():
    mask = torch.tensor([[True]])
    logp = torch.zeros(1, 1)
    kw = dict(advantages=torch.zeros(1, 1), mask=mask, clip=0.2, vf_coef=1.0)
    returns, old = torch.tensor([[1.0]]), torch.tensor([[0.0]])
    # V jumped 0 -> 0.9 towards R=1: the clipped value 0.2 is further, so its error counts
    _, m = ppo_loss(logp, logp, torch.tensor([[0.9]]), returns, old_values=old, value_clip=0.2, **kw)
    assert float(m["value_loss"]) == approx(0.5 * 0.8 ** 2)
    _, m = ppo_loss(logp, logp, torch.tensor([[0.9]]), returns, **kw)           # unclipped
    assert float(m["value_loss"]) == approx(0.5 * 0.1 ** 2)


# ---- every step's math on the meta device -----------------------------------------------

class _FakeCausalLM(torch.nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.config = type("C", (), {"hidden_size": hidden})()


class _FakePeft(torch.nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.base = _FakeCausalLM(hidden)

    def get_base_model(self):
        return self.base


def test_grpo_and_ppo_steps_stay_on_the_tensors_device():
    """On the meta device any tensor made on the CPU by the loss code (torch.zeros without a
    device, a CPU arange as index) raises: device mixing is caught without a GPU."""
    from sia.train import ppo

    meta = torch.device("meta")
    mask = torch.ones(3, 5, dtype=torch.bool, device=meta)
    logp = torch.zeros(3, 5, device=meta, requires_grad=True)
    old = torch.zeros(3, 5, device=meta)
    counts = {"step_tokens": torch.tensor(15.0, device=meta), "step_rows": torch.tensor(3.0, device=meta),
              "max_len": 5}
    for loss_type in ("dapo", "dr_grpo", "grpo"):
        loss, metrics = grpo_loss(logp, old, torch.zeros(3, device=meta), mask, clip=0.2, kl_coef=0.1,
                                  ref_logp=old, loss_type=loss_type, **counts)
        assert loss.device == meta and loss.shape == () and all(v.device == meta for v in metrics.values())
    assert sft_loss(logp, mask, counts["step_tokens"]).device == meta

    module = ppo.Module(_FakePeft(16), lr=1e-3, settings={"gamma": 1.0, "lam": 1.0, "clip": 0.2, "vf_coef": 0.5,
                                                          "value_clip": 0.2}).to(meta)
    hidden = torch.zeros(3, 5, 16, device=meta)
    values = module.value_head(hidden).squeeze(-1)
    fields = module.advantages({"completion_mask": mask, "reward": torch.zeros(3, device=meta)}, values)
    assert all(v.device == meta for v in fields.values())
    loss, metrics = ppo_loss(logp, old, values, fields["returns"], fields["token_advantage"], mask, 0.2, 0.5,
                             old_values=values.detach(), value_clip=0.2, step_tokens=counts["step_tokens"])
    assert loss.device == meta and all(v.device == meta for v in metrics.values())


# ---- settings: known keys, values checked, one source of defaults ------------------------

def test_settings_come_from_the_config_and_bad_values_name_key_and_fix():
    grpo = algorithm_settings(LORA, "grpo")
    assert (grpo["loss_type"], grpo["scale_rewards"]) == ("dapo", "group")
    assert algorithm_settings(LORA, "eaw")["kl_target"] == approx(math.log(2), abs=1e-4)
    assert algorithm_settings(LORA, "ppo")["lam"] == 1.0
    assert gradient_clip(LORA) == 1.0 and gradient_clip(OmegaConf.merge(LORA, {"gradient_clip_val": None})) is None
    cases = [({"grpo": {"loss_type": "token_mean"}}, "grpo", "lora.grpo.loss_type='token_mean' is not one of"),
             ({"grpo": {"scale_rewards": "batch"}}, "grpo", "lora.grpo.scale_rewards='batch'"),
             ({"ppo": {"lam": 1.5}}, "ppo", "lora.ppo.lam=1.5 must be a number"),
             ({"eaw": {"beta": 5.0}}, "eaw", "set lora.eaw.kl_target"),
             ({"eaw": {"kl_target": 0}}, "eaw", "lora.eaw.kl_target=0 must be a number > 0")]
    for override, name, message in cases:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
            algorithm_settings(OmegaConf.merge(LORA, override), name)
    with pytest.raises(ValueError, match=r"lora\.grpo\.loss_type is not set"):
        algorithm_settings(OmegaConf.create({"grpo": {"clip": 0.2, "kl": 0.0}}), "grpo")
    with pytest.raises(ValueError, match=r"lora\.gradient_clip_val=-1.0 must be a number > 0"):
        gradient_clip(OmegaConf.merge(LORA, {"gradient_clip_val": -1.0}))


def test_a_lora_config_without_an_optional_key_gets_the_schema_default():
    """A plain config (a dict, a YAML loaded without Hydra) lacking a key reads the schema's
    default, the one place it lives: gradient clipping stays on (LoraConfig: 1.0), not off."""
    from sia.schema import LoraConfig
    from sia.train.settings import capped_steps, lora_setting, micro_batches

    bare = OmegaConf.create({"batch_size": 8})
    assert gradient_clip(bare) == LoraConfig.gradient_clip_val == 1.0
    assert micro_batches(bare) == (8, 1) and capped_steps(bare, "grpo", 50, 16) == 50   # None: whole batches, no cap
    assert lora_setting(bare, "activation_checkpointing") is LoraConfig.activation_checkpointing
    with pytest.raises(KeyError, match="rank has no default"):   # a ??? key must be set
        lora_setting(bare, "rank")


def test_eaw_trains_without_a_kl_term_and_with_token_level_reduction():
    """lora.eaw has no kl or loss_type: the module fixes them instead of borrowing grpo's defaults."""
    from sia.train import eaw

    module = eaw.Module(_FakePeft(16), lr=1e-3, settings=algorithm_settings(LORA, "eaw"))
    assert (module.settings["kl"], module.settings["loss_type"], module.needs_ref_logp) == (0.0, "dapo", False)


def test_a_bad_loss_type_stops_the_run_at_the_config_check(compose_cfg):
    from sia.config import ConfigError, validate

    cfg = compose_cfg("lora.grpo.loss_type=token_mean")
    with pytest.raises(ConfigError) as err:
        validate(cfg, [])
    assert "lora.grpo.loss_type='token_mean'" in str(err.value) and "lora.grpo.loss_type=dapo" in str(err.value)


def test_ratio_based_algorithms_leave_out_samples_drawn_with_top_p_below_one():
    """Their sampling probabilities are a renormalised nucleus: the recomputed old log-probs
    (softmax at the temperature) would not describe them, and step 0's ratio would not be 1."""
    from sia.train.eaw import prepare as eaw_prepare

    samples = [Sample(prompt="p", completion=str(i), reward=float(i % 2), group="g", top_p=tp)
               for i, tp in enumerate([1.0, None, 0.9, 0.9])]
    kept, _ = grpo_prepare(samples, GRPO)
    assert [s.completion for s, _ in kept] == ["0", "1"]
    assert [s.completion for s, _ in eaw_prepare(samples, {"kl_target": math.log(2)})[0]] == ["0", "1"]
    with pytest.raises(ValueError, match="top_p < 1"):
        grpo_prepare(samples[2:], GRPO)
