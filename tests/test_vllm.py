"""The vLLM engine against the HF engine on the embedded SmolLM2-135M, greedy: same texts, same
raw log-probabilities, adapters from the project's trainer served without restart.

Runs only where vLLM is installed: ``bash scripts/setup-vllm.sh`` then
``SIA_EXPECT_VLLM=1 .venv-vllm/bin/python -m pytest -q -m vllm tests/test_vllm.py``.
Elsewhere the module skips with one line; with SIA_EXPECT_VLLM=1 (CI) a missing vLLM fails."""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from support.vllm_guard import require_vllm

require_vllm()

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from sia.engine.base import GenRequest  # noqa: E402
from sia.engine.hf import HFEngine  # noqa: E402
from sia.engine.vllm_engine import AdapterNotFound, VLLMEngine  # noqa: E402
from sia.train import train_sft  # noqa: E402

pytestmark = pytest.mark.vllm

REPO = Path(__file__).resolve().parent.parent
# float32 on both engines: the tests compare their numbers (bf16 rounding differs by kernel)
MODEL_CFG = OmegaConf.merge(OmegaConf.load(REPO / "conf" / "model" / "smollm2_135m.yaml"), {"dtype": "float32"})
LORA_CFG = OmegaConf.merge(OmegaConf.load(REPO / "conf" / "lora" / "default.yaml"),
                           {"lr": 2e-3, "rank": 8, "batch_size": 4})
MAX_TOKENS = 24
TOPICS = ["the sea", "a lighthouse", "autumn", "a lost key", "the moon", "a city at night", "a library",
          "a village", "a robot", "snow", "a train", "a market", "a forest", "a dragon", "a storm", "a letter"]
QUESTIONS = ["What is the secret word?", "Tell me the secret word.", "Which word is secret?",
             "Say the secret word please."]


def _prompts() -> list[GenRequest]:
    """32 fixed prompts; every fourth one has stop strings, so their handling is compared too."""
    forms = ["Write one sentence about {}.", "Describe {} briefly."]
    requests = []
    for i in range(32):
        text = forms[i // 16].format(TOPICS[i % 16])
        requests.append(GenRequest(messages=[{"role": "user", "content": text}], max_tokens=MAX_TOKENS,
                                   stop=[".", "\n"] if i % 4 == 3 else None))
    return requests


def _pairs(answer: str) -> list[dict]:
    return [{"messages": [{"role": "user", "content": q}], "completion": answer} for q in QUESTIONS]


@pytest.fixture(scope="module")
def cache_dir(model_cache_dir):
    # A shared converted model (SIA_CACHE_DIR) saves the GGUF conversion on every run.
    return Path(os.environ["SIA_CACHE_DIR"]) if os.environ.get("SIA_CACHE_DIR") else model_cache_dir


@pytest.fixture(scope="module")
def vllm_engine(cache_dir):
    return VLLMEngine(OmegaConf.merge(MODEL_CFG, {"max_lora_rank": 8}), cache_dir)


@pytest.fixture(scope="module")
def hf_engine(cache_dir, vllm_engine):
    return HFEngine(MODEL_CFG, cache_dir)


@pytest.fixture(scope="module")
def adapters(cache_dir, tmp_path_factory, vllm_engine):
    """Two adapters trained by the project's trainer after the vLLM engine started."""
    out = tmp_path_factory.mktemp("adapters")
    paths = {}
    for name, answer in (("pamplemousse", "The secret word is PAMPLEMOUSSE."), ("rhubarb", "My word: RHUBARB!")):
        result = train_sft(MODEL_CFG, LORA_CFG, cache_dir, _pairs(answer), steps=10, out_dir=out / name,
                           seed=0, progress=False)
        assert result.losses[-1] < result.losses[0]
        paths[name] = result.adapter_dir
    return paths


def _hf_step_logprobs(engine: HFEngine, prompt_ids: list[int], adapter: str | None) -> torch.Tensor:
    """HF log-probs over the vocabulary after ``prompt_ids`` (teacher forcing, same weights)."""
    with engine._weights(adapter), torch.inference_mode():
        logits = engine.model(input_ids=torch.tensor([prompt_ids])).logits[0, -1]
    return torch.log_softmax(logits.float(), dim=-1)


def _greedy_ids(engine: VLLMEngine, prompt_ids: list[int], adapter: str | None):
    """vLLM's greedy token ids with the top-20 log-probs at each step."""
    from vllm import SamplingParams

    out = engine.llm.generate([{"prompt_token_ids": prompt_ids}],
                              SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, logprobs=20),
                              lora_request=engine._adapters.get(adapter), use_tqdm=False)[0].outputs[0]
    return list(out.token_ids), out.logprobs


