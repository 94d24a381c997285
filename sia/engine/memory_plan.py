"""Peak GPU memory per phase (vLLM serving, LoRA training) for a model config, computed from the
architecture before a run starts, so a configuration that cannot fit stops with the numbers.

Serving: vLLM takes ``gpu_memory_utilization`` of each of its ``tensor_parallel_size`` GPUs
up front; weights, resident LoRA slots, a runtime reserve and at least one full-context
sequence of KV cache must fit in that share. Training: the trainer holds the base model in its
training dtype (PEFT trains through bf16 weights, not MXFP4 kernels), fp32 LoRA weights with
gradients and AdamW state (16 bytes a parameter), and the activations of one micro-batch
(``lora.micro_batch_size`` x ``lora.max_seq_len`` tokens; with ``lora.activation_checkpointing``
only each layer's input plus one layer recomputed in backward). Placement: ``same_gpu_sleep`` trains on vLLM's
GPUs while vLLM sleeps (level 1: weights to host RAM, KV cache dropped, a residual stays);
``same_gpu`` trains next to an awake vLLM in the share it leaves; ``separate_gpus`` trains on
``gpu.train_gpus`` GPUs of their own. Estimates, not measurements: activations are rounded up."""
from __future__ import annotations

from dataclasses import dataclass

GIB = 1024 ** 3
BYTES = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0, "fp8": 1.0, "int8": 1.0,
         "mxfp4": 4.25 / 8,   # 4-bit values + one 8-bit scale per 32
         "nf4": 4.127 / 8}    # bitsandbytes 4-bit with double-quantised scales
PLACEMENTS = ("same_gpu_sleep", "same_gpu", "separate_gpus")
RUNTIME_RESERVE_GIB = 2.5    # CUDA context, vLLM activations and sampler buffers (per GPU)
SLEEP_RESIDUAL_GIB = 1.5     # what a level-1-asleep vLLM still holds (context, allocator pools)
TRAIN_RESERVE_GIB = 1.5      # the trainer's CUDA context and allocator slack
TRAINER_MAX_GPUS = 1         # sia/train/trainer.py trains on one device (Lightning devices=1)


