"""The GPU memory plan: parameter counts against the published gpt-oss figures and against
PEFT's own count on tiny models, and the checks that stop a configuration that cannot fit."""
from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sia.engine.memory_plan import GIB, Arch, format_plan, plan, plan_problems

REPO = Path(__file__).resolve().parent.parent
LORA = OmegaConf.merge(OmegaConf.load(REPO / "conf" / "lora" / "default.yaml"),
                       {"rank": 32, "batch_size": 4, "precision": "bf16-true"})


def _model(name: str, **overrides):
    return OmegaConf.merge(OmegaConf.load(REPO / "conf" / "model" / f"{name}.yaml"), overrides)


def _phase(model_cfg, lora_cfg, prefix: str):
    return next(p for p in plan(model_cfg, lora_cfg) if p.name.startswith(prefix))


def test_parameter_counts_match_the_published_gpt_oss_figures():
    big, small = Arch.from_cfg(_model("gpt_oss_120b").gpu.arch), Arch.from_cfg(_model("gpt_oss_20b").gpu.arch)
    assert 116e9 < big.total_params() < 118e9 and 5.0e9 < big.active_params() < 5.2e9      # ~117B, ~5.1B
    assert 20.5e9 < small.total_params() < 21.5e9 and 3.5e9 < small.active_params() < 3.7e9  # ~21B, ~3.6B


def test_mxfp4_weights_fit_one_80gb_gpu_for_120b_and_16gb_for_20b():
    bare = {"lora_target_parameters": [], "max_loras": 1}  # inference of the base model
    serve = _phase(_model("gpt_oss_120b", tensor_parallel_size=1, **bare), LORA, "serve")
    assert 59 < serve.parts["weights"] < 62  # the checkpoint is 60.8 GiB
    assert serve.peak_gib <= serve.limit_gib == pytest.approx(0.9 * 80e9 / GIB)
    weights_20b = _phase(_model("gpt_oss_20b", **bare), LORA, "serve").parts["weights"]
    assert 12 < weights_20b < 16e9 / GIB


def test_lora_counts_equal_peft_on_tiny_models():
    torch = pytest.importorskip("torch")
    from peft import LoraConfig, get_peft_model
    from transformers import GptOssConfig, GptOssForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    moe = Arch(layers=2, hidden=64, heads=4, kv_heads=2, head_dim=16, vocab=100, intermediate=48,
               experts=4, experts_per_token=2)
    model = GptOssForCausalLM(GptOssConfig(
        num_hidden_layers=2, hidden_size=64, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, vocab_size=100, num_local_experts=4, num_experts_per_tok=2,
        layer_types=["sliding_attention", "full_attention"]))
    total = sum(p.numel() for p in model.parameters())
    assert 0.97 * total < moe.total_params() <= total  # only biases, norms and sinks are left out
    modules, params = ["q_proj", "k_proj", "v_proj", "o_proj"], ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=modules, target_parameters=params))
    assert moe.lora_params(4, modules, params) == sum(p.numel() for p in peft.parameters() if p.requires_grad)

    dense = Arch(layers=2, hidden=64, heads=4, kv_heads=2, head_dim=16, vocab=100, intermediate=96)
    llama = LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=96,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=100))
    targets = list(LORA.target_modules)
    peft = get_peft_model(llama, LoraConfig(r=8, target_modules=targets))
    assert dense.lora_params(8, targets) == sum(p.numel() for p in peft.parameters() if p.requires_grad)


def test_shipped_20b_config_fits_one_80gb_gpu_with_vllm_asleep_while_training():
    model_cfg = _model("gpt_oss_20b")
    assert plan_problems(model_cfg, LORA) == []
    train = _phase(model_cfg, LORA, "train")
    assert "vLLM asleep (residual)" in train.parts and train.gpus == "0"
    text = format_plan(model_cfg, LORA)
    assert "serve (vLLM) on GPU 0" in text and "train (LoRA SFT) on GPU 0" in text and "DOES NOT FIT" not in text


def test_same_gpu_without_sleep_is_refused_with_the_numbers():
    # The old setting: vLLM takes 90% of the GPU while the trainer loads its own copy.
    problems = plan_problems(_model("gpt_oss_20b", gpu={"trainer_placement": "same_gpu"}, gpu_memory_utilization=0.9), LORA)
    assert len(problems) == 1 and problems[0].startswith("train (LoRA SFT) needs")
    assert "but has 7.5 GiB" in problems[0] and "lora.micro_batch_size" in problems[0]


