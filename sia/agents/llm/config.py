"""The shared ``llm`` config block: backend, model, endpoint, limits, prices, and where the key
comes from. Keys are read from the environment at the moment a client is built and are kept
only inside the SDK client object: nothing here writes them anywhere."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

BACKENDS = ("anthropic", "openai")
ON_FAILURE = ("fallback", "stop")
DEFAULT_KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
# Dollars per million tokens; claude-sonnet-4-6 list prices (the defaults).
SONNET_PRICES = {"input": 3.0, "output": 15.0, "cache_write": 3.75, "cache_read": 0.30}


@dataclass(frozen=True)
class Prices:
    input: float = 0.0
    output: float = 0.0
    cache_write: float = 0.0
    cache_read: float = 0.0

    def dollars(self, usage: "Usage") -> float:
        return (usage.input * self.input + usage.output * self.output
                + usage.cache_write * self.cache_write + usage.cache_read * self.cache_read) / 1e6


@dataclass
class Usage:
    """Token counts of one call, from the API's usage fields. ``input`` excludes cached tokens
    (written to or read from the prompt cache), so the four fields never overlap."""

    input: int = 0
    output: int = 0
    cache_write: int = 0
    cache_read: int = 0

    @property
    def tokens_in(self) -> int:
        return self.input + self.cache_write + self.cache_read

    @property
    def total(self) -> int:
        return self.tokens_in + self.output


@dataclass
class LLMSettings:
    backend: str = "anthropic"
    model: str = "claude-sonnet-4-6"
    base_url: str | None = None
    api_key_env: str | None = None
    max_tokens: int = 16000              # per answer: a whole harness file with room to reason first
    thinking_tokens: int = 0             # anthropic: extended thinking budget (0: off)
    on_failure: str = "fallback"         # an API failure after the SDK's retries: fallback | stop
    temperature: float | None = None     # None: the API's default (not sent)
    max_retries: int = 4
    timeout_s: float = 300.0
    prompt_cache: bool = True            # anthropic: cache_control on the static prefix
    response_cache: bool = True          # on-disk cache of answers in <run>/agent_cache/
    tool_mode: str = "tools"             # tools | json (guided JSON: OpenAI-compatible servers without tool calls)
    prices: Prices = field(default_factory=Prices)

    @property
    def key_env(self) -> str:
        return self.api_key_env or DEFAULT_KEY_ENV.get(self.backend, "OPENAI_API_KEY")

    def api_key(self) -> str | None:
        """The key to send. An OpenAI-compatible server elsewhere than api.openai.com gets
        OPENAI_API_KEY only when ``api_key_env`` names it: a user's OpenAI key never goes to
        a local server by accident."""
        if self.backend == "openai" and not self.api_key_env and not _is_openai(self.base_url):
            return None
        return os.environ.get(self.key_env) or None


def _is_openai(base_url: str | None) -> bool:
    return not base_url or "api.openai.com" in base_url


def _plain(cfg: Any) -> dict:
    if cfg is None:
        return {}
    try:
        from omegaconf import OmegaConf
        if OmegaConf.is_config(cfg):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover
        pass
    if isinstance(cfg, LLMSettings):
        return {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}
    return dict(cfg)


def settings_problems(cfg: Any) -> list[str]:
    """Problems with the ``llm`` block, each naming the key and the fix."""
    c, p = _plain(cfg), []
    if c.get("backend", "anthropic") not in BACKENDS:
        p.append(f"llm.backend={c.get('backend')!r} is not one of {', '.join(BACKENDS)}; "
                 f"use llm.backend=anthropic (Claude) or llm.backend=openai (any OpenAI-compatible server)")
    for key in ("max_tokens", "max_retries"):
        v = c.get(key, 1)
        if not isinstance(v, int) or isinstance(v, bool) or v < (1 if key == "max_tokens" else 0):
            p.append(f"llm.{key}={v!r} must be a whole number >= {1 if key == 'max_tokens' else 0}")
    v = c.get("timeout_s", 1.0)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
        p.append(f"llm.timeout_s={v!r} must be a number of seconds > 0, e.g. llm.timeout_s=300")
    v = c.get("thinking_tokens", 0)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0 or 0 < v < 1024:
        p.append(f"llm.thinking_tokens={v!r} must be 0 (off) or a whole number >= 1024 (Anthropic's minimum "
                 f"thinking budget), e.g. llm.thinking_tokens=4096")
    if c.get("on_failure", "fallback") not in ON_FAILURE:
        p.append(f"llm.on_failure={c.get('on_failure')!r} is not one of {', '.join(ON_FAILURE)}; fallback hands "
                 f"the generation to the rules feedback, stop ends the run cleanly (resumable)")
    if c.get("tool_mode", "tools") not in ("tools", "json"):
        p.append(f"llm.tool_mode={c.get('tool_mode')!r} is not tools or json; use llm.tool_mode=tools (function "
                 f"calling) or llm.tool_mode=json (guided JSON, for servers without tool calls)")
    for name, value in (c.get("prices") or {}).items():
        if name not in Prices.__dataclass_fields__:
            p.append(f"llm.prices.{name} is unknown; use input, output, cache_write, cache_read")
        elif not isinstance(value, (int, float)) or value < 0:
            p.append(f"llm.prices.{name}={value!r} must be dollars per million tokens >= 0")
    return p


def load_settings(cfg: Any) -> LLMSettings:
    if isinstance(cfg, LLMSettings):
        return cfg
    problems = settings_problems(cfg)
    if problems:
        raise ValueError("invalid llm config:\n" + "\n".join(f"  - {x}" for x in problems))
    c = _plain(cfg)
    known = {k: c[k] for k in LLMSettings.__dataclass_fields__ if k in c and k != "prices"}
    settings = LLMSettings(**known)
    prices = c.get("prices")
    if prices is None:
        # Unpriced: the list price when it is Claude on Anthropic's API, else free (a local server).
        prices = SONNET_PRICES if settings.backend == "anthropic" and "sonnet" in settings.model else {}
    settings.prices = Prices(**{k: float(v) for k, v in prices.items()})
    return settings


def key_problems(llm_cfg: Any) -> list[str]:
    """Missing credentials, checked before any work: with the anthropic backend, or whenever
    ``llm.api_key_env`` is set, or for OpenAI's own API (no ``base_url``), the key must be in the
    environment. A local OpenAI-compatible server (llama.cpp, Ollama, vLLM) needs none. Never
    includes the key itself."""
    c = _plain(llm_cfg)
    backend = c.get("backend", "anthropic")
    env = c.get("api_key_env") or DEFAULT_KEY_ENV.get(backend, "OPENAI_API_KEY")
    required = backend == "anthropic" or bool(c.get("api_key_env")) or _is_openai(c.get("base_url"))
    if required and not os.environ.get(env):
        return [f"llm.backend={backend}: the API key variable {env} is not set; export {env}=<your key>"
                + (" or set llm.api_key_env to the variable holding it" if not c.get("api_key_env") else "")
                + (" (a local OpenAI-compatible server needs no key: llm.backend=openai llm.base_url=...)"
                   if backend == "anthropic" else "")]
    return []