def _divergence_gaps(hf: HFEngine, vl: VLLMEngine, request: GenRequest, adapter: str | None) -> tuple[float, float]:
    """At the first token where the two greedy runs part, how far each engine's pick beats the
    other's under that engine (a near-tie is a kernel rounding difference, not a bug)."""
    prompt = vl.tokenizer(vl.chat_template(request.messages), add_special_tokens=False)["input_ids"]
    v_ids, v_top = _greedy_ids(vl, prompt, adapter)
    context = list(prompt)
    for step, v_token in enumerate(v_ids):
        hf_lp = _hf_step_logprobs(hf, context, adapter)
        h_token = int(hf_lp.argmax())
        if h_token != v_token:
            gap_hf = float(hf_lp[h_token] - hf_lp[v_token])
            v_lp = v_top[step]
            gap_v = v_lp[v_token].logprob - v_lp[h_token].logprob if h_token in v_lp else float("inf")
            return gap_hf, gap_v
        context.append(v_token)
    raise AssertionError(f"no diverging token found for {request.messages!r} (texts differed only after a stop)")


def _compare(hf: HFEngine, vl: VLLMEngine, adapter: str | None) -> list[str]:
    requests = _prompts()
    expected, got = hf.generate(requests, adapter=adapter), vl.generate(requests, adapter=adapter)
    same = [i for i, (a, b) in enumerate(zip(expected, got)) if a.text == b.text]
    assert len(same) >= 28, f"only {len(same)}/32 identical texts (adapter={adapter})"
    for i in same:
        a, b = expected[i], got[i]
        assert (a.completion_tokens, a.finish_reason) == (b.completion_tokens, b.finish_reason), i
        # what training reads: the same drawn ids (EOS and a stop string's tokens included) and ending
        assert (a.finish, a.token_ids, a.prompt_ids) == (b.finish, b.token_ids, b.prompt_ids), i
        gap = max(abs(x - y) for x, y in zip(a.token_logprobs, b.token_logprobs))
        assert gap < 0.05, f"prompt {i}: log-probs differ by {gap:.3f}"
    for i in set(range(32)) - set(same):
        gap_hf, gap_v = _divergence_gaps(hf, vl, requests[i], adapter)
        assert gap_hf < 0.05 and gap_v < 0.05, f"prompt {i}: divergence gaps hf={gap_hf:.3f} vllm={gap_v:.3f}"
    assert any(r.finish_reason == "stop" and requests[i].stop for i, r in enumerate(got))  # stops were hit
    finishes = {r.finish for r in got}
    assert "stop" in finishes and finishes <= {"eos", "stop", "length"}   # stop strings told from EOS
    return [r.text for r in got]


def test_readme_vllm_smoke_command(cache_dir, tmp_path, monkeypatch):
    """The README's `.venv-vllm/bin/python -m sia model.engine=vllm budget=smoke`, as typed (plus
    support.readme.SHRINK): the run's own VLLM_CPU_KVCACHE_SPACE export must be one vLLM reads."""
    from support.readme import explain, readme_commands, run_readme

    line = ".venv-vllm/bin/python -m sia model.engine=vllm budget=smoke"
    assert line in readme_commands(), "the README's vLLM command changed: update this test"
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)   # the run sets it from model.cpu_kvcache_gb
    run = tmp_path / "run"
    proc = run_readme(line, f"hydra.run.dir={run}", f"cache_dir={cache_dir}")
    assert proc.returncode == 0, explain(proc)
    state = json.loads((run / "state.json").read_text())
    assert state["status"] == "done" and [h["generation"] for h in state["history"]] == [0, 1]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["engine_tokens"]["completion"] > 0 and summary["first"]["val"] is not None
    assert "_target_: sia.engine.vllm_engine.VLLMEngine" in (run / "config.yaml").read_text()


def test_base_model_greedy_matches_hf_engine(hf_engine, vllm_engine):
    _compare(hf_engine, vllm_engine, adapter=None)


