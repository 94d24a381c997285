"""``LLMMetaAgent``: the model writes the first harness from task.md, the harness contract, what
ctx.resources and ctx.files hold and a few train examples (optionally the seed harness). The file
must pass the trusted checker; a problem goes back to the model for at most ``repairs`` more
tries, then the seed harness is used and the reason recorded. An answer cut at max_tokens, a
refusal and an empty answer go back with their own message; a spent budget or an API failure
after the SDK's retries uses the seed harness (``llm.on_failure=stop``: the run stops cleanly)."""
from __future__ import annotations

import re
from typing import Any

from sia.agents.decision import AgentCost
from sia.agents.llm.backends import LLMCallError, Reply
from sia.agents.llm.client import AgentBudgetExhausted, LLMClient, client_for_run, cost_since, unavailable
from sia.agents.llm.prompts import META_INSTRUCTIONS, WRITE_HARNESS, meta_request, static_prefix
from sia.agents.llm.scrub import held_out_strings
from sia.parts import AgentEnv, MetaOutcome


def meta_problem(reply: Reply, limit: int) -> tuple[str, str] | None:
    """(the problem, what the model is told) for an answer that is not a file attempt at all."""
    if reply.truncated:
        return (f"the answer was cut at max_tokens={limit}",
                f"Your answer was cut at the output limit (max_tokens={limit}) before the file was complete. "
                f"Write a shorter harness (fewer comments, no dead code) and keep the prose before it brief; "
                f"call write_harness with the whole file.")
    if reply.refused:
        return ("the model refused", "Your answer was a refusal. Writing this harness is routine engineering "
                                     "work; call write_harness with the whole file.")
    if reply.empty:
        return "the answer was empty", "Your answer was empty. Call write_harness with the whole file."
    return None


def harness_from_reply(reply: Reply) -> str | None:
    """The file from the tool call, or from a ```python block when a server ignored the tool."""
    code = (reply.tool_input or {}).get("code")
    if isinstance(code, str) and code.strip():
        return code
    m = re.search(r"```(?:python)?\s*\n(.*?)```", reply.text or "", re.S)
    return m.group(1) if m else None


class LLMMetaAgent:
    name = "llm"

    def __init__(self, llm: Any = None, repairs: int = 2, show_seed: bool = True, examples: int = 3,
                 agent_tokens: int | None = None, agent_dollars: float | None = None,
                 client: LLMClient | None = None, facts: dict | None = None, **_: Any):
        if not isinstance(repairs, int) or repairs < 0:
            raise ValueError(f"agent.repairs={repairs!r} must be a whole number >= 0, e.g. agent.repairs=2")
        self.llm, self.repairs, self.show_seed, self.examples = llm, repairs, bool(show_seed), int(examples)
        self.agent_tokens, self.agent_dollars = agent_tokens, agent_dollars
        self.client = client
        self.facts = dict(facts or {})   # the task model, its context, per-example caps (the "Run facts")

    def _client(self, env: AgentEnv) -> LLMClient:
        client = self.client or client_for_run(self.llm, env.run_dir, self.agent_tokens, self.agent_dollars)
        try:  # trusted side: read held-out targets only to mask them in requests
            sealed, public = held_out_strings(env.task.load(), env.resources)
            client.seal(sealed, public)
        except Exception:  # noqa: BLE001 - a task without loadable splits still gets its train targets public
            pass
        return client

    def first_harness(self, env: AgentEnv) -> MetaOutcome:
        client = self._client(env)
        before = client.ledger.totals.to_json()
        seed = env.task.seed_harness()
        conv = client.conversation(
            "meta", static_prefix(META_INSTRUCTIONS, env.task.description()),
            meta_request(env.resources, env.files, env.train[: self.examples], seed if self.show_seed else None,
                         self.facts),
            WRITE_HARNESS)
        errors: list[str] = []
        tries = 0
        for attempt in range(1 + self.repairs):
            try:
                reply = conv.ask()
            except AgentBudgetExhausted as e:
                errors.append(f"agent budget: {e}")
                break
            except LLMCallError as e:
                if client.settings.on_failure == "stop":
                    raise unavailable(e, env.run_dir) from None
                errors.append(f"API error: {e}")
                break
            tries += 1
            special = meta_problem(reply, client.settings.max_tokens)
            if special is not None:
                errors.append(special[0])
                client.ledger.note_outcome("meta", "rejected", error=special[0])
                if attempt < self.repairs:
                    conv.reply_error(special[1])
                continue
            code = harness_from_reply(reply)
            problem = "the answer holds no harness file (call write_harness with `code`)" if code is None \
                else env.checker.check(code)
            if problem is None:
                client.ledger.note_outcome("meta", "accepted", tries=tries)
                return self._outcome(code, client, before, tries, errors, False, None)
            errors.append(problem)
            client.ledger.note_outcome("meta", "rejected", error=problem[:300])
            if attempt < self.repairs:
                conv.reply_error(f"The harness was rejected: {problem}\n"
                                 f"Fix it and call write_harness again with the whole file.")
        reason = (f"no accepted harness after {tries} answer(s); the seed harness is generation 0. "
                  f"Last problem: {errors[-1] if errors else 'none'}")
        return self._outcome(seed, client, before, tries, errors, True, reason)

    def _outcome(self, code: str, client: LLMClient, before: dict, tries: int, errors: list[str], fell_back: bool,
                 reason: str | None) -> MetaOutcome:
        return MetaOutcome(code, agent="llm", fell_back_to_seed=fell_back,
                           cost=AgentCost.from_json(cost_since(client, before)),
                           details={"model": client.settings.model, "backend": client.settings.backend,
                                    "tries": tries, "errors": errors, "reason": reason})
