"""LoRA SFT with Lightning: tokenisation that matches inference, a short real training run,
and serving the trained adapter through the engine."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sia.engine import build_engine
from sia.engine.base import GenRequest
from sia.engine.common import encode_text, load_tokenizer
from sia.engine.model_cache import resolve_model_dir
from sia.train import Sample, train_sft
from sia.train.batching import collate, encode_sample

REPO = Path(__file__).resolve().parent.parent
MODEL_CFG = OmegaConf.load(REPO / "conf" / "model" / "smollm2_135m.yaml")
MODEL_CFG.pop("defaults")  # what Hydra composes from model/engine/hf.yaml
MODEL_CFG.engine = OmegaConf.load(REPO / "conf" / "model" / "engine" / "hf.yaml")
# Small, fast settings that still have to learn a fixed, unusual answer.
LORA_CFG = OmegaConf.merge(OmegaConf.load(REPO / "conf" / "lora" / "default.yaml"),
                           {"lr": 2e-3, "rank": 8, "batch_size": 4})

ANSWER = "The secret word is PAMPLEMOUSSE."
QUESTIONS = ["What is the secret word?", "Tell me the secret word.", "Which word is secret?",
             "Say the secret word please."]
PAIRS = [{"messages": [{"role": "user", "content": q}], "completion": ANSWER} for q in QUESTIONS]


def test_empty_pairs_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="at least one SFT pair"):
        train_sft(MODEL_CFG, LORA_CFG, tmp_path, [], steps=3, out_dir=tmp_path / "a")


def test_bad_pairs_name_the_expected_shape(tmp_path):
    with pytest.raises(ValueError, match=r"SFT pair 1 must be .*got \['completion', 'prompt'\]"):
        train_sft(MODEL_CFG, LORA_CFG, tmp_path, [PAIRS[0], {"prompt": "x", "completion": "y"}], steps=1,
                  out_dir=tmp_path / "a")
    with pytest.raises(ValueError, match="steps >= 1"):
        train_sft(MODEL_CFG, LORA_CFG, tmp_path, PAIRS, steps=0, out_dir=tmp_path / "a")


def test_collate_pads_right_and_scores_completion_tokens_only():
    batch = collate([{"input_ids": [5, 6, 7], "n_prompt": 1}, {"input_ids": [8, 9], "n_prompt": 1}], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["targets"].tolist() == [[6, 7], [9, 0]]
    assert batch["completion_mask"].tolist() == [[True, True], [True, False]]


@pytest.fixture(scope="module")
def tokenizer(model_cache_dir):
    return load_tokenizer(resolve_model_dir(MODEL_CFG, model_cache_dir))


@pytest.mark.slow
def test_encode_sample_matches_inference_prompt_and_learns_to_stop(tokenizer):
    pair = PAIRS[0]
    text = tokenizer.apply_chat_template(pair["messages"], add_generation_prompt=True, tokenize=False)
    prompt_ids = encode_text(tokenizer, text)
    example = encode_sample(tokenizer, Sample(prompt=pair["messages"], completion=ANSWER), max_seq_len=384)
    n = len(prompt_ids)
    assert example["input_ids"][:n] == prompt_ids and example["n_prompt"] == n
    completion = example["input_ids"][n:]
    assert completion[-1] == tokenizer.eos_token_id and tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.decode(completion[:-1]) == ANSWER
    # The engine's prompt text gives the same ids as the chat; a reply cut at its length limit
    # did not end the turn, so no end-of-turn token is trained.
    as_text = encode_sample(tokenizer, Sample(prompt=text, completion=ANSWER, eos=False), max_seq_len=384)
    assert as_text["input_ids"] == example["input_ids"][:-1]


@pytest.mark.slow
def test_encode_sample_refuses_a_sample_longer_than_max_seq_len(tokenizer):
    """Never cut: a prompt cut from the left is a prompt the model never saw (issue 22)."""
    sample = Sample(prompt=[{"role": "user", "content": "blah " * 200 + "END"}], completion=ANSWER)
    full = encode_sample(tokenizer, sample, max_seq_len=10_000)
    assert encode_sample(tokenizer, sample, max_seq_len=len(full["input_ids"]))["input_ids"] == full["input_ids"]
    assert encode_sample(tokenizer, sample, max_seq_len=len(full["input_ids"]) - 1) is None
    too_long = Sample(prompt=[{"role": "user", "content": "?"}], completion="word " * 100)
    assert encode_sample(tokenizer, too_long, max_seq_len=20) is None


@pytest.fixture(scope="module")
def trained(model_cache_dir, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("sft") / "adapter"
    result = train_sft(MODEL_CFG, LORA_CFG, model_cache_dir, PAIRS, steps=10, out_dir=out_dir, seed=0,
                       progress=False)
    return result


@pytest.mark.slow
def test_sft_lowers_the_loss_and_saves_the_adapter(trained):
    assert trained.steps == 10 and len(trained.losses) == 10 and trained.n_examples == 4
    assert sum(trained.losses[-3:]) / 3 < trained.losses[0] / 4
    adapter_dir = Path(trained.adapter_dir)
    assert (adapter_dir / "adapter_config.json").exists() and (adapter_dir / "adapter_model.safetensors").exists()
    assert json.loads((adapter_dir / "COMPLETE").read_text())["steps"] == 10
    assert not list(adapter_dir.parent.glob(".adapter.*"))  # the staging dir was renamed away


@pytest.mark.slow
def test_served_adapter_gives_the_taught_answer_and_base_is_unchanged(trained, model_cache_dir):
    engine = build_engine(MODEL_CFG, model_cache_dir)
    requests = [GenRequest(messages=p["messages"], max_tokens=16) for p in PAIRS[:2]]
    base_before = [r.text for r in engine.generate(requests)]
    assert not any(t.startswith(ANSWER) for t in base_before)

    engine.add_adapter("v1", trained.adapter_dir)
    tuned = engine.generate(requests, adapter="v1")
    assert all(r.text.startswith(ANSWER) for r in tuned)
    assert all(r.finish_reason == "stop" for r in tuned)  # it also learned to end its turn
    assert [r.text for r in engine.generate(requests)] == base_before

    engine.add_adapter("v1", trained.adapter_dir)  # re-adding a name replaces the adapter
    assert [r.text for r in engine.generate(requests, adapter="v1")] == [r.text for r in tuned]


@pytest.mark.slow
def test_training_continues_from_an_existing_adapter(trained, model_cache_dir, tmp_path):
    more = train_sft(MODEL_CFG, LORA_CFG, model_cache_dir, PAIRS, steps=1, out_dir=tmp_path / "next",
                     init_adapter=trained.adapter_dir, progress=False)
    # A fresh adapter starts at the base model's loss; a continued one where training left off.
    assert more.losses[0] < trained.losses[0] / 10
    assert (tmp_path / "next" / "COMPLETE").exists()
