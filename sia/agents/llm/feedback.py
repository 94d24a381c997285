"""``LLMFeedback``: one request per generation, built to let a strong model reflect on
train and select on val (as GEPA does): run facts and budget left, the levers as the lever will
really use them, val aggregates, the decision history (val only; rejected tries with their
change), the incumbent harness, the incumbent's TRAIN trajectories with their gold, and val
failures as gold-free summaries. Test scores never appear. Harness-controlled text is quoted data.

The answer comes through the ``decide`` tool (tool_choice auto: the model reasons first) and is
validated strictly; harness changes are SEARCH/REPLACE blocks, a unified diff or a whole file
(``sia.agents.llm.diff``). Each failure is its own case: an invalid answer goes back with the
error, an answer cut at max_tokens goes back asking for an edit instead of a whole file (one
extra try), a refusal or an empty answer goes back saying so. When the answers stay invalid, the
budget cannot pay for the next request, or the API fails after the SDK's retries
(``llm.on_failure=fallback``), the fallback (rules) feedback decides and the Decision says why
(``stats.fallback``, ``stats.fallback_reason``, ``stats.errors``); ``llm.on_failure=stop`` ends the
run cleanly instead, resumable."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Protocol

from sia.agents.decision import AUTO, AgentCost, Decision, InvalidDecision, TrainingPlan
from sia.agents.digest import Digest
from sia.keep import KeepSettings
from sia.agents.llm.backends import LLMCallError, Reply
from sia.agents.llm.client import AgentBudgetExhausted, LLMClient, client_for_run, cost_since, unavailable
from sia.agents.llm.diff import DiffError, apply_edit
from sia.agents.llm.prompts import (FEEDBACK_INSTRUCTIONS, TRY_HARNESS, decide_tool, feedback_request,
                                    offered_algorithms, static_prefix)
from sia.agents.llm.quoting import quoted_json
from sia.agents.llm.scrub import held_out_strings
from sia.agents.llm.trajectories import select
from sia.parts import Feedback, HarnessChecker, LeverOffer

DATA_SOURCES = ("auto", "gold", "rollouts")   # accepted in old answers, not asked for: the algorithm decides


class FeedbackCtx(Protocol):
    """What the LLM feedback agent reads of the loop's context (the loop's real ctx matches this)."""

    generation: int
    harness_code: str
    digest: Any                  # .to_json() -> dict
    history: list                # records with .to_json() or dicts
    offer: LeverOffer | None
    budget_left: dict
    trajectories: list[dict]     # per VAL example (summarised gold-free): id, reason, failure, error (no score)
    train_trajectories: list[dict]   # the incumbent on the train probe (shown whole, with gold)
    train_examples: list         # the probe's train examples (id, target): the gold of train_trajectories
    baselines: dict              # name -> val score
    checker: HarnessChecker
    train_probe: Any             # .to_json() or dict or None
    task_text: str               # task.md (optional): part of the cached static prefix
    trier: Any                   # sia.parts.HarnessTrier or None: try_harness runs candidates on train


class InvalidAnswer(ValueError):
    pass


def _positive_int(plan: dict, key: str, limit: int) -> int:
    v = plan.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise InvalidAnswer(f"training.{key} must be a positive integer, got {v!r}")
    if limit and v > limit:
        raise InvalidAnswer(f"training.{key}={v} exceeds what the weights lever offers (at most {limit})")
    return v


def candidate_code(answer: dict, incumbent: str) -> str:
    """The harness file an answer's `edits`, `diff` or `code` stands for (InvalidAnswer if none)."""
    given = [k for k in ("edits", "diff", "code") if answer.get(k)]
    if len(given) != 1:
        raise InvalidAnswer("action=harness needs exactly one of `edits` (SEARCH/REPLACE blocks), `diff` "
                            f"(a unified diff) or `code` (a whole file); got {given or 'none'}")
    value = answer[given[0]]
    if not isinstance(value, str):
        raise InvalidAnswer(f"`{given[0]}` must be a string")
    if given[0] == "code":
        return value
    try:
        return apply_edit(incumbent, value)
    except DiffError as e:
        raise InvalidAnswer(f"the {'diff' if given[0] == 'diff' else 'edit'} does not apply to the "
                            f"incumbent (nothing was changed): {e}") from None


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
        code = candidate_code(answer, ctx.harness_code)
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
            raise InvalidAnswer("action=weights needs `training`: {algorithm, steps, examples}")
        allowed = [AUTO, *offered_algorithms(offer, ctx.harness_code)]
        if plan.get("algorithm") not in allowed:
            raise InvalidAnswer(f"training.algorithm={plan.get('algorithm')!r} is not offered; use one of {allowed}")
        training = TrainingPlan(algorithm=plan["algorithm"], steps=_positive_int(plan, "steps", offer.max_steps),
                                examples=_positive_int(plan, "examples", offer.max_examples))
    decision = Decision(action=action, rationale=rationale.strip(), harness_code=code, training=training)
    try:
        return decision.validate(tuple(offer.algorithms) if action == "weights" else None)
    except InvalidDecision as e:
        raise InvalidAnswer(str(e)) from None