@dataclass(frozen=True)
class Arch:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    intermediate: int               # per expert (MoE) or the dense MLP width
    experts: int = 0                # 0: a dense MLP (gate, up, down)
    experts_per_token: int = 0
    tied_embeddings: bool = False
    sliding_window: int = 0         # tokens; 0: every layer attends to the full context
    sliding_layers: int = 0         # how many layers use the sliding window

    @classmethod
    def from_cfg(cls, cfg) -> "Arch":
        return cls(**{k: (bool(v) if k == "tied_embeddings" else int(v)) for k, v in dict(cfg).items()})

    # ---- parameter counts --------------------------------------------------------------
    def attention_params(self) -> int:
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return self.layers * (2 * self.hidden * q + 2 * self.hidden * kv)

    def expert_params(self) -> int:
        """Parameters of the MLP weights that a quantised checkpoint stores in 4 bits."""
        per_mlp = 3 * self.hidden * self.intermediate
        return self.layers * per_mlp * max(self.experts, 1)

    def other_params(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        router = self.layers * self.hidden * self.experts
        return self.attention_params() + embeddings + router

    def total_params(self) -> int:
        return self.expert_params() + self.other_params()

    def active_params(self) -> int:
        """Used per token: one of the embedding tables (the lookup is not a matmul) and k experts."""
        per_mlp = 3 * self.hidden * self.intermediate
        used = self.layers * per_mlp * (self.experts_per_token if self.experts else 1)
        return self.attention_params() + self.layers * self.hidden * self.experts + self.vocab * self.hidden + used

    def kv_bytes_per_token(self, dtype_bytes: float, context: int) -> float:
        """KV cache bytes a sequence of ``context`` tokens needs, per token of it."""
        per_layer = 2 * self.kv_heads * self.head_dim * dtype_bytes
        full = self.layers - self.sliding_layers
        windowed = self.sliding_layers * min(1.0, self.sliding_window / max(context, 1))
        return per_layer * (full + windowed)

    # ---- LoRA --------------------------------------------------------------------------
    def lora_params(self, rank: int, modules, parameters=()) -> int:
        """Trainable LoRA parameters for PEFT ``target_modules`` / ``target_parameters``
        (names matched by their last part, as PEFT does)."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        shapes = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h)}
        if not self.experts:
            shapes |= {"gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
        fused = {"gate_up_proj": (h, 2 * i), "down_proj": (i, h)} if self.experts else {}
        total = 0
        for name in modules:
            short = str(name).split(".")[-1]
            if short in shapes:
                total += rank * sum(shapes[short])
        for name in parameters:  # fused expert tensors: one rank-r pair per expert
            short = str(name).split(".")[-1]
            if short in fused:
                total += self.experts * rank * sum(fused[short])
        return self.layers * total


@dataclass
class Phase:
    name: str
    gpus: str                       # which GPUs, e.g. "0-1"
    parts: dict                     # label -> GiB per GPU
    limit_gib: float                # what this phase may use per GPU

    @property
    def peak_gib(self) -> float:
        return sum(self.parts.values())


def lora_targets(model_cfg, lora_cfg) -> tuple[list[str], list[str]]:
    """PEFT (target_modules, target_parameters): a model config that names its own modules
    (gpt-oss) overrides lora.target_modules, whose defaults are SmolLM2/Llama names."""
    modules = _model(model_cfg, "lora_target_modules") or _lora(lora_cfg, "target_modules")
    return list(modules or []), list(_model(model_cfg, "lora_target_parameters") or [])


def _model(model_cfg, key: str):
    """``model.<key>``; its default lives in the schema only (sia.schema.ModelConfig)."""
    from sia.schema import ModelConfig, setting

    return setting(model_cfg, ModelConfig, key)


def _lora(lora_cfg, key: str):
    """``lora.<key>``; its default lives in the schema (sia.schema.LoraConfig) or conf/lora/default.yaml."""
    from sia.schema import LoraConfig, setting

    return setting(lora_cfg, LoraConfig, key)


# The ``model.gpu`` block has no schema of its own: its defaults live here, once.
GPU_DEFAULTS = {"memory_gb": 80, "count": 1, "trainer_placement": "same_gpu_sleep", "train_gpus": 1}


def _gpu(g, key: str):
    value = getattr(g, key, None)
    return GPU_DEFAULTS[key] if value is None else value


def _bytes(name: str, key: str) -> float:
    if name not in BYTES:
        raise ValueError(f"model.{key}={name!r} is not a known dtype; use one of {', '.join(BYTES)}")
    return BYTES[name]


def plan(model_cfg, lora_cfg) -> list[Phase]:
    """The serve and train phases of a model config with a ``gpu`` block (GiB per GPU)."""
    g = model_cfg.gpu
    arch = Arch.from_cfg(g.arch)
    gpu = float(_gpu(g, "memory_gb")) * 1e9 / GIB  # vendors quote GB
    tp = int(_model(model_cfg, "tensor_parallel_size"))
    share = float(_model(model_cfg, "gpu_memory_utilization"))
    dtype = _bytes(str(model_cfg.dtype), "dtype")
    expert_dtype = _bytes(str(getattr(g, "expert_dtype", None) or model_cfg.dtype), "gpu.expert_dtype")
    train_dtype = _bytes(str(getattr(g, "train_expert_dtype", None) or model_cfg.dtype), "gpu.train_expert_dtype")
    rank = int(_lora(lora_cfg, "rank"))
    lora = arch.lora_params(rank, *lora_targets(model_cfg, lora_cfg))
    context = int(model_cfg.max_context)

    weights = (arch.expert_params() * expert_dtype + arch.other_params() * dtype) / GIB
    # vLLM pre-allocates max_loras adapter slots at max_lora_rank (LoRA size grows with rank).
    slot_rank = max(rank, int(_model(model_cfg, "max_lora_rank")))
    lora_serving = int(_model(model_cfg, "max_loras")) * lora * slot_rank / rank * dtype / GIB
    kv_one_seq = arch.kv_bytes_per_token(dtype, context) * context / GIB
    serve = Phase("serve (vLLM)", _span(0, tp), {
        "weights": weights / tp, "LoRA slots": lora_serving / tp, "runtime reserve": RUNTIME_RESERVE_GIB,
        "KV cache (1 full-context sequence)": kv_one_seq / tp}, limit_gib=share * gpu)

    placement = str(_gpu(g, "trainer_placement"))
    if placement not in PLACEMENTS:
        raise ValueError(f"model.gpu.trainer_placement={placement!r}; use one of {', '.join(PLACEMENTS)}")
    n_train = int(_gpu(g, "train_gpus"))
    # Activations live for one forward/backward: a micro-batch (gradient accumulation makes the step)
    micro = int(_lora(lora_cfg, "micro_batch_size") or _lora(lora_cfg, "batch_size"))
    tokens = micro * int(_lora(lora_cfg, "max_seq_len"))
    # Activations run in the base's dtype (a bf16 base under "32-true" still computes in bf16);
    # a 16-bit precision setting (auto is one on a GPU) casts an fp32 base down.
    precision = str(_lora(lora_cfg, "precision"))
    act_bytes = 2.0 if precision == "auto" or precision.startswith(("16", "bf16")) else dtype
    k = arch.experts_per_token if arch.experts else 1
    per_layer = (12 * arch.hidden + 5 * k * arch.intermediate) * act_bytes   # bytes a token, one layer
    if bool(_lora(lora_cfg, "activation_checkpointing")):
        # each layer keeps only its input; backward recomputes one layer's activations at a time
        activations = tokens * (arch.layers * arch.hidden * act_bytes + per_layer) / GIB
    else:
        activations = tokens * arch.layers * per_layer / GIB
    logits = tokens * arch.vocab * 8 / GIB  # fp32 logits and their gradient
    base = (arch.expert_params() * train_dtype + arch.other_params() * 2.0) / GIB
    parts = {"base weights": base / n_train, "LoRA + grads + AdamW": lora * 16 / GIB / n_train,
             "activations": (activations + logits) / n_train, "trainer reserve": TRAIN_RESERVE_GIB}
    if placement == "same_gpu_sleep":
        parts["vLLM asleep (residual)"] = SLEEP_RESIDUAL_GIB
        limit, where = gpu, _span(0, tp)
    elif placement == "same_gpu":
        limit, where = (1 - share) * gpu, _span(0, tp)
    else:
        limit, where = gpu, _span(tp, n_train)
    if placement != "separate_gpus" and n_train > tp:
        raise ValueError(f"model.gpu.train_gpus={n_train} but trainer_placement={placement} trains on "
                         f"vLLM's {tp} GPU(s); use model.gpu.trainer_placement=separate_gpus")
    return [serve, Phase("train (LoRA SFT)", where, parts, limit_gib=limit)]


def _span(first: int, count: int) -> str:
    return str(first) if count == 1 else f"{first}-{first + count - 1}"


def plan_problems(model_cfg, lora_cfg) -> list[str]:
    """Why the config cannot fit, one message per problem (empty: it fits, or the model config
    has no ``gpu`` block to plan from, as for the embedded CPU model)."""
    g = _model(model_cfg, "gpu")
    if g is None:
        return []
    try:
        phases = plan(model_cfg, lora_cfg)
    except (ValueError, TypeError) as error:
        return [str(error)]
    problems = []
    gpus = int(_gpu(g, "count"))
    tp = int(_model(model_cfg, "tensor_parallel_size"))
    placement = str(_gpu(g, "trainer_placement"))
    train_gpus = int(_gpu(g, "train_gpus"))
    needed = tp + (train_gpus if placement == "separate_gpus" else 0)
    if needed > gpus:
        problems.append(f"model.gpu.count={gpus} but the plan needs {needed} (tensor_parallel_size={tp}"
                        f"{', plus train_gpus for separate_gpus' if placement == 'separate_gpus' else ''})")
    if train_gpus > TRAINER_MAX_GPUS:
        problems.append(f"model.gpu.train_gpus={train_gpus}: sia/train/trainer.py trains on {TRAINER_MAX_GPUS} device; "
                        "sharding the base over several GPUs is not built yet (train_gpus=1 needs a GPU that "
                        "holds the whole training copy, see the plan)")
    if placement == "same_gpu_sleep" and not bool(_model(model_cfg, "sleep_during_training")):
        problems.append("model.gpu.trainer_placement=same_gpu_sleep needs model.sleep_during_training=true")
    for phase in phases:
        if phase.peak_gib > phase.limit_gib:
            biggest = max(phase.parts, key=phase.parts.get)
            problems.append(
                f"{phase.name} needs {phase.peak_gib:.1f} GiB per GPU on GPU {phase.gpus} but has "
                f"{phase.limit_gib:.1f} GiB (largest part: {biggest} {phase.parts[biggest]:.1f} GiB); "
                + _advice(phase.name))
    return problems


def _advice(phase: str) -> str:
    if phase.startswith("serve"):
        return ("raise model.tensor_parallel_size or model.gpu_memory_utilization, lower model.max_context "
                "or model.max_loras, or use a GPU with more memory (model.gpu.memory_gb)")
    return ("set lora.activation_checkpointing=true, lower lora.micro_batch_size or lora.max_seq_len, drop lora target parameters (model.lora_target_parameters), "
            "use model.gpu.trainer_placement=separate_gpus with more model.gpu.train_gpus, or a quantised "
            "model.gpu.train_expert_dtype")


def format_plan(model_cfg, lora_cfg) -> str:
    """The table printed before a run: every part of every phase, GiB per GPU."""
    arch = Arch.from_cfg(model_cfg.gpu.arch)
    rank = int(_lora(lora_cfg, "rank"))
    lines = [f"memory plan for {model_cfg.name}: {arch.total_params() / 1e9:.1f}B parameters "
             f"({arch.active_params() / 1e9:.1f}B active), LoRA rank {rank}: "
             f"{arch.lora_params(rank, *lora_targets(model_cfg, lora_cfg)) / 1e6:.0f}M trainable"]
    for phase in plan(model_cfg, lora_cfg):
        verdict = "fits" if phase.peak_gib <= phase.limit_gib else "DOES NOT FIT"
        lines.append(f"  {phase.name} on GPU {phase.gpus}: peak {phase.peak_gib:.1f} of "
                     f"{phase.limit_gib:.1f} GiB per GPU, {verdict}")
        lines += [f"    {label:<36} {gib:7.1f} GiB" for label, gib in phase.parts.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """``python -m sia.engine.memory_plan gpt_oss_120b [model.KEY=V ...] [lora.KEY=V ...]``"""
    import sys
    from pathlib import Path

    from omegaconf import OmegaConf

    args = sys.argv[1:] if argv is None else argv
    if not args:
        raise SystemExit("usage: python -m sia.engine.memory_plan MODEL [model.KEY=VALUE ...] [lora.KEY=VALUE ...]")
    conf = Path(__file__).resolve().parents[2] / "conf"
    overrides = OmegaConf.from_dotlist(args[1:])
    model_cfg = OmegaConf.merge(OmegaConf.load(conf / "model" / f"{args[0]}.yaml"), overrides.get("model", {}))
    lora_cfg = OmegaConf.merge(OmegaConf.load(conf / "lora" / "default.yaml"), overrides.get("lora", {}))
    print(format_plan(model_cfg, lora_cfg))
    problems = plan_problems(model_cfg, lora_cfg)
    print("\n".join(f"  problem: {p}" for p in problems) or "  no problems")


if __name__ == "__main__":
    main()
