"""Build the parts of a run from their config nodes (``_target_``) and the command-line
names that select them.

Part slots chosen by name are Hydra config groups nested in their parent group:
``model/engine/<name>.yaml``, ``agent/meta/<name>.yaml``; the command line keeps the short
spelling ``model.engine=vllm`` / ``agent.meta=llm`` (the contract every README command uses),
which ``normalise_overrides`` turns into the group override Hydra needs.
"""
from __future__ import annotations

import inspect
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

# command-line key -> the config group that holds its options
GROUP_SLOTS = {"model.engine": "model/engine", "agent.meta": "agent/meta"}


def normalise_overrides(overrides: list[str]) -> list[str]:
    """``agent.meta=llm`` -> ``agent/meta=llm`` (also with a sweep: ``agent.meta=seed,llm``)."""
    out = []
    for item in overrides:
        key, sep, value = item.partition("=")
        prefix = key[0] if key[:1] in "+~" else ""
        slot = GROUP_SLOTS.get(key[len(prefix):])
        out.append(f"{prefix}{slot}{sep}{value}" if sep and slot else item)
    return out


class BuildError(ValueError):
    pass


def build(node: DictConfig, /, optional: dict[str, Any] | None = None, **runtime: Any) -> Any:
    """Instantiate ``node`` (its ``_target_`` with its keys as arguments, ``name`` excepted)
    with ``runtime`` objects added, and those of ``optional`` the class takes (e.g. ``task``);
    the part gets the node's ``name``."""
    if not OmegaConf.is_dict(node) or "_target_" not in node:
        raise BuildError(f"config node {node!r} has no _target_; a part's YAML names its class with "
                         f"`_target_: package.module.Class`")
    params = OmegaConf.to_container(node, resolve=True)
    name = params.pop("name", None)
    if name is not None:
        optional = {"name": name, **(optional or {})}
    runtime = {**{k: v for k, v in (optional or {}).items() if _takes(params["_target_"], k)}, **runtime}
    try:   # runtime objects go to the constructor as they are, never through Hydra's recursion
        factory = instantiate(params, _partial_=True, _convert_="none")
    except InstantiationException as exc:
        raise BuildError(f"cannot build {params.get('_target_')!r}: {exc}") from None
    part = factory(**runtime)
    if name is not None and not getattr(part, "name", None):
        try:   # every part knows the name it was chosen by (for records and logs)
            part.name = name
        except AttributeError:
            pass
    return part


def _takes(target: str, param: str) -> bool:
    try:
        sig = inspect.signature(get_object(target))
    except (ImportError, ValueError, TypeError):
        return False
    return param in sig.parameters or any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