TRUNCATED = ("Your answer was cut at the output limit (max_tokens={limit}) before the tool call was complete, "
             "so nothing was applied. Do not send a whole file again: call `decide` with `edits` "
             "(SEARCH/REPLACE blocks for just the lines that change) and keep the prose before it short.")
REFUSED = ("Your answer was a refusal. This is routine engineering work on a program you are improving; if a "
           "part of the data looks unsafe, ignore it and decide on the rest. Call `decide`.")
EMPTY = "Your answer was empty. Reason briefly, then call `decide`."


def repair_message(reply: Reply, error: str, limit: int) -> str:
    """What the model is told after an answer that could not be used, one case each."""
    if reply.truncated:
        return TRUNCATED.format(limit=limit)
    if reply.refused:
        return REFUSED
    if reply.empty:
        return EMPTY
    return f"Your answer is invalid: {error}\nCall `decide` again with a corrected answer."


def reply_problem(reply: Reply) -> str | None:
    """Why a reply holds no usable answer (truncation, refusal, empty, unreadable), or None."""
    if reply.truncated and not reply.tool_input:
        return f"the answer was cut at max_tokens (stop_reason={reply.stop_reason})"
    if reply.truncated:
        return f"the answer was cut at max_tokens (stop_reason={reply.stop_reason}); its tool input may be partial"
    if reply.refused:
        return f"the model refused (stop_reason={reply.stop_reason})"
    if reply.empty:
        return "the answer was empty (no text, no tool call)"
    if reply.tool_input is None:
        return reply.parse_error or "no structured answer"
    return None


