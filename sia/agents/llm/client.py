"""One door to the agent model: every request is scrubbed of held-out strings, looked up in the
run's response cache, sent through the SDK backend, priced from its usage fields and written to
the ledger. Agents talk in conversations: a request, and when the answer is invalid, the same
conversation continued with the validation error."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable

from sia.agents.llm.backends import LLMCallError, Reply, Tool, make_backend
from sia.agents.llm.cache import ResponseCache, request_key
from sia.agents.llm.config import LLMSettings, Usage, load_settings
from sia.agents.llm.ledger import Ledger
from sia.agents.llm.scrub import Scrubber
from sia.agents.llm.tokens import approx_tokens
from sia.pace import OutOfTime

LEDGER_FILE = "agents.jsonl"
CACHE_DIR = "agent_cache"


MIN_ANSWER_TOKENS = 2048   # below this an answer cannot hold an edit: the request is not sent


class AgentBudgetExhausted(RuntimeError):
    """The agent token or dollar budget is spent, or the next request could overspend it: it is
    not sent."""


class AgentUnavailable(OutOfTime):
    """``llm.on_failure=stop``: the agent API failed after the SDK's retries. The loop stops the
    run cleanly as on a spent budget (nothing of the generation is written, so a resume redoes it)."""


def unavailable(error: Exception, run_dir: Path | None) -> AgentUnavailable:
    where = f"python -m sia resume={run_dir}" if run_dir else "python -m sia resume=<the run dir>"
    return AgentUnavailable(f"the agent API failed after the SDK's retries ({error}); llm.on_failure=stop ended "
                            f"the run cleanly: once the API answers again, resume it with `{where}` "
                            f"(or set llm.on_failure=fallback to let the rules feedback decide such generations)")


class LLMClient:
    def __init__(self, settings: Any, run_dir: Path | None = None, sealed: Iterable[str] = (),
                 public: Iterable[str] = (), agent_tokens: int | None = None, agent_dollars: float | None = None,
                 backend: Any = None):
        self.settings: LLMSettings = load_settings(settings)
        run_dir = Path(run_dir) if run_dir is not None else None
        self.ledger = Ledger(run_dir / LEDGER_FILE if run_dir else None)
        self.cache = ResponseCache(run_dir / CACHE_DIR if run_dir and self.settings.response_cache else None)
        self.scrubber = Scrubber(sealed, public, on_event=self.ledger.event)
        self.agent_tokens, self.agent_dollars = agent_tokens, agent_dollars
        self.backend = backend or make_backend(self.settings)
        self.waiting_s = 0.0            # wall time spent waiting on the API in this process
        self.run_dir = run_dir

    def seal(self, sealed: Iterable[str], public: Iterable[str] = ()) -> None:
        """Replace the held-out strings the scrubber masks."""
        self.scrubber = Scrubber(sealed, public, on_event=self.ledger.event)

    def conversation(self, role: str, system: str, user: str, tool: Tool | list[Tool]) -> "Conversation":
        return Conversation(self, role, self.backend.body(system, user, tool))

    def _spent(self) -> str | None:
        t = self.ledger.totals
        if self.agent_tokens and t.tokens >= self.agent_tokens:
            return f"budget.agent_tokens={self.agent_tokens} is spent ({t.tokens} tokens used)"
        if self.agent_dollars and t.dollars >= self.agent_dollars:
            return f"budget.agent_dollars={self.agent_dollars} is spent (${t.dollars:.4f})"
        return None

    def estimate(self, body: dict) -> tuple[int, float]:
        """(input tokens, dollars) of ``body`` before it is sent: input priced uncached (the prompt
        cache may make it cheaper, never dearer) plus the whole ``max_tokens`` of output."""
        tokens_in = approx_tokens([body.get("system"), body.get("tools"), body.get("messages")])
        p = self.settings.prices
        return tokens_in, (tokens_in * max(p.input, p.cache_write) + int(body.get("max_tokens", 0)) * p.output) / 1e6

    def fit_budget(self, body: dict) -> dict:
        """``body`` with max_tokens lowered to what the budget left can pay for; raises
        AgentBudgetExhausted (nothing sent) when even MIN_ANSWER_TOKENS of output would overspend."""
        spent = self._spent()
        if spent:
            raise AgentBudgetExhausted(spent)
        tokens_in, dollars = self.estimate(body)
        t, p = self.ledger.totals, self.settings.prices
        reserved = int((body.get("thinking") or {}).get("budget_tokens", 0))
        out = int(body.get("max_tokens", 0))
        if self.agent_tokens:
            out = min(out, self.agent_tokens - t.tokens - tokens_in)
        if self.agent_dollars and p.output > 0:
            left = self.agent_dollars - t.dollars - tokens_in * max(p.input, p.cache_write) / 1e6
            out = min(out, int(left / p.output * 1e6))
        # The floor never exceeds what was asked: llm.max_tokens below it (a small local model) is
        # the user's choice, and only a budget cut below the floor refuses the request.
        if out - reserved < min(MIN_ANSWER_TOKENS, int(body.get("max_tokens", 0)) - reserved):
            why = (f"the next request (~{tokens_in} input tokens, estimated ${dollars:.4f} with "
                   f"max_tokens={body.get('max_tokens')}) would overspend the agent budget: "
                   f"${t.dollars:.4f} of budget.agent_dollars={self.agent_dollars} and {t.tokens} of "
                   f"budget.agent_tokens={self.agent_tokens} used; not sent")
            self.ledger.event({"event": "budget_refused", "tokens_in_estimate": tokens_in,
                               "dollars_estimate": round(dollars, 6)})
            raise AgentBudgetExhausted(why)
        return body if out >= int(body.get("max_tokens", 0)) else {**body, "max_tokens": out}

    def send(self, role: str, body: dict) -> tuple[dict, dict, Reply]:
        """(the body as sent, the raw answer, the parsed reply). The cache is keyed by the body as
        asked (before max_tokens is fitted to the budget), so a resumed run finds its answer."""
        body = self.scrubber.scrub(body, role)
        key = request_key(self.backend.name, self.settings.base_url, body)
        raw = self.cache.get(key)
        if raw is not None:
            reply = self.backend.parse(raw)
            self.ledger.record(role, self.settings.model, Usage(), 0.0, 0.0, "cached", request=key[:16])
            return body, raw, reply
        asked = body
        body = self.fit_budget(body)
        tokens_in, dollars = self.estimate(body)
        started = time.monotonic()
        try:
            raw = self.backend.send(body)
        except LLMCallError as e:
            latency = time.monotonic() - started
            self.waiting_s += latency
            self.ledger.record(role, self.settings.model, Usage(), 0.0, latency, "error", error=str(e)[:500])
            raise
        latency = time.monotonic() - started
        self.waiting_s += latency
        reply = self.backend.parse(raw)
        # Counted before cached: a kill between the two may pay twice but never spends uncounted.
        self.ledger.record(role, self.settings.model, reply.usage, self.settings.prices.dollars(reply.usage),
                           latency, "ok", request=key[:16], stop_reason=reply.stop_reason,
                           estimate={"tokens_in": tokens_in, "dollars": round(dollars, 6)})
        self.cache.put(key, raw)
        return asked, raw, reply


class Conversation:
    def __init__(self, client: LLMClient, role: str, body: dict):
        self.client, self.role, self.body = client, role, body
        self.raw: dict | None = None
        self.sent: list[dict] = []          # bodies as sent (scrubbed), for the agents' records

    def ask(self) -> Reply:
        self.body, self.raw, reply = self.client.send(self.role, self.body)
        self.sent.append(self.body)
        return reply

    def reply_error(self, error: str) -> None:
        """Continue the conversation: the last answer, then ``error`` as the user's reply."""
        assert self.raw is not None, "ask() first"
        self.body = self.client.backend.follow_up(self.body, self.raw, error)

    def reply_result(self, result: str) -> None:
        """Continue the conversation: the last answer, then ``result`` as its tool call's result."""
        assert self.raw is not None, "ask() first"
        self.body = self.client.backend.follow_up(self.body, self.raw, result, is_error=False)


_SHARED: dict[tuple, LLMClient] = {}


def client_for_run(settings: Any, run_dir: Path | None, agent_tokens: int | None = None,
                   agent_dollars: float | None = None) -> LLMClient:
    """One client per run dir and settings in this process, so the Meta-Agent and the
    Feedback-Agent share one ledger (one budget) and one response cache."""
    s = load_settings(settings)
    key = (str(Path(run_dir).resolve()) if run_dir else None, s.backend, s.model, s.base_url)
    client = _SHARED.get(key)
    if client is None:
        client = _SHARED[key] = LLMClient(s, run_dir, agent_tokens=agent_tokens, agent_dollars=agent_dollars)
    else:
        client.agent_tokens = agent_tokens if agent_tokens is not None else client.agent_tokens
        client.agent_dollars = agent_dollars if agent_dollars is not None else client.agent_dollars
    return client


def cost_since(client: LLMClient, before: dict) -> dict:
    """What the client's calls cost since ``before`` (a ``ledger.totals.to_json()``)."""
    now = client.ledger.totals.to_json()
    return {k: round(now[k] - before.get(k, 0), 6) for k in
            ("calls", "cached_calls", "tokens_in", "tokens_out", "tokens_cached", "dollars", "latency_s")}
