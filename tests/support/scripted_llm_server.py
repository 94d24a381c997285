"""A local HTTP server speaking the Anthropic Messages API (POST /v1/messages) and OpenAI Chat
Completions (POST [/v1]/chat/completions), tool use / function calling included, with usage
fields (and Anthropic prompt-cache accounting of the cache_control prefix), answering from a
scripted list. It records every request (path, headers, body) so tests can look for leaks.

Script entries (dicts, or callables body -> dict):
    {"tool": {"input": {...}, "name": optional}}   a tool call / function call answer
    {"text": "..."}                                a plain text answer
    {"status": 429, "retry_after": 0.2}            rate limited (retry-after in seconds)
    {"status": 500} / {"status": 400, "message": "..."}
    {"delay": 2.0, ...}                            sleep first (a slow answer; the client may time out)
    {"usage": {...}}                               override the computed usage fields
    {"truncated": True, "text": ..., "tool": ...}  cut at max_tokens: stop_reason max_tokens / finish length
                                                   (a tool call, if any, has the partial ``input`` given)
    {"refusal": "..."}                             a refusal: stop_reason refusal / message.refusal
    {"tool": {"input": "not an object"}}           an invalid tool input (not a JSON object)
Anthropic prompt caching is emulated with its minimum cacheable prefix (``min_cache_tokens``,
1024 for Sonnet): a shorter cache_control prefix is neither written nor read.
When the script runs out, ``default`` answers (if given), else a 400 "script exhausted".

    with ScriptedLLMServer([{"tool": {"input": {...}}}]) as server:
        client = anthropic.Anthropic(api_key="k", base_url=server.url)      # or server.openai_url
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from sia.agents.llm.tokens import approx_tokens

Entry = dict | Callable[[dict], dict]


class ScriptedLLMServer:
    def __init__(self, script: list[Entry] | None = None, default: Entry | None = None,
                 min_cache_tokens: int = 1024):
        self.script: list[Entry] = list(script or [])
        self.default = default
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._cached_prefixes: set[str] = set()
        self._httpd: ThreadingHTTPServer | None = None
        self.min_cache_tokens = min_cache_tokens

    # ---- lifecycle -------------------------------------------------------------------
    def start(self) -> "ScriptedLLMServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                server._handle(self)

            def log_message(self, *args):  # quiet
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "ScriptedLLMServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:                       # Anthropic base_url
        assert self._httpd is not None, "start() first"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def openai_url(self) -> str:                # OpenAI base_url
        return self.url + "/v1"

    def add(self, *entries: Entry) -> None:
        with self._lock:
            self.script.extend(entries)

    def bodies_text(self) -> str:
        """Every request body received, as one string (for leak checks)."""
        return "\n".join(json.dumps(r["body"], ensure_ascii=False) for r in self.requests)

    # ---- serving ---------------------------------------------------------------------
    def _next(self, body: dict) -> dict:
        with self._lock:
            entry = self.script.pop(0) if self.script else self.default
        if entry is None:
            return {"status": 400, "message": "scripted server: script exhausted"}
        return entry(body) if callable(entry) else entry

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        raw = h.rfile.read(int(h.headers.get("content-length") or 0))
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {"unparseable": raw.decode("utf-8", "replace")}
        anthropic = h.path.rstrip("/").endswith("/messages")
        with self._lock:
            self.requests.append({"path": h.path, "headers": {k.lower(): v for k, v in h.headers.items()}, "body": body,
                                  "time": time.time()})
        entry = self._next(body)
        if entry.get("delay"):
            time.sleep(float(entry["delay"]))
        status = int(entry.get("status", 200))
        headers = {"content-type": "application/json"}
        if status != 200:
            if entry.get("retry_after") is not None:
                headers["retry-after"] = str(entry["retry_after"])
            kind = {429: "rate_limit_error", 500: "api_error"}.get(status, "invalid_request_error")
            message = entry.get("message", f"scripted {status}")
            payload = ({"type": "error", "error": {"type": kind, "message": message}} if anthropic
                       else {"error": {"message": message, "type": kind, "code": status}})
        else:
            payload = self._anthropic(body, entry) if anthropic else self._openai(body, entry)
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        try:
            h.send_response(status)
            for k, v in headers.items():
                h.send_header(k, v)
            h.send_header("content-length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):   # the client timed out and left
            pass

    def _prefix_tokens(self, body: dict) -> tuple[int, bool]:
        """Tokens of the cache_control prefix (tools + system) and whether it was seen before."""
        system = body.get("system")
        if not isinstance(system, list) or not any(isinstance(b, dict) and b.get("cache_control") for b in system):
            return 0, False
        prefix = json.dumps([body.get("tools"), system], sort_keys=True, ensure_ascii=False)
        digest = hashlib.sha256(prefix.encode()).hexdigest()
        if approx_tokens(prefix) < self.min_cache_tokens:
            return 0, False                     # below the minimum cacheable prefix: not cached
        with self._lock:
            seen = digest in self._cached_prefixes
            self._cached_prefixes.add(digest)
        return approx_tokens(prefix), seen

    def _anthropic(self, body: dict, entry: dict) -> dict:
        content: list[dict] = [{"type": "text", "text": entry["text"]}] if entry.get("text") else []
        stop = "end_turn"
        if "refusal" in entry:
            content, stop = [{"type": "text", "text": entry["refusal"]}], "refusal"
        elif "tool" in entry:
            tools = body.get("tools") or [{}]
            name = entry["tool"].get("name") or tools[0].get("name", "tool")
            content.append({"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:12]}", "name": name,
                            "input": entry["tool"].get("input", {})})
            stop = "tool_use"
        elif not content and "text" in entry:
            content = [{"type": "text", "text": ""}]
        if entry.get("truncated"):
            stop = "max_tokens"
        total = approx_tokens([body.get("tools"), body.get("system"), body.get("messages")])
        prefix, seen = self._prefix_tokens(body)
        usage = {"input_tokens": max(total - prefix, 1), "output_tokens": approx_tokens(content),
                 "cache_creation_input_tokens": 0 if seen else prefix,
                 "cache_read_input_tokens": prefix if seen else 0}
        usage.update(entry.get("usage") or {})
        return {"id": f"msg_{uuid.uuid4().hex[:12]}", "type": "message", "role": "assistant",
                "model": body.get("model", "scripted"), "content": content, "stop_reason": stop,
                "stop_sequence": None, "usage": usage}

    def _openai(self, body: dict, entry: dict) -> dict:
        message: dict[str, Any] = {"role": "assistant", "content": entry.get("text")}
        finish = "stop"
        if "refusal" in entry:
            message["refusal"] = entry["refusal"]
        elif "tool" in entry:
            tools = body.get("tools") or [{"function": {"name": "tool"}}]
            name = entry["tool"].get("name") or tools[0]["function"]["name"]
            args = entry["tool"].get("arguments")   # a raw string, e.g. to script broken JSON
            if args is None:
                args = json.dumps(entry["tool"].get("input", {}), ensure_ascii=False)
            message["tool_calls"] = [{"id": f"call_{uuid.uuid4().hex[:12]}", "type": "function",
                                      "function": {"name": name, "arguments": args}}]
            finish = "tool_calls"
        if entry.get("truncated"):
            finish = "length"
        prompt = approx_tokens([body.get("tools"), body.get("messages")])
        completion = approx_tokens(message)
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                 "prompt_tokens_details": {"cached_tokens": 0}}
        usage.update(entry.get("usage") or {})
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", "scripted"),
                "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage}


# ---- the end-to-end script (python -m sia agent.meta=llm feedback=llm llm.base_url=...) -------------

# A legal_charge harness written from scratch (no OPTIONS toggles): few-shot cases retrieved by
# character bigrams, the valid charge names in the prompt, and when the model names no valid
# charge, the charges of the most similar train case (a nearest-neighbour answer).
LEGAL_REWRITE_HARNESS = '''"""legal_charge harness (scripted Feedback-Agent rewrite): retrieval few-shot + label list +
nearest-neighbour fallback when the model names no valid charge."""
OPEN, CLOSE = "[罪名]", "<eoa>"


def _grams(text):
    text = (text or "")[:400]
    return {text[i:i + 2] for i in range(len(text) - 1)}


def _neighbours(fact, train, k):
    query = _grams(fact)
    scored = []
    for i, case in enumerate(train):
        if case.get("fact", "").strip() == fact.strip():
            continue
        grams = _grams(case.get("fact", ""))
        scored.append((len(query & grams) / (len(query | grams) or 1), -i, case))
    scored.sort(reverse=True)
    return [case for _, _, case in scored[:k]]


def _messages(inputs, ctx):
    res = ctx.resources or {}
    labels = ";".join((res.get("labels") or [])[:40])
    fact = (inputs.get("fact") or "")[:260]
    shots = _neighbours(inputs.get("fact") or "", res.get("train") or [], 2)
    head = (inputs.get("instruction") or res.get("instruction") or "") + "\\n可选罪名：" + labels
    messages = []
    for i, shot in enumerate(reversed(shots)):
        text = shot["fact"][:120]
        messages.append({"role": "user", "content": head + "\\n" + text if i == 0 else text})
        messages.append({"role": "assistant", "content": OPEN + ";".join(shot["charges"]) + CLOSE})
    messages.append({"role": "user", "content": fact if shots else head + "\\n" + fact})
    return messages, shots


def solve(inputs, ctx):
    labels = list((ctx.resources or {}).get("labels") or [])
    messages, shots = _messages(inputs, ctx)
    text = ctx.llm.chat(messages, max_tokens=40, temperature=0.0, stop=[CLOSE]).text
    span = text.split(OPEN)[-1].split(CLOSE)[0]
    found = [x for x in labels if x in span]
    found = [a for a in found if not any(a != b and a in b for b in found)]
    if not found and shots:
        ctx.log("fallback", reason="no valid charge in the output; nearest train case's charges")
        found = list(shots[0]["charges"])   # the most similar case
    return found


def sft_pair(inputs, target, ctx):
    messages, _ = _messages(inputs, ctx)
    return {"messages": messages, "completion": OPEN + ";".join(target) + CLOSE}
'''


def legal_charge_e2e_script(seed_harness: str) -> tuple[list[Entry], Entry]:
    """(script, default) for the wired end-to-end run on legal_charge: the Meta-Agent first
    answers a harness that cannot load, then the seed harness (a repair); the first Feedback
    answer is a diff that does not apply (sent back), the second the from-scratch rewrite above;
    every later feedback request is answered with stop."""
    broken = seed_harness.replace("def solve(inputs, ctx):", "def solve(inputs, ctx)")   # a syntax error
    script: list[Entry] = [
        {"tool": {"input": {"code": broken, "notes": "first try"}}},
        {"tool": {"input": {"code": seed_harness, "notes": "repaired"}}},
        {"tool": {"input": {"action": "harness", "rationale": "scripted: a diff that does not apply",
                            "diff": "@@ -1,1 +1,1 @@\n-this line is not in the harness\n+x = 1\n"}}},
        {"tool": {"input": {"action": "harness", "code": LEGAL_REWRITE_HARNESS,
                            "rationale": "scripted: answers are unreadable; show labels and few-shot cases, "
                                         "fall back to the nearest train case"}}},
    ]
    default = {"tool": {"input": {"action": "stop", "rationale": "scripted: stop"}}}
    return script, default


try:
    import pytest

    @pytest.fixture
    def scripted_llm_e2e():
        """A running server with the legal_charge end-to-end script; yields the server.
        Run: python -m sia agent.meta=llm feedback=llm llm.base_url={server.url} (ANTHROPIC_API_KEY set
        to any value), then look at server.requests / server.bodies_text()."""
        from sia.tasks import TASKS_DIR

        seed = (TASKS_DIR / "legal_charge" / "seed_harness.py").read_text(encoding="utf-8")
        script, default = legal_charge_e2e_script(seed)
        with ScriptedLLMServer(script, default=default) as server:
            yield server
except ImportError:  # pragma: no cover - the server also runs outside pytest
    pass
