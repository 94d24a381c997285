"""The two wire formats: Anthropic Messages (tool use, prompt caching on the static prefix) and
OpenAI Chat Completions (function calling, or JSON mode held to the tool's schema by the
server's guided decoding, for servers without tool calls, e.g. a plain ``vllm serve``). Each backend
builds a request body, sends it with the SDK client (whose own ``max_retries`` and ``timeout``
handle 429 with retry-after, 5xx, timeouts and dropped connections: no second retry loop here),
and reads the answer back from the raw JSON, so a cached answer reads exactly like a fresh one."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from sia.agents.llm.config import LLMSettings, Usage


@dataclass
class Tool:
    name: str
    description: str
    schema: dict            # JSON schema of the tool's input


@dataclass
class Reply:
    text: str                       # the model's prose (or the raw JSON in json mode)
    tool_input: dict | None         # the structured answer, when one came back
    usage: Usage
    stop_reason: str = ""
    parse_error: str | None = None  # why the structured answer could not be read
    truncated: bool = False         # cut at max_tokens (Anthropic "max_tokens", OpenAI "length")
    refused: bool = False           # the model declined (Anthropic "refusal", OpenAI refusal/content_filter)
    called: bool = False            # a tool/function call came back (its input may still be invalid)
    tool_name: str | None = None    # which tool was called (the first call, when several came back)

    @property
    def empty(self) -> bool:
        return not (self.text or "").strip() and not self.called


class LLMCallError(RuntimeError):
    """The API refused the request (a 4xx other than 429, or retries exhausted): its message."""


def first_json_object(text: str) -> dict | None:
    """The first JSON object in ``text`` (inside a ```json fence or bare)."""
    fence = re.search(r"```(?:json)?\s*(\{.*?\})\s*```", text or "", re.S)
    candidates = [fence.group(1)] if fence else []
    start = (text or "").find("{")
    if start >= 0:
        candidates.append(text[start:text.rfind("}") + 1])
    for c in candidates:
        try:
            value = json.loads(c)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def sdk_call(errors, create, s: LLMSettings, *, error: str, unreachable: str, hint=lambda message: "") -> dict:
    """``create()``'s response as JSON; the SDK's failures (after its own retries) as one
    LLMCallError that says what to do."""
    try:
        return create().model_dump(mode="json")
    except errors.APIStatusError as e:
        message = _message(e)
        raise LLMCallError(f"{error} {e.status_code}: {message}{hint(message)}") from None
    except errors.APIConnectionError as e:
        raise LLMCallError(f"{unreachable} after {s.max_retries} retries: {e}") from None


class SDKBackend:
    """What both SDK backends share: the settings, the SDK's error classes, and a client on the
    settings' endpoint with their retries and timeout."""

    def __init__(self, s: LLMSettings, sdk, client_class, api_key: str):
        self.s = s
        self._errors = sdk
        self.client = client_class(api_key=api_key, base_url=s.base_url, max_retries=s.max_retries, timeout=s.timeout_s)

    def _start(self, tool: Tool | list[Tool]) -> tuple[list[Tool], dict[str, Any]]:
        """The tools offered, and the body's model and answer limit."""
        return (tool if isinstance(tool, list) else [tool]), {"model": self.s.model, "max_tokens": self.s.max_tokens}


class AnthropicBackend(SDKBackend):
    name = "anthropic"

    def __init__(self, s: LLMSettings, api_key: str | None):
        import anthropic

        super().__init__(s, anthropic, anthropic.Anthropic, api_key or "none")

    def body(self, system: str, user: str, tool: Tool | list[Tool]) -> dict:
        tools, body = self._start(tool)
        block: dict[str, Any] = {"type": "text", "text": system}
        if self.s.prompt_cache:
            block["cache_control"] = {"type": "ephemeral"}   # the static prefix: tools + system
        if self.s.thinking_tokens:
            # Extended thinking: its budget comes on top of the answer's; it allows neither a
            # forced tool nor a temperature.
            body["max_tokens"] = self.s.max_tokens + self.s.thinking_tokens
            body["thinking"] = {"type": "enabled", "budget_tokens": self.s.thinking_tokens}
        elif self.s.temperature is not None:
            body["temperature"] = self.s.temperature
        # tool_choice auto: the model may reason in prose before it calls the tool.
        return {**body, "system": [block], "messages": [{"role": "user", "content": [{"type": "text", "text": user}]}],
                "tools": [{"name": t.name, "description": t.description, "input_schema": t.schema} for t in tools],
                "tool_choice": {"type": "auto"}}

    def send(self, body: dict) -> dict:
        body = dict(body)
        extra = {"temperature": body.pop("temperature")} if "temperature" in body else None
        # This SDK's create() has no temperature argument; the API still takes it in the body.
        return sdk_call(self._errors, lambda: self.client.messages.create(**body, extra_body=extra), self.s,
                        error="Anthropic API error", unreachable=f"Anthropic API unreachable at "
                        f"{self.s.base_url or 'api.anthropic.com'}")

    def parse(self, raw: dict) -> Reply:
        u = raw.get("usage") or {}
        usage = Usage(input=u.get("input_tokens") or 0, output=u.get("output_tokens") or 0,
                      cache_write=u.get("cache_creation_input_tokens") or 0,
                      cache_read=u.get("cache_read_input_tokens") or 0)
        blocks = raw.get("content") or []
        text = "\n".join(b.get("text", "") for b in blocks if b.get("type") == "text")
        tool = next((b for b in blocks if b.get("type") == "tool_use"), None)
        tool_input = tool.get("input") if tool and isinstance(tool.get("input"), dict) else None
        stop = raw.get("stop_reason") or ""
        error = None if tool_input is not None else (
            "no tool_use block in the answer" if tool is None else
            f"the tool call's input is not a JSON object (got {type(tool.get('input')).__name__})")
        return Reply(text=text, tool_input=tool_input, usage=usage, stop_reason=stop, parse_error=error,
                     truncated=stop == "max_tokens", refused=stop == "refusal", called=tool is not None,
                     tool_name=tool.get("name") if tool else None)

    def follow_up(self, body: dict, raw: dict, error: str, is_error: bool = True) -> dict:
        """``body`` continued with the model's answer and ``error`` (or a tool's result, with
        ``is_error=False``) as the reply to its first tool call; every other call is answered too."""
        content, ids = [], []
        for b in raw.get("content") or []:
            if b.get("type") in ("thinking", "redacted_thinking"):
                content.append(b)       # the API wants thinking blocks back unchanged
            elif b.get("type") == "text" and b.get("text"):
                content.append({"type": "text", "text": b["text"]})
            elif b.get("type") == "tool_use":
                ids.append(b["id"])
                tool_input = b.get("input") if isinstance(b.get("input"), dict) else {}
                content.append({"type": "tool_use", "id": b["id"], "name": b["name"], "input": tool_input})
        answers = [{"type": "tool_result", "tool_use_id": tool_id, "is_error": is_error if i == 0 else True,
                    "content": error if i == 0 else "not run: one tool call at a time"}
                   for i, tool_id in enumerate(ids)] or [{"type": "text", "text": error}]
        messages = list(body["messages"])
        if content:
            messages.append({"role": "assistant", "content": content})
        messages.append({"role": "user", "content": answers})
        return {**body, "messages": messages}


class OpenAIBackend(SDKBackend):
    name = "openai"

    def __init__(self, s: LLMSettings, api_key: str | None):
        import openai

        # A local server needs no key, but the SDK insists on one: any placeholder will do.
        super().__init__(s, openai, openai.OpenAI, api_key or "no-key")

    def body(self, system: str, user: str, tool: Tool | list[Tool]) -> dict:
        tools, body = self._start(tool)
        tool = tools[0]                   # json mode answers the first (the decision) only
        if self.s.temperature is not None:
            body["temperature"] = self.s.temperature
        if self.s.tool_mode == "json":
            system += (f"\n\nAnswer with ONE JSON object only (no prose), the arguments of `{tool.name}`, "
                       f"matching this JSON schema:\n{json.dumps(tool.schema, ensure_ascii=False)}")
            body["response_format"] = json_schema_format(tool)
        else:
            body["tools"] = [{"type": "function", "function": {"name": t.name, "description": t.description,
                                                               "parameters": t.schema}} for t in tools]
            body["tool_choice"] = "auto"      # the model may reason in prose before the call
        body["messages"] = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return body

    def send(self, body: dict) -> dict:
        return sdk_call(self._errors, lambda: self.client.chat.completions.create(**body), self.s,
                        error="OpenAI-compatible API error", unreachable=f"OpenAI-compatible server unreachable at "
                        f"{self.s.base_url or 'api.openai.com'}", hint=lambda message: openai_hint(message, self.s))

    def parse(self, raw: dict) -> Reply:
        u = raw.get("usage") or {}
        cached = ((u.get("prompt_tokens_details") or {}).get("cached_tokens")) or 0
        usage = Usage(input=(u.get("prompt_tokens") or 0) - cached, output=u.get("completion_tokens") or 0,
                      cache_read=cached)
        choice = (raw.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        text = message.get("content") or ""
        calls = message.get("tool_calls") or []
        tool_input, error = None, None
        if calls:
            try:
                tool_input = json.loads(calls[0]["function"]["arguments"] or "{}")
            except (ValueError, KeyError, TypeError) as e:
                error = f"the function call's arguments are not valid JSON: {e}"
        else:
            tool_input = first_json_object(text)
            error = None if tool_input is not None else "no function call and no JSON object in the answer"
        if tool_input is not None and not isinstance(tool_input, dict):
            tool_input, error = None, "the answer is JSON but not an object"
        finish = choice.get("finish_reason") or ""
        return Reply(text=text, tool_input=tool_input, usage=usage, stop_reason=finish, parse_error=error,
                     truncated=finish == "length", called=bool(calls),
                     tool_name=((calls[0].get("function") or {}).get("name") if calls else None),
                     refused=bool(message.get("refusal")) or finish == "content_filter")

    def follow_up(self, body: dict, raw: dict, error: str, is_error: bool = True) -> dict:
        message = ((raw.get("choices") or [{}])[0]).get("message") or {}
        calls = message.get("tool_calls") or []
        assistant: dict[str, Any] = {"role": "assistant", "content": message.get("content") or ""}
        messages = list(body["messages"])
        if calls:
            assistant["tool_calls"] = [{"id": c["id"], "type": "function",
                                        "function": {"name": c["function"]["name"],
                                                     "arguments": c["function"]["arguments"]}} for c in calls]
            messages += [assistant, *[{"role": "tool", "tool_call_id": c["id"],
                                       "content": error if i == 0 else "not run: one tool call at a time"}
                                      for i, c in enumerate(calls)]]
        else:
            messages += [assistant, {"role": "user", "content": error}]
        return {**body, "messages": messages}


def json_schema_format(tool: Tool) -> dict:
    """``response_format`` for JSON mode: the tool's schema, so a server with guided decoding
    (vLLM, llama.cpp, Ollama, SGLang) can only emit an object of that shape, and a small model's
    answer still parses. ``strict`` is off: OpenAI's strict mode rejects optional fields."""
    return {"type": "json_schema", "json_schema": {"name": tool.name, "description": tool.description,
                                                   "schema": tool.schema, "strict": False}}


def openai_hint(message: str, s: LLMSettings) -> str:
    """What to change when an OpenAI-compatible server refuses a request for a known reason."""
    m = message.lower()
    if s.tool_mode == "tools" and ("tool-call-parser" in m or "auto-tool-choice" in m or "tool choice" in m):
        return (" (this server has no function calling: set llm.tool_mode=json to get the answer as guided "
                "JSON, or start vLLM with --enable-auto-tool-choice --tool-call-parser <the model's parser>)")
    if "context length" in m or "maximum context" in m or "too long" in m:
        return (f" (the request does not fit the served model's context: lower llm.max_tokens "
                f"(now {s.max_tokens}) or serve the model with a longer context, e.g. vLLM --max-model-len)")
    if "response_format" in m or "json_schema" in m:
        return " (this server has no JSON-schema output: use a server with guided decoding, or llm.tool_mode=tools)"
    return ""


def _message(e: Any) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    return str(getattr(e, "message", e))


def make_backend(s: LLMSettings) -> AnthropicBackend | OpenAIBackend:
    cls = AnthropicBackend if s.backend == "anthropic" else OpenAIBackend
    return cls(s, s.api_key())
