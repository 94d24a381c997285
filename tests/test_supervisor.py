"""The one supervisor of sandboxed children, and what the pool now does with it: contain a
child's processes, read child-writable files safely, bound decoded results, stop work a
harness leaves running, keep a lone surrogate readable, let scanpy import in a sandbox."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from security_layers import check_present, needs
from sia.engine.base import GenResult
from sia.harness import protocol, supervisor
from sia.harness.contract import Job
from sia.harness.pool import HarnessPool
from sia.harness.sandbox import SandboxUnavailable, probe

LAYERS = probe()
sandboxed = needs(LAYERS)
MARKER = "sia-supervisor-test-marker"


def marked_alive(marker: str) -> list[int]:
    alive = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and marker.encode() in open(f"/proc/{entry}/cmdline", "rb").read():
                alive.append(int(entry))
        except OSError:
            pass
    return alive


def test_ci_has_every_sandbox_layer_and_pid_namespaces():
    check_present(LAYERS)


# ---- reading files a child can write -----------------------------------------------------

def test_read_untrusted_refuses_symlinks_fifos_and_devices_and_bounds_the_size(tmp_path):
    (tmp_path / "secret").write_text("judge-only")
    (tmp_path / "link").symlink_to(tmp_path / "secret")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dev").symlink_to("/dev/zero")
    (tmp_path / "big").write_bytes(b"x" * 10_000)
    for name in ("link", "fifo", "dev"):
        with pytest.raises(OSError):
            supervisor.read_untrusted(str(tmp_path / name), 100)
    assert supervisor.read_untrusted(str(tmp_path / "big"), 100) == b"x" * 100


@sandboxed
def test_child_log_has_no_name_and_its_tail_is_bounded(tmp_path):
    child = supervisor.Child([sys.executable, "-c", "import os; print('a' * 5000); print('last words')"],
                             cwd=str(tmp_path), env={"PATH": "/usr/bin:/bin"}, log=True)
    assert child.wait(30) == 0
    tail = child.log_tail(100)
    assert len(tail) <= 100 and tail.rstrip().endswith("last words")
    assert os.listdir(tmp_path) == []   # nothing in the child's folder to swap for a link
    child.close()


# ---- containment --------------------------------------------------------------------------

@sandboxed
def test_kill_takes_descendants_that_left_the_session_and_group(tmp_path):
    # One grandchild in a new session (setsid), one in a new group: a session or group kill
    # misses both; the PID namespace does not. Two processes, nothing else: cheap anywhere.
    code = textwrap.dedent(f"""
        import subprocess, sys, time
        cmd = [sys.executable, "-c", "import time; time.sleep(600)", "{MARKER[:9]}" + "{MARKER[9:]}"]
        subprocess.Popen(cmd, start_new_session=True)
        subprocess.Popen(cmd, process_group=0)
        print("started", flush=True)
        time.sleep(600)
    """)
    child = supervisor.Child([sys.executable, "-c", code], cwd=str(tmp_path), env={"PATH": "/usr/bin:/bin"},
                             stdout=subprocess.PIPE)
    try:
        assert child.contained
        assert child.proc.stdout.readline().strip() == b"started"
        deadline = time.monotonic() + 10
        while len(marked_alive(MARKER)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(marked_alive(MARKER)) == 2
    finally:
        child.close()
    assert marked_alive(MARKER) == []   # gone when close() returns, not eventually
    assert child.exit_reason() == "was killed by signal SIGKILL"


@sandboxed
def test_exit_reasons_are_words(tmp_path):
    env = {"PATH": "/usr/bin:/bin"}
    child = supervisor.Child([sys.executable, "-c", "raise SystemExit(3)"], cwd=str(tmp_path), env=env)
    child.wait(30)
    assert child.exit_reason() == "exited with status 3"
    child = supervisor.Child([sys.executable, "-c", "import ctypes; ctypes.string_at(0)"], cwd=str(tmp_path), env=env)
    child.wait(30)
    assert child.exit_reason() == "was killed by signal SIGSEGV"


def test_no_containment_is_refused_in_strict_mode_and_under_ci(tmp_path, monkeypatch):
    monkeypatch.setattr(supervisor, "containment_error", lambda: "unshare(CLONE_NEWPID): Operation not permitted")
    cmd, kw = [sys.executable, "-c", "pass"], {"cwd": str(tmp_path), "env": {"PATH": "/usr/bin"}}
    with pytest.raises(SandboxUnavailable, match="PID namespace"):
        supervisor.Child(cmd, strict=True, **kw)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(SandboxUnavailable, match="PID namespace"):
        supervisor.Child(cmd, strict=False, **kw)
    monkeypatch.delenv("CI")
    child = supervisor.Child(cmd, strict=False, **kw)   # lax, outside CI: a session kill instead
    assert not child.contained and child.wait(30) == 0


def test_uncontained_child_counts_and_kills_its_session(tmp_path, monkeypatch):
    """The lax fallback without a PID namespace: a helper that moved to its own process group
    (as build tools do) is still in the child's session, counted as left running, and killed."""
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(supervisor, "containment_error", lambda: "unshare(CLONE_NEWPID): Operation not permitted")
    code = textwrap.dedent(f"""
        import subprocess, sys, threading, time
        cmd = [sys.executable, "-c", "import time; time.sleep(600)", "{MARKER[:9]}" + "{MARKER[9:]}"]
        subprocess.Popen(cmd, process_group=0)
        threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
        print("started", flush=True)
        time.sleep(600)
    """)
    child = supervisor.Child([sys.executable, "-c", code], cwd=str(tmp_path), env={"PATH": "/usr/bin:/bin"},
                             stdout=subprocess.PIPE, strict=False)
    try:
        assert not child.contained
        assert child.proc.stdout.readline().strip() == b"started"
        (helper,) = marked_alive(MARKER)
        assert helper in supervisor.session_members(child.pid)
        assert child.leftovers(threads=1) == "1 child process(es) and 1 thread(s)"
    finally:
        child.close()
    deadline = time.monotonic() + 10      # SIGKILLed, not waited for: its new parent reaps it
    while (marked_alive(MARKER) or supervisor.session_members(child.pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marked_alive(MARKER) == [] and supervisor.session_members(child.pid) == []
    assert supervisor.thread_count(child.pid) == 0


# ---- the pool -----------------------------------------------------------------------------

class Engine:
    """Echo engine; on each call it records which marked helper processes are alive."""

    max_batch_size = 4

    def __init__(self):
        self.seen: list[list[int]] = []

    def generate(self, requests, adapter=None):
        self.seen.append(marked_alive(MARKER))
        return [GenResult(text="ok", prompt_tokens=1, completion_tokens=1, token_logprobs=[0.0],
                          finish_reason="stop", latency_s=0.0) for _ in requests]


HARNESS = f"""
import os, subprocess, sys, threading, time

def solve(inputs, ctx):
    mode = inputs["mode"]
    me = os.readlink("/proc/self")
    if mode == "helper":
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "{MARKER[:9]}" + "{MARKER[9:]}"])
    elif mode == "thread":
        threading.Thread(target=lambda: time.sleep(600), daemon=True).start()
    elif mode == "check":
        ctx.llm.chat([{{"role": "user", "content": "is the helper gone?"}}])
    elif mode == "lists":
        return [[] for _ in range(inputs["n"])]
    elif mode == "surrogate":
        raise ValueError("bad byte \\udcff in the input")
    elif mode == "scanpy":
        import anndata, scanpy
        try:
            open(inputs["path"], "rb").read(4)
            private = "read"
        except OSError as e:
            private = type(e).__name__
        return {{"scanpy": scanpy.__name__, "anndata": anndata.__name__, "private": private}}
    return me
"""


def run(tmp_path, jobs, engine=None, **kw):
    harness = tmp_path / "h.py"
    harness.write_text(HARNESS)
    with HarnessPool(engine or Engine(), workers=1, example_timeout_s=60, **kw) as pool:
        return pool.run(str(harness), jobs, {}, {}, progress=False)


@sandboxed
def test_processes_and_threads_left_running_are_stopped_when_the_example_ends(tmp_path):
    engine = Engine()
    jobs = [Job(id="h", inputs={"mode": "helper"}), Job(id="c", inputs={"mode": "check"}),
            Job(id="t", inputs={"mode": "thread"}), Job(id="p", inputs={"mode": "plain"}),
            Job(id="q", inputs={"mode": "plain"})]
    h, c, t, p, q = run(tmp_path, jobs, engine)
    assert all(r.error is None for r in (h, c, t, p, q)), [r.error for r in (h, c, t, p, q)]
    assert h.events[-1] == {"type": "leftovers_stopped", "what": "1 child process(es)"}
    assert engine.seen == [[]]          # the next example ran with the helper already gone
    assert h.answer != c.answer         # ... in a fresh worker
    assert t.events[-1] == {"type": "leftovers_stopped", "what": "1 thread(s)"}
    assert p.answer == q.answer and not any(e.get("type") == "leftovers_stopped" for e in p.events)


@sandboxed
def test_an_answer_decoding_to_too_many_objects_fails_that_example_only(tmp_path):
    jobs = [Job(id="big", inputs={"mode": "lists", "n": 50_000}), Job(id="ok", inputs={"mode": "lists", "n": 10})]
    big, ok = run(tmp_path, jobs, max_answer_objects=20_000)
    assert big.answer is None and big.error["kind"] == "bad_answer"
    assert big.error["message"].startswith("answer too large:") and "20000" in big.error["message"]
    assert ok.error is None and ok.answer == [[]] * 10


@sandboxed
def test_a_split_of_large_answers_stops_at_the_run_budget(tmp_path):
    jobs = [Job(id=str(i), inputs={"mode": "lists", "n": 4_000}) for i in range(5)]
    results = run(tmp_path, jobs, max_split_objects=20_000)
    kept = [r for r in results if r.error is None]
    assert len(kept) == 2 and all(r.answer == [[]] * 4_000 for r in kept)
    for r in results[2:]:
        assert r.answer is None and "split's results together exceed" in r.error["message"]


def test_the_object_bound_is_found_before_decoding():
    reader = protocol.FrameReader(max_objects=1_000_000)
    payload = b"[" + b"[]," * 15_000_000 + b"[]]"   # 45 MB: about 1 GB of Python lists if decoded
    with pytest.raises(protocol.TooManyObjects, match="more than the limit of 1000000"):
        reader.feed(protocol.frame(payload))
    assert reader.feed(protocol.frame(b'{"a": [1, 2, "x,y,[z"]}')) == [{"a": [1, 2, "x,y,[z"]}]


@sandboxed
def test_a_lone_surrogate_in_an_exception_is_reported_as_the_exception(tmp_path):
    [r] = run(tmp_path, [Job(id="s", inputs={"mode": "surrogate"})])
    assert r.error["kind"] == "exception", r.error
    assert "bad byte \\udcff in the input" in r.error["message"]
    assert "too large" not in r.error["message"]


@sandboxed
def test_scanpy_and_anndata_import_in_a_sandbox_that_hides_their_bundled_data(tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("scanpy")
    private = Path(spec.origin).parent / "datasets" / "10x_pbmc68k_reduced.h5ad"
    if not private.is_file():
        pytest.skip(f"scanpy's bundled file is not at {private}")
    [r] = run(tmp_path, [Job(id="s", inputs={"mode": "scanpy", "path": str(private)})],
              memory_mb=0, deny_paths=[str(private)])
    assert r.error is None, r.error
    assert r.answer == {"scanpy": "scanpy", "anndata": "anndata", "private": "PermissionError"}


# ---- issue 20: work started at import, trajectories past their limit -----------------------

IMPORT_THREAD_HARNESS = """
import threading

def _spin():
    while True:
        pass

threading.Thread(target=_spin, daemon=True).start()

def solve(inputs, ctx):
    return "ran beside a spinning thread"
"""

JOINED_THREAD_HARNESS = """
import threading

_done = []
_t = threading.Thread(target=lambda: _done.append(1))
_t.start()
_t.join()

def solve(inputs, ctx):
    return len(_done)
"""


@sandboxed
def test_a_thread_started_at_import_is_reported_and_stopped_before_any_job(tmp_path):
    spinning, joined = tmp_path / "spin.py", tmp_path / "joined.py"
    spinning.write_text(IMPORT_THREAD_HARNESS)
    joined.write_text(JOINED_THREAD_HARNESS)
    jobs = [Job(id=str(i), inputs={}) for i in range(3)]
    with HarnessPool(Engine(), workers=1, example_timeout_s=30) as pool:
        error = pool.check(str(spinning), {}, {})
        results = pool.run(str(spinning), jobs, {}, {}, progress=False)
        assert pool.check(str(joined), {}, {}) is None   # a thread that finished at import is fine
        [ok] = pool.run(str(joined), jobs[:1], {}, {}, progress=False)
    assert error.startswith("the harness left 1 thread(s) running after its import"), error
    assert [r.error["kind"] for r in results] == ["import"] * 3 and all(r.answer is None for r in results)
    assert results[0].error["message"] == error
    assert ok.error is None and ok.answer == 1


LOG_HARNESS = """
def solve(inputs, ctx):
    if inputs.get("disable_worker_check"):   # the worker is untrusted: the parent checks again
        import __main__   # the worker runs as python -m sia.harness.worker
        __main__.events_problem = lambda events, limit: ""
    ctx.log("notes", text="x" * inputs["chars"])
    return "answer"
"""


def log_run(tmp_path, jobs, **kw):
    harness = tmp_path / "log.py"
    harness.write_text(LOG_HARNESS)
    with HarnessPool(Engine(), workers=1, example_timeout_s=60, **kw) as pool:
        return pool.run(str(harness), jobs, {}, {}, progress=False)


@sandboxed
def test_a_trajectory_over_the_per_example_limit_fails_that_example_only(tmp_path):
    jobs = [Job(id="big", inputs={"chars": 300_000}), Job(id="ok", inputs={"chars": 1_000}),
            Job(id="forged", inputs={"chars": 300_000, "disable_worker_check": True})]
    big, ok, forged = log_run(tmp_path, jobs, max_event_bytes=100_000)
    for r in (big, forged):
        assert r.answer is None and r.error["kind"] == "bad_answer", r.error
        assert r.error["message"].startswith("trajectory too large:") and "100000 bytes" in r.error["message"]
        assert [e["type"] for e in r.events] == ["events_dropped"]
        assert len(json.dumps(r.events)) < 1_000
    assert ok.error is None and ok.answer == "answer" and ok.events[0]["text"] == "x" * 1_000


@sandboxed
def test_trajectories_are_charged_to_the_run_budget(tmp_path):
    jobs = [Job(id=str(i), inputs={"chars": 60_000}) for i in range(5)]
    results = log_run(tmp_path, jobs, max_split_bytes=150_000)
    kept = [r for r in results if r.error is None]
    assert len(kept) == 2 and all(r.events[0]["text"] == "x" * 60_000 for r in kept)
    for r in results[2:]:
        assert r.answer is None and "split's results together exceed" in r.error["message"]
        assert "(answers and trajectories count)" in r.error["message"]
        assert [e["type"] for e in r.events] == ["events_dropped"]
