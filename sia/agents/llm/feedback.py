"""``LLMFeedbackPolicy``: one request per generation (digest, train probe, trajectories
failure-first, the incumbent harness, decision history, levers, budget, baselines); the answer
comes through the ``decide`` tool and is validated strictly. An invalid answer goes back once
with the error; a second invalid answer hands the generation to the fallback (rules) policy and
the Decision says so (``stats.fallback``, ``stats.errors``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Protocol

from sia.agents.decision import AUTO, Decision, InvalidDecision
from sia.agents.llm.client import AgentBudgetExhausted, LLMClient, client_for_run, cost_since
from sia.agents.llm.diff import DiffError, apply_diff
from sia.agents.llm.prompts import FEEDBACK_INSTRUCTIONS, decide_tool, feedback_request, static_prefix
from sia.agents.llm.scrub import held_out_strings
from sia.agents.llm.trajectories import select
from sia.parts import FeedbackPolicy, HarnessChecker, LeverOffer

DATA_SOURCES = ("auto", "gold", "rollouts")   # gold: sft_pair renders train targets; rollouts: reward


class FeedbackCtx(Protocol):
    """What the LLM policy reads of the loop's context (the loop's real ctx matches this)."""

    generation: int
    harness_code: str
    digest: Any                  # .to_json() -> dict
    history: list                # records with .to_json() or dicts
    offer: LeverOffer | None
    budget_left: dict
    trajectories: list[dict]     # per val example: id, events, answer, score, reason, failure, error
    baselines: dict              # name -> val score
    checker: HarnessChecker
    train_probe: Any             # .to_json() or dict or None
    task_text: str               # task.md (optional): part of the cached static prefix


class InvalidAnswer(ValueError):
    pass


def _positive_int(plan: dict, key: str, limit: int) -> int:
    v = plan.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise InvalidAnswer(f"training.{key} must be a positive integer, got {v!r}")
    if limit and v > limit:
        raise InvalidAnswer(f"training.{key}={v} exceeds what the weights lever offers (at most {limit})")
    return v


def validate_answer(answer: Any, ctx: FeedbackCtx, data_sources: tuple[str, ...] = DATA_SOURCES) -> Decision:
    """The Decision an answer stands for, or InvalidAnswer saying what to fix."""
    if not isinstance(answer, dict):
        raise InvalidAnswer("the answer must be the arguments of `decide`, a JSON object")
    action, rationale = answer.get("action"), answer.get("rationale")
    if action not in ("harness", "weights", "stop"):
        raise InvalidAnswer(f"action must be one of harness, weights, stop; got {action!r}")
    if not isinstance(rationale, str) or not rationale.strip():
        raise InvalidAnswer("rationale must be a non-empty string")
    code = training = None
    offer = getattr(ctx, "offer", None)
    if action == "harness":
        has_code, has_diff = bool(answer.get("code")), bool(answer.get("diff"))
        if has_code == has_diff:
            raise InvalidAnswer("action=harness needs exactly one of `code` (a whole file) or `diff` "
                                f"(a unified diff against the incumbent); got {'both' if has_code else 'neither'}")
        if has_diff:
            if not isinstance(answer["diff"], str):
                raise InvalidAnswer("`diff` must be a string")
            try:
                code = apply_diff(ctx.harness_code, answer["diff"])
            except DiffError as e:
                raise InvalidAnswer(f"the diff does not apply to the incumbent: {e}") from None
        else:
            code = answer["code"]
            if not isinstance(code, str):
                raise InvalidAnswer("`code` must be a string holding the whole harness file")
        if code.strip() == (ctx.harness_code or "").strip():
            raise InvalidAnswer("the new harness is identical to the incumbent")
        problem = ctx.checker.check(code)
        if problem is not None:
            raise InvalidAnswer(f"the new harness failed the check: {problem}")
    elif action == "weights":
        if offer is None or not offer.available:
            raise InvalidAnswer("action=weights is not possible now: "
                                + (getattr(offer, "reason", "") or "no weights lever in this run"))
        plan = answer.get("training")
        if not isinstance(plan, dict):
            raise InvalidAnswer("action=weights needs `training`: {algorithm, data, steps, examples}")
        allowed = [AUTO, *offer.algorithms]
        if plan.get("algorithm") not in allowed:
            raise InvalidAnswer(f"training.algorithm={plan.get('algorithm')!r} is not offered; use one of {allowed}")
        if plan.get("data") not in data_sources:
            raise InvalidAnswer(f"training.data={plan.get('data')!r} is not one of {list(data_sources)}")
        training = {"algorithm": plan["algorithm"], "data": plan["data"],
                    "steps": _positive_int(plan, "steps", offer.max_steps),
                    "examples": _positive_int(plan, "examples", offer.max_examples)}
    decision = Decision(action=action, rationale=rationale.strip(), harness_code=code, training=training)
    try:
        return decision.validate(tuple(offer.algorithms) if action == "weights" else None)
    except InvalidDecision as e:
        raise InvalidAnswer(str(e)) from None


class LLMFeedbackPolicy:
    def __init__(self, llm: Any = None, fallback: FeedbackPolicy | None = None, run_dir: str | Path | None = None,
                 trajectory_tokens: int = 12000, repairs: int = 1, sealed: Iterable[str] = (),
                 public: Iterable[str] = (), agent_tokens: int | None = None, agent_dollars: float | None = None,
                 client: LLMClient | None = None, task: Any = None, name: str = "llm"):
        if not isinstance(trajectory_tokens, int) or trajectory_tokens < 0:
            raise ValueError(f"feedback.trajectory_tokens={trajectory_tokens!r} must be a whole number >= 0")
        self.name, self.llm, self.fallback = name, llm, fallback
        self.run_dir = Path(run_dir) if run_dir else None
        self.trajectory_tokens, self.repairs = trajectory_tokens, int(repairs)
        self.agent_tokens, self.agent_dollars = agent_tokens, agent_dollars
        self._client, self._sealed = client, (list(sealed), list(public))
        self._task = task       # when given, its val/test targets are sealed at the first request

    def seal(self, sealed: Iterable[str], public: Iterable[str] = ()) -> None:
        self._sealed = (list(sealed), list(public))
        if self._client is not None:
            self._client.seal(*self._sealed)

    @property
    def client(self) -> LLMClient:
        if self._client is None:
            self._client = client_for_run(self.llm, self.run_dir, self.agent_tokens, self.agent_dollars)
            if self._sealed[0]:
                self._client.seal(*self._sealed)
        if self._task is not None:          # trusted side: held-out targets are read only to mask them
            splits = self._task.load()
            self.seal(*held_out_strings(splits, self._task.public_resources(splits)))
            self._task = None
        return self._client

    def decide(self, ctx: FeedbackCtx) -> Decision:
        client = self.client
        before = client.ledger.totals.to_json()
        offer = getattr(ctx, "offer", None)
        shown, tstats = select(list(getattr(ctx, "trajectories", []) or []), self.trajectory_tokens)
        task_text = getattr(ctx, "task_text", "") or ""
        conv = client.conversation(
            "feedback", static_prefix(FEEDBACK_INSTRUCTIONS, task_text),
            feedback_request(ctx, shown, tstats, DATA_SOURCES),
            decide_tool(tuple(getattr(offer, "algorithms", ()) or ("sft",)), DATA_SOURCES))
        errors: list[str] = []
        for attempt in range(1 + self.repairs):
            try:
                reply = conv.ask()
            except AgentBudgetExhausted as e:
                return self._stamp(Decision(action="stop", rationale=f"the agent budget is spent: {e}"), ctx,
                                   client, before, errors, tstats, budget_exhausted=True)
            try:
                if reply.tool_input is None:
                    raise InvalidAnswer(reply.parse_error or "no structured answer")
                decision = validate_answer(reply.tool_input, ctx)
            except InvalidAnswer as e:
                errors.append(str(e))
                client.ledger.note_outcome("feedback", "invalid", generation=ctx.generation, error=str(e)[:300])
                if attempt < self.repairs:
                    conv.reply_error(f"Your answer is invalid: {e}\nCall `decide` again with a corrected answer.")
                continue
            client.ledger.note_outcome("feedback", "valid", generation=ctx.generation, action=decision.action)
            source = "diff" if reply.tool_input.get("diff") else ("code" if decision.action == "harness" else None)
            return self._stamp(decision, ctx, client, before, errors, tstats, source=source)
        if self.fallback is None:
            return self._stamp(Decision(action="stop", rationale="the Feedback-Agent gave no valid answer and "
                                        "there is no fallback policy"), ctx, client, before, errors, tstats,
                               fallback=True)
        client.ledger.note_outcome("feedback", "fallback", generation=ctx.generation,
                                   policy=getattr(self.fallback, "name", "?"))
        decision = self.fallback.decide(ctx)
        return self._stamp(decision, ctx, client, before, errors, tstats, fallback=True)

    def _stamp(self, decision: Decision, ctx: Any, client: LLMClient, before: dict, errors: list[str],
               tstats: dict, fallback: bool = False, **extra: Any) -> Decision:
        digest = ctx.digest.to_json() if hasattr(ctx.digest, "to_json") else dict(ctx.digest or {})
        decision.stats = {**digest, **(decision.stats or {}), "agent": "llm", "fallback": fallback,
                          "errors": errors, "trajectories": tstats, "cost": cost_since(client, before), **extra}
        if fallback:
            decision.stats["fallback_policy"] = getattr(self.fallback, "name", None)
        return decision.validate()