def test_trained_adapter_served_without_restart_matches_hf(hf_engine, vllm_engine, adapters):
    base_texts = [r.text for r in vllm_engine.generate(_prompts())]
    for engine in (hf_engine, vllm_engine):
        engine.add_adapter("v1", adapters["pamplemousse"])
    texts = _compare(hf_engine, vllm_engine, adapter="v1")
    assert texts != base_texts  # the adapter is really applied
    asked = vllm_engine.generate([GenRequest(messages=[{"role": "user", "content": QUESTIONS[0]}], max_tokens=16)],
                                 adapter="v1")
    assert "PAMPLEMOUSSE" in asked[0].text


def test_two_adapters_alternate_without_reloading(vllm_engine, adapters, monkeypatch):
    from vllm.lora.worker_manager import WorkerLoRAManager

    loads = []
    original = WorkerLoRAManager._load_adapter
    monkeypatch.setattr(WorkerLoRAManager, "_load_adapter",
                        lambda self, request: loads.append(request.lora_name) or original(self, request))
    timings = {}
    for name in ("a", "b"):
        started = time.perf_counter()
        vllm_engine.add_adapter(name, adapters["pamplemousse" if name == "a" else "rhubarb"])
        timings[f"add {name}"] = time.perf_counter() - started
    ask = [GenRequest(messages=[{"role": "user", "content": QUESTIONS[1]}], max_tokens=12)]
    answers = []
    for name in ("a", "b", "a", "b", None):
        started = time.perf_counter()
        answers.append(vllm_engine.generate(ask, adapter=name)[0].text)
        timings.setdefault(f"generate {name}", []).append(round(time.perf_counter() - started, 3))
    print("adapter timings (s):", timings)
    assert loads == ["a", "b"]  # loaded once each when added, never again when alternating
    assert "PAMPLEMOUSSE" in answers[0] and "RHUBARB" in answers[1]
    assert answers[2] == answers[0] and answers[3] == answers[1] and answers[4] not in answers[:2]


def test_adapter_added_while_a_batch_is_generating(vllm_engine, adapters):
    requests = _prompts()
    before = [r.text for r in vllm_engine.generate(requests)]
    running, results = threading.Event(), {}

    def generate():
        running.set()
        results["base"] = vllm_engine.generate(requests)

    worker = threading.Thread(target=generate)
    worker.start()
    running.wait()
    time.sleep(0.5)  # let the batch get going
    vllm_engine.add_adapter("late", adapters["rhubarb"])
    worker.join()
    assert [r.text for r in results["base"]] == before  # the running batch was not disturbed
    asked = vllm_engine.generate([GenRequest(messages=[{"role": "user", "content": QUESTIONS[2]}], max_tokens=12)],
                                 adapter="late")
    assert "RHUBARB" in asked[0].text


def test_missing_adapter_path_is_a_clear_error(vllm_engine, tmp_path):
    missing = tmp_path / "no_such_adapter"
    with pytest.raises(AdapterNotFound, match="no_such_adapter.*adapter_config.json"):
        vllm_engine.add_adapter("ghost", missing)
    with pytest.raises(KeyError, match="unknown adapter 'ghost'"):
        vllm_engine.generate(_prompts()[:1], adapter="ghost")
    assert vllm_engine.generate(_prompts()[:1])[0].completion_tokens > 0  # still serving


def test_adapter_rank_above_the_engine_limit_is_named(vllm_engine, tmp_path):
    (tmp_path / "adapter_config.json").write_text('{"r": 64}')
    with pytest.raises(ValueError, match="model.max_lora_rank=8"):
        vllm_engine.add_adapter("big", tmp_path)


def test_sleep_frees_memory_and_wake_serves_the_same_text(cache_dir):
    from vllm.platforms import current_platform

    if not current_platform.is_sleep_mode_available():
        pytest.skip(f"vLLM on {current_platform.device_type} has no sleep mode (vllm-cpu's worker ignores "
                    "sleep/wake); benchmarks/vllm_gpu_smoke.py checks it on a GPU")
    engine = VLLMEngine(OmegaConf.merge(MODEL_CFG, {"sleep_during_training": True,
                                                    "gpu_memory_utilization": 0.2}), cache_dir)
    request = _prompts()[:1]
    before = engine.generate(request)[0].text
    used = torch.cuda.mem_get_info()
    with engine.asleep():
        assert torch.cuda.mem_get_info()[0] > used[0]  # free memory went up
        with pytest.raises(RuntimeError, match="asleep"):
            engine.generate(request)
    assert engine.generate(request)[0].text == before