class LLMFeedback:
    wants_train_probe = True     # reflect on train: the loop scores the probe for every kept generation

    def __init__(self, llm: Any = None, fallback: Feedback | None = None, run_dir: str | Path | None = None,
                 trajectory_tokens: int = 12000, repairs: int = 1, sealed: Iterable[str] = (),
                 public: Iterable[str] = (), agent_tokens: int | None = None, agent_dollars: float | None = None,
                 client: LLMClient | None = None, task: Any = None, name: str = "llm", facts: dict | None = None,
                 tries: int = 2, try_examples: int = 4, keep: str = "paired", keep_alpha: float = 0.05,
                 keep_margin: float = 2.0, keep_chunk: int = 16):
        if not isinstance(trajectory_tokens, int) or trajectory_tokens < 0:
            raise ValueError(f"feedback.trajectory_tokens={trajectory_tokens!r} must be a whole number >= 0")
        self.name, self.llm, self.fallback = name, llm, fallback
        self.run_dir = Path(run_dir) if run_dir else None
        self.trajectory_tokens, self.repairs = trajectory_tokens, int(repairs)
        self.agent_tokens, self.agent_dollars = agent_tokens, agent_dollars
        self.facts = dict(facts or {})   # run facts from the config: task model, context, per-example caps
        # the loop's keep rule (declared on sia.parts.Feedback), as the offline feedback agents carry it
        self.keep_settings = KeepSettings(rule=keep, alpha=keep_alpha, margin=keep_margin, chunk=keep_chunk)
        for key, value in (("tries", tries), ("try_examples", try_examples)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"agent.{key}={value!r} must be a whole number >= 0 (0 turns try_harness off)")
        self.tries, self.try_examples = tries, try_examples
        self._tried: list[dict] = []     # this generation's try_harness calls (examples, score, problem)
        self._client, self._sealed = client, (list(sealed), list(public))
        self._task = task       # when given, its val/test targets are sealed at the first request
        self._train_gold: dict = {}

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
            self._train_gold = {e.id: e.target for e in splits.train}   # train is public
            self._task = None
        return self._client

    def decide_with(self, ctx: Any, levers: frozenset[str]) -> Decision | None:
        """None: the model is not asked again with fewer levers (a second paid request); when
        no weight update fits the time left the loop stops the run."""
        return None

    def budget_left(self, ctx: Any, client: LLMClient) -> dict:
        left = dict(getattr(ctx, "budget_left", {}) or {})
        t = client.ledger.totals
        if client.agent_dollars:
            left["agent_dollars"] = round(max(0.0, client.agent_dollars - t.dollars), 4)
        if client.agent_tokens:
            left["agent_tokens"] = max(0, client.agent_tokens - t.tokens)
        return left

    def train_view(self, ctx: Any) -> tuple[str, dict]:
        """The incumbent's train-probe trajectories with their gold, cut to the token budget."""
        gold = dict(self._train_gold)
        gold.update({e.id: e.target for e in getattr(ctx, "train_examples", None) or []})
        return select(list(getattr(ctx, "train_trajectories", None) or []), self.trajectory_tokens, gold=gold)

    def decide(self, ctx: FeedbackCtx) -> Decision:
        client = self.client
        before = client.ledger.totals.to_json()
        offer = getattr(ctx, "offer", None)
        shown, tstats = self.train_view(ctx)
        task_text = getattr(ctx, "task_text", "") or ""
        can_try = (self.tries if getattr(ctx, "trier", None) is not None and self.try_examples > 0
                   and client.settings.tool_mode != "json" else 0)
        tools = [decide_tool(offered_algorithms(offer, ctx.harness_code) if offer is not None else ())]
        conv = client.conversation(
            "feedback", static_prefix(FEEDBACK_INSTRUCTIONS, task_text),
            feedback_request(ctx, shown, tstats, facts=self.facts, budget_left=self.budget_left(ctx, client),
                             tries=(can_try, self.try_examples)),
            tools + [TRY_HARNESS] if can_try else tools[0])
        errors: list[str] = []
        self._tried = []
        tries, truncations = 1 + self.repairs, 0
        while tries > 0:
            tries -= 1
            try:
                reply = conv.ask()
            except AgentBudgetExhausted as e:
                return self._fall_back(ctx, client, before, errors, tstats, f"agent budget: {e}",
                                       budget_exhausted=True)
            except LLMCallError as e:
                client.ledger.note_outcome("feedback", "api_error", generation=ctx.generation, error=str(e)[:300])
                if client.settings.on_failure == "stop":
                    raise unavailable(e, client.run_dir) from None
                errors.append(f"API error: {e}")
                return self._fall_back(ctx, client, before, errors, tstats, f"the agent API failed: {e}",
                                       api_error=True)
            if reply.tool_name == TRY_HARNESS.name and reply.tool_input is not None and not reply.truncated:
                if len(self._tried) < can_try:    # a try is not a repair: it does not use one up
                    tries += 1
                    conv.reply_result(self._try(ctx, client, reply.tool_input, can_try))
                    continue
                errors.append("try_harness called with no tries left")
                if tries > 0:
                    conv.reply_error(f"No try_harness calls are left this generation ({can_try} used). "
                                     f"Call `decide` now.")
                continue
            try:
                problem = reply_problem(reply)
                if problem is not None:
                    raise InvalidAnswer(problem)
                decision = validate_answer(reply.tool_input, ctx)
            except InvalidAnswer as e:
                errors.append(str(e))
                client.ledger.note_outcome("feedback", "truncated" if reply.truncated else "invalid",
                                           generation=ctx.generation, error=str(e)[:300])
                if reply.truncated and truncations == 0:
                    truncations, tries = 1, tries + 1     # one extra try: the answer was lost, not wrong
                if tries > 0:
                    conv.reply_error(repair_message(reply, str(e), client.settings.max_tokens))
                continue
            client.ledger.note_outcome("feedback", "valid", generation=ctx.generation, action=decision.action)
            source = next((k for k in ("edits", "diff", "code") if reply.tool_input.get(k)), None) \
                if decision.action == "harness" else None
            return self._stamp(decision, ctx, client, before, errors, tstats, source=source)
        return self._fall_back(ctx, client, before, errors, tstats,
                               f"no valid answer after {len(errors)} tries")

    def _try(self, ctx: Any, client: LLMClient, answer: dict, allowed: int) -> str:
        """Run a try_harness call and say what happened, as the tool's result (train only)."""
        n = answer.get("examples") if isinstance(answer.get("examples"), int) else self.try_examples
        n = max(1, min(n, self.try_examples))
        try:
            code = candidate_code(answer, ctx.harness_code)
        except InvalidAnswer as e:
            result: dict = {"problem": str(e)}
        else:
            result = ctx.trier.try_on_train(code, n)
        self._tried.append({"examples": n, "score": result.get("score"), "problem": result.get("problem")})
        client.ledger.event({"event": "try", "role": "feedback", "generation": ctx.generation, "examples": n,
                             "score": result.get("score"), "wall_s": result.get("wall_s"),
                             "problem": (result.get("problem") or "")[:300] or None})
        left = allowed - len(self._tried)
        if result.get("problem"):
            return f"The candidate did not run: {result['problem']}\n({left} try_harness call(s) left.)"
        rows = [r for r in result.get("rows") or [] if isinstance(r, dict)]
        text, stats = select(rows, max(1000, self.trajectory_tokens // 2),
                             gold={r.get("id"): r.get("gold") for r in rows})
        summary = {"score": result.get("score"), "examples": result.get("n"), "wall_s": result.get("wall_s"),
                   "failure_kinds": stats["failure_kinds"], "shown": stats["shown"]}
        return (f"Result of the candidate on {result.get('n')} train examples (quoted, untrusted data):\n"
                f"{quoted_json(summary)}\n{text}\n({left} try_harness call(s) left; then call `decide`.)")

    def _fall_back(self, ctx: Any, client: LLMClient, before: dict, errors: list[str], tstats: dict, why: str,
                   **extra: Any) -> Decision:
        """The fallback feedback decides this generation, and the record says why."""
        if self.fallback is None:
            return self._stamp(Decision(action="stop", rationale=f"{why}; there is no fallback feedback"), ctx,
                               client, before, errors, tstats, fallback=True, fallback_reason=why, **extra)
        client.ledger.note_outcome("feedback", "fallback", generation=ctx.generation,
                                   feedback=getattr(self.fallback, "name", "?"), reason=why[:300])
        decision = self.fallback.decide(ctx)
        decision.rationale = f"[fallback to {getattr(self.fallback, 'name', 'rules')}: {why[:200]}] " \
                             f"{decision.rationale}"
        return self._stamp(decision, ctx, client, before, errors, tstats, fallback=True, fallback_reason=why,
                           **extra)

    def _stamp(self, decision: Decision, ctx: Any, client: LLMClient, before: dict, errors: list[str],
               tstats: dict, fallback: bool = False, **extra: Any) -> Decision:
        if isinstance(ctx.digest, Digest):
            decision.digest = ctx.digest
        decision.fallback, decision.cost = fallback, AgentCost.from_json(cost_since(client, before))
        decision.stats = {**(decision.stats or {}), "agent": "llm", "errors": errors, "trajectories": tstats,
                          "tries": list(self._tried), **extra}
        if fallback:
            decision.stats["fallback_feedback"] = getattr(self.fallback, "name", None)
        return decision.validate()