def test_120b_expert_lora_needs_two_serving_gpus():
    problems = plan_problems(_model("gpt_oss_120b", tensor_parallel_size=1, gpu={"train_gpus": 1}), LORA)
    serve = [p for p in problems if p.startswith("serve (vLLM)")]
    assert serve and "tensor_parallel_size" in serve[0]
    assert not [p for p in plan_problems(_model("gpt_oss_120b", gpu={"train_gpus": 1}), LORA) if p.startswith("serve")]


def test_120b_training_does_not_fit_one_gpu_and_the_trainer_cannot_shard_yet():
    one = plan_problems(_model("gpt_oss_120b", gpu={"train_gpus": 1}), LORA)
    assert any(p.startswith("train (LoRA SFT) needs") and "base weights" in p for p in one)
    shipped = plan_problems(_model("gpt_oss_120b"), LORA)
    assert len(shipped) == 1 and "train_gpus=4" in shipped[0] and "sia/train/trainer.py" in shipped[0]


def test_bad_settings_are_named():
    nearby = plan_problems(_model("gpt_oss_20b", gpu={"trainer_placement": "nearby"}), LORA)
    assert "model.gpu.trainer_placement='nearby'" in nearby[0]
    assert "model.gpu.expert_dtype='fp3'" in plan_problems(_model("gpt_oss_20b", gpu={"expert_dtype": "fp3"}), LORA)[0]
    assert any("model.gpu.count=1 but the plan needs 2" in p
               for p in plan_problems(_model("gpt_oss_20b", tensor_parallel_size=2), LORA))
    assert any("sleep_during_training=true" in p
               for p in plan_problems(_model("gpt_oss_20b", sleep_during_training=False), LORA))


def test_a_model_without_a_gpu_block_has_nothing_to_plan():
    assert plan_problems(OmegaConf.load(REPO / "conf" / "model" / "smollm2_135m.yaml"), LORA) == []


def test_vllm_gets_the_configs_parallelism_memory_share_and_sleep_mode(tmp_path):
    from sia.engine.vllm_engine import engine_kwargs

    kwargs = engine_kwargs(_model("gpt_oss_120b"), tmp_path, on_cpu=False, sleep_mode=False)
    assert (kwargs["tensor_parallel_size"], kwargs["gpu_memory_utilization"]) == (2, 0.9)
    assert (kwargs["max_lora_rank"], kwargs["max_loras"], kwargs["enforce_eager"]) == (32, 2, False)
    assert "enable_sleep_mode" not in kwargs
    assert engine_kwargs(_model("gpt_oss_20b"), tmp_path, on_cpu=False, sleep_mode=True)["enable_sleep_mode"]
    cpu = engine_kwargs(OmegaConf.load(REPO / "conf" / "model" / "smollm2_135m.yaml"), tmp_path, True, False)
    assert cpu["enforce_eager"] and cpu["tensor_parallel_size"] == 1 and cpu["logprobs_mode"] == "raw_logprobs"


def test_adapter_directories_are_checked_before_vllm_sees_them(tmp_path):
    from sia.engine.vllm_engine import AdapterNotFound, _check_adapter_dir

    with pytest.raises(AdapterNotFound, match="'v3'.*nope.*adapter_config.json"):
        _check_adapter_dir("v3", tmp_path / "nope", max_rank=32)
    (tmp_path / "adapter_config.json").write_text('{"r": 64}')
    with pytest.raises(ValueError, match="rank 64.*model.max_lora_rank=32"):
        _check_adapter_dir("v3", tmp_path, max_rank=32)
    assert _check_adapter_dir("v3", tmp_path, max_rank=64) == tmp_path.resolve()


def test_activations_are_one_micro_batch_and_checkpointing_keeps_layer_inputs_only():
    def activations(**lora):
        train = plan(_model("gpt_oss_20b"), OmegaConf.merge(LORA, lora))[1]
        return train.parts["activations"]

    full = activations(micro_batch_size=4, max_seq_len=1024)
    # gradient accumulation: the step's batch_size does not hold activations, a micro-batch does
    assert activations(micro_batch_size=4, max_seq_len=1024, batch_size=64) == pytest.approx(full)
    assert activations(micro_batch_size=2, max_seq_len=1024) == pytest.approx(full / 2)
    assert activations(micro_batch_size=4, max_seq_len=1024, activation_checkpointing=True) < full / 2
