"""The harness sandbox and worker pool, exercised with adversarial harnesses and a fake engine.

These are confinement tests, not model tests: the engine echoes the last user message
reversed and records its batch sizes.
"""
from __future__ import annotations

import base64
import io
import json
import os
import socket
import textwrap

import numpy as np
import pytest

from sia.engine.base import GenResult
from sia.harness import protocol
from sia.harness.contract import Job
from sia.harness.pool import HarnessPool
from sia.harness.sandbox import probe, scrubbed_env
from security_layers import TRY_OS_CALL, canary, check_present, metadata_of, needs

LAYERS = probe()
# Skipped on a machine without the layers, except under CI=true: there they run and fail.
pytestmark = needs(LAYERS)
SECRET = "sk-ant-test-secret-value"


class FakeEngine:
    """Deterministic stand-in for a model: reversed last user message, token count = chars."""

    def __init__(self, max_batch_size: int = 8):
        self.max_batch_size = max_batch_size
        self.batches: list[int] = []

    def generate(self, requests, adapter=None):
        self.batches.append(len(requests))
        out = []
        for r in requests:
            prompt = r.messages[-1]["content"]
            text = prompt[::-1][: r.max_tokens]
            out.append(GenResult(text=text, prompt_tokens=len(prompt), completion_tokens=len(text),
                                 token_logprobs=[-0.5] * len(text), finish_reason="stop", latency_s=0.001))
        return out


def write(tmp_path, name: str, source: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return str(path)


# One harness with a behaviour per ``inputs["mode"]``; each job of the shared run picks one.
MODES_HARNESS = """
    import ctypes, os, socket, sys

    def _err(fn):
        try:
            fn()
            return "allowed"
        except OSError as e:
            return f"{type(e).__name__}: {e}"

    def _net(port):
        out = {}
        out["create_connection"] = _err(lambda: socket.create_connection(("127.0.0.1", port), timeout=2))
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        out["socket_connect"] = _err(lambda: s.connect(("127.0.0.1", port)))
        out["udp"] = _err(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("10.0.0.1", 53)))
        out["unix"] = _err(lambda: socket.socket(socket.AF_UNIX))
        return out

    def solve(inputs, ctx):
        mode = inputs["mode"]
        if mode == "ok":
            return {"double": inputs["x"] * 2}
        if mode == "private":
            return open(inputs["path"]).read()
        if mode == "public":
            return open(ctx.files["public"]).read()
        if mode == "parent":
            pid = inputs["pid"]
            return {"environ": _err(lambda: open(f"/proc/{pid}/environ").read()),
                    "signal": _err(lambda: os.kill(pid, 0)),
                    "shadow": _err(lambda: open("/etc/shadow").read()),
                    "repo_file": _err(lambda: open(inputs["repo_file"]).read()),
                    "repo_listing": _err(lambda: os.listdir(inputs["repo_dir"])),
                    "sia_file": _err(lambda: open(inputs["sia_file"]).read())}
        if mode == "env":
            return {"keys": sorted(os.environ),
                    "leaked": any(inputs["secret"] in v for v in os.environ.values())}
        if mode == "net":
            return _net(inputs["port"])
        if mode == "write":
            with open("scratch.txt", "w") as f:
                f.write("mine")
            return {"scratch": open("scratch.txt").read(),
                    "outside": _err(lambda: open(inputs["outside"], "w").write("x"))}
        if mode == "print":
            print("x" * 200_000)
            sys.stdout.flush()
            os.write(1, b"\\x00\\x00\\x10\\x00garbage on fd 1")
            print("to stderr", file=sys.stderr)
            return "still fine"
        if mode == "raise":
            raise ValueError("boom 42")
        if mode == "oom":
            return len(bytearray(4 << 30))
        if mode == "numpy":
            import numpy as np
            return {"arr": np.arange(6, dtype=np.float32).reshape(2, 3), "scalar": np.int64(7)}
        if mode == "bad_answer":
            return object()
        if mode == "loop":
            ctx.llm.chat([{"role": "user", "content": "before the loop"}])
            while True:
                pass
        if mode == "exit":
            os._exit(1)
        if mode == "segv":
            ctypes.string_at(0)
        if mode == "forge":   # write junk straight into the private protocol pipe
            import fcntl
            for fd in range(3, 64):
                try:
                    if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY:
                        os.write(fd, b"\\xff\\xff\\xff\\xffjunk")
                except OSError:
                    pass
            import time
            time.sleep(5)
        raise AssertionError(mode)
"""


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One pool run over many sandbox probes (process start-up is the slow part)."""
    tmp = tmp_path_factory.mktemp("shared")
    harness = write(tmp, "harness.py", MODES_HARNESS)
    private = tmp / "private_labels.json"
    private.write_text('{"val-1": "secret label"}')
    public = tmp / "public.txt"
    public.write_text("public bundle")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    pid = os.getpid()
    inputs = {
        "ok": {"x": 21},
        "private": {"path": str(private)},
        "public": {},
        "parent": {"pid": pid, "repo_file": os.path.join(repo, "pyproject.toml"), "repo_dir": repo,
                   "sia_file": os.path.join(repo, "sia", "__init__.py")},
        "env": {"secret": SECRET},
        "net": {"port": listener.getsockname()[1]},
        "write": {"outside": str(tmp / "escaped.txt")},
        "print": {}, "raise": {}, "oom": {}, "numpy": {}, "bad_answer": {},
    }
    jobs = [Job(id=mode, inputs={"mode": mode, **extra}) for mode, extra in inputs.items()]
    jobs.append(Job(id="sft_missing", inputs={"mode": "ok", "x": 1}, kind="sft_pair", target="t"))
    old = os.environ.get("ANTHROPIC_API_KEY")
    os.environ["ANTHROPIC_API_KEY"] = SECRET
    try:
        with HarnessPool(FakeEngine(), workers=3, example_timeout_s=20, memory_mb=512,
                         scratch_root=str(tmp / "scratch")) as pool:
            results = pool.run(harness, jobs, resources={}, files={"public": str(public)}, progress=False)
    finally:
        if old is None:
            del os.environ["ANTHROPIC_API_KEY"]
        else:
            os.environ["ANTHROPIC_API_KEY"] = old
    try:
        listener.accept()
        accepted = True
    except BlockingIOError:
        accepted = False
    listener.close()
    return {"results": {r.id: r for r in results}, "accepted": accepted, "tmp": tmp,
            "order": [r.id for r in results], "jobs": [j.id for j in jobs]}


def test_results_come_back_in_job_order(shared):
    assert shared["order"] == shared["jobs"]
    ok = shared["results"]["ok"]
    assert ok.error is None and ok.answer == {"double": 42}
    assert ok.wall_s > 0


def test_private_file_is_unreadable_but_public_file_is(shared):
    private = shared["results"]["private"]
    assert private.answer is None
    assert private.error["kind"] == "exception"
    assert "PermissionError" in private.error["message"]
    assert "secret label" not in str(private)
    public = shared["results"]["public"]
    assert public.error is None and public.answer == "public bundle"


def test_parent_proc_signals_system_secrets_and_repo_are_off_limits(shared):
    r = shared["results"]["parent"]
    assert r.error is None, r.error
    assert r.answer["environ"].startswith("PermissionError")
    # Landlock signal scoping, or (in its own PID namespace) the parent is not even visible
    assert r.answer["signal"].startswith(("PermissionError", "ProcessLookupError"))
    if os.path.exists("/etc/shadow"):
        assert r.answer["shadow"].startswith("PermissionError")
    assert r.answer["repo_file"].startswith("PermissionError")  # only sia/ of the repo is readable
    assert r.answer["repo_listing"].startswith("PermissionError")
    assert r.answer["sia_file"] == "allowed"


def test_environment_is_scrubbed(shared):
    r = shared["results"]["env"]
    assert r.error is None
    assert "ANTHROPIC_API_KEY" not in r.answer["keys"]
    assert r.answer["leaked"] is False
    assert {"PATH", "HOME", "TMPDIR"} <= set(r.answer["keys"])


def test_network_is_unreachable(shared):
    r = shared["results"]["net"]
    assert r.error is None, r.error
    for how in ("create_connection", "socket_connect"):
        assert r.answer[how] != "allowed"
        assert "Permission denied" in r.answer[how] or "Network is unreachable" in r.answer[how]
    assert "Network is unreachable" in r.answer["udp"]
    assert "Address family not supported" in r.answer["unix"]
    assert shared["accepted"] is False   # nothing ever reached the parent's listening socket


def test_writes_only_in_scratch(shared):
    r = shared["results"]["write"]
    assert r.error is None, r.error
    assert r.answer["scratch"] == "mine"
    assert r.answer["outside"].startswith("PermissionError")
    assert not (shared["tmp"] / "escaped.txt").exists()


def test_harness_prints_do_not_break_the_protocol(shared):
    r = shared["results"]["print"]
    assert r.error is None and r.answer == "still fine"


def test_exception_memory_and_bad_answer_kinds(shared):
    raised = shared["results"]["raise"]
    assert raised.error["kind"] == "exception"
    assert "ValueError: boom 42" in raised.error["message"]
    oom = shared["results"]["oom"]
    assert oom.error["kind"] == "memory", oom.error
    bad = shared["results"]["bad_answer"]
    assert bad.error["kind"] == "bad_answer" and bad.answer is None


def test_numpy_answers_round_trip(shared):
    r = shared["results"]["numpy"]
    assert r.error is None, r.error
    arr = r.answer["arr"]
    assert isinstance(arr, np.ndarray) and arr.dtype == np.float32
    np.testing.assert_array_equal(arr, np.arange(6, dtype=np.float32).reshape(2, 3))
    assert r.answer["scalar"] == 7


def test_sft_pair_without_the_function_fails_that_job(shared):
    r = shared["results"]["sft_missing"]
    assert r.error["kind"] == "exception" and "sft_pair" in r.error["message"]


def test_timeout_and_crashes_do_not_affect_the_next_example(tmp_path):
    harness = write(tmp_path, "h.py", MODES_HARNESS)
    modes = ["loop", "ok", "exit", "ok", "segv", "ok", "forge", "ok"]
    jobs = [Job(id=f"{i}-{m}", inputs={"mode": m, "x": i}) for i, m in enumerate(modes)]
    with HarnessPool(FakeEngine(), workers=1, example_timeout_s=1.0, scratch_root=str(tmp_path / "s")) as pool:
        results = pool.run(harness, jobs, {}, {}, progress=False)
    kinds = [r.error["kind"] if r.error else None for r in results]
    assert kinds == ["timeout", None, "crash", None, "crash", None, "crash", None]
    assert [r.answer for r in results[1::2]] == [{"double": 2}, {"double": 6}, {"double": 10}, {"double": 14}]
    assert 1.0 <= results[0].wall_s < 10
    # The parent keeps the model calls of a job whose worker it had to kill.
    assert [e["completion"] for e in results[0].events] == ["pool eht erofeb"]
    assert results[0].prompt_tokens == len("before the loop")
    assert "SIGSEGV" in results[4].error["message"]
    assert "protocol violation" in results[6].error["message"]
    assert not os.listdir(tmp_path / "s")   # scratch dirs removed


def test_import_failures(tmp_path):
    broken = write(tmp_path, "broken.py", "def solve(inputs, ctx)\n    return 1\n")
    no_solve = write(tmp_path, "nosolve.py", "def answer(inputs, ctx):\n    return 1\n")
    jobs = [Job(id="a", inputs={}), Job(id="b", inputs={})]
    with HarnessPool(FakeEngine(), workers=2, scratch_root=str(tmp_path / "s")) as pool:
        assert "SyntaxError" in pool.check(broken, {}, {})
        assert "solve" in pool.check(no_solve, {}, {})
        for path, needle in ((broken, "SyntaxError"), (no_solve, "solve")):
            results = pool.run(path, jobs, {}, {}, progress=False)
            assert [r.id for r in results] == ["a", "b"]
            assert all(r.error["kind"] == "import" and needle in r.error["message"] for r in results)
        assert pool.check(write(tmp_path, "good.py", "def solve(inputs, ctx):\n    return 1\n"), {}, {}) is None


LLM_HARNESS = """
    def solve(inputs, ctx):
        c = ctx.llm.chat([{"role": "system", "content": "be terse"},
                          {"role": "user", "content": inputs["q"]}])
        ctx.log("parsed", value=c.text.upper())
        return {"text": c.text, "label": ctx.resources["labels"][0]}
"""


def test_llm_calls_are_batched_and_logged(tmp_path):
    harness = write(tmp_path, "h.py", LLM_HARNESS)
    engine = FakeEngine(max_batch_size=8)
    jobs = [Job(id=str(i), inputs={"q": f"question {i}"}) for i in range(16)]
    with HarnessPool(engine, workers=4, scratch_root=str(tmp_path / "s")) as pool:
        results = pool.run(harness, jobs, {"labels": ["yes", "no"]}, {}, progress=False)
    assert sum(engine.batches) == 16
    assert max(engine.batches) > 1, engine.batches
    for i, r in enumerate(results):
        q = f"question {i}"
        assert r.error is None, r.error
        assert r.answer == {"text": q[::-1], "label": "yes"}
        call, step = r.events
        assert call["type"] == "llm_call" and call["completion"] == q[::-1]
        assert call["messages"][-1] == {"role": "user", "content": q}
        assert call["prompt_tokens"] == len(q) and call["completion_tokens"] == len(q)
        assert call["logprobs"] == [-0.5] * len(q) and call["finish_reason"] == "stop"
        assert step == {"type": "parsed", "value": q[::-1].upper()}
        assert (r.prompt_tokens, r.completion_tokens) == (len(q), len(q))
        assert 0 <= r.llm_s <= r.wall_s


BUDGET_HARNESS = """
    def solve(inputs, ctx):
        msgs = [{"role": "user", "content": "hi"}]
        if inputs["mode"] == "sample":
            return [c.text for c in ctx.llm.sample(msgs, n=2, seed=1)]
        for _ in range(3):
            try:
                ctx.llm.chat(msgs)
            except Exception as e:
                if inputs["mode"] == "swallow":
                    return "gave up quietly"
                raise
        return "three calls"

    def sft_pair(inputs, target, ctx):
        return {"messages": [{"role": "user", "content": inputs["q"]}], "completion": f"Answer: {target}"}
"""


def test_llm_budget_is_enforced_and_sft_pair_works(tmp_path):
    harness = write(tmp_path, "h.py", BUDGET_HARNESS)
    jobs = [Job(id="over", inputs={"mode": "chat"}), Job(id="swallow", inputs={"mode": "swallow"}),
            Job(id="sample", inputs={"mode": "sample"}),
            Job(id="sft", inputs={"q": "2+2?"}, kind="sft_pair", target="4")]
    with HarnessPool(FakeEngine(), workers=2, max_llm_calls=2, scratch_root=str(tmp_path / "s")) as pool:
        over, swallow, sample, sft = pool.run(harness, jobs, {}, {}, progress=False)
    assert over.error["kind"] == "llm_budget"
    assert swallow.error["kind"] == "llm_budget"   # catching the error does not reset the budget
    assert len([e for e in over.events if e["type"] == "llm_call"]) == 2
    assert sample.error is None and sample.answer == ["ih", "ih"]
    assert sft.error is None
    assert sft.answer == {"messages": [{"role": "user", "content": "2+2?"}], "completion": "Answer: 4"}


def test_probe_reports_layers_without_confining_the_caller():
    assert LAYERS["landlock"] and LAYERS["netns"] and LAYERS["rlimits"]
    assert LAYERS["landlock_abi"] >= 1
    assert os.listdir("/")   # this process is not sandboxed


def test_scrubbed_env_keeps_only_the_allowlist(monkeypatch, tmp_path):
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    monkeypatch.setenv("WANDB_API_KEY", "w")
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    env = scrubbed_env(str(tmp_path))
    assert "ANTHROPIC_API_KEY" not in env and "WANDB_API_KEY" not in env
    assert env["HOME"] == env["TMPDIR"] == str(tmp_path)
    assert env["OPENBLAS_CORETYPE"] == "Haswell" and env["OMP_NUM_THREADS"] == "1"


def test_protocol_guards():
    reader = protocol.FrameReader(max_bytes=100)
    with pytest.raises(protocol.ProtocolError):
        reader.feed(protocol.frame(b"x" * 101, max_bytes=1000))
    with pytest.raises(TypeError):
        protocol.encode({"a": np.array([object()], dtype=object)})
    # A forged .npy header claiming more elements than it carries is refused before loading.
    raw = io.BytesIO()
    np.save(raw, np.zeros(2))
    blob = raw.getvalue().replace(b"(2,)", b"(9,)")
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(json.dumps({"__ndarray__": base64.b64encode(blob).decode()}).encode())
    assert protocol.decode(protocol.encode(np.zeros(2))).tolist() == [0.0, 0.0]


def test_deny_paths_carve_a_file_out_of_an_allowed_dir(tmp_path):
    """A private file inside an allowed folder (like a data set shipped in site-packages)
    stays unreadable while its siblings remain readable."""
    allowed = tmp_path / "pkg"
    (allowed / "data").mkdir(parents=True)
    (allowed / "data" / "labels.h5ad").write_text("held-out")
    (allowed / "data" / "other.txt").write_text("public")
    (allowed / "mod.py").write_text("X = 1")
    harness = tmp_path / "h.py"
    harness.write_text(
        "def solve(inputs, ctx):\n"
        "    out = {}\n"
        "    for name in ('data/other.txt', 'mod.py', 'data/labels.h5ad'):\n"
        "        try:\n"
        "            out[name] = open(inputs['root'] + '/' + name).read()\n"
        "        except OSError as e:\n"
        "            out[name] = type(e).__name__\n"
        "    return out\n")
    with HarnessPool(FakeEngine(), workers=1, example_timeout_s=20,
                     deny_paths=[str(allowed / "data" / "labels.h5ad")]) as pool:
        pool_files = {"pkg": str(allowed)}
        [result] = pool.run(str(harness), [Job(id="a", inputs={"root": str(allowed)})], {}, pool_files,
                            progress=False)
    assert result.error is None, result.error
    assert result.answer == {"data/other.txt": "public", "mod.py": "X = 1", "data/labels.h5ad": "PermissionError"}


def test_every_layer_is_present_under_ci():
    check_present(LAYERS)


# ---- issue 20: file metadata outside the sandbox, disk fill ----------------------------------

METADATA_HARNESS = TRY_OS_CALL + textwrap.dedent("""
    def solve(inputs, ctx):
        path = inputs["path"]
        return {"chmod": _try(lambda: os.chmod(path, 0o666)),
                "utime": _try(lambda: os.utime(path, (0, 0))),
                "utime_ns": _try(lambda: os.utime(path, ns=(1, 1), follow_symlinks=False)),
                "chown": _try(lambda: os.chown(path, -1, 0)),
                "lchown": _try(lambda: os.lchown(path, -1, 0)),
                "setxattr": _try(lambda: os.setxattr(path, "user.sia", b"x")),
                "removexattr": _try(lambda: os.removexattr(path, "user.kept")),
                "scratch_chmod": _try(lambda: (open("own", "w").close(), os.chmod("own", 0o600)))}
""")


def test_a_harness_cannot_change_metadata_of_files_outside_its_sandbox(tmp_path):
    path = canary(tmp_path)
    before = metadata_of(path)
    harness = write(tmp_path, "h.py", METADATA_HARNESS)
    with HarnessPool(FakeEngine(), workers=1, example_timeout_s=20, scratch_root=str(tmp_path / "s")) as pool:
        [r] = pool.run(harness, [Job(id="m", inputs={"path": str(path)})], {}, {}, progress=False)
    assert r.error is None, r.error
    assert set(r.answer.values()) == {"EPERM"}, r.answer   # in its own scratch too: no call at all
    assert metadata_of(path) == before


DISK_HARNESS = """
    import os

    def solve(inputs, ctx):
        if inputs["mode"] == "ok":
            return "still running"
        written, error = 0, None
        try:
            for i in range(8):   # eight files, each under the per-file limit
                with open(f"fill{i}", "wb") as f:
                    for _ in range(inputs["mb"]):
                        f.write(b"x" * (1 << 20))
                        written += 1 << 20
        except OSError as e:
            error = e.strerror
        ctx.llm.chat([{"role": "user", "content": "how full is the disk?"}])   # the parent looks now
        return {"written": written, "error": error}
"""


def test_a_harness_filling_its_scratch_stops_at_the_limit_and_the_run_goes_on(tmp_path):
    scratch_root = tmp_path / "s"
    on_disk = []

    class DiskWatcher(FakeEngine):
        def generate(self, requests, adapter=None):
            on_disk.append(sum(f.stat().st_size for f in scratch_root.rglob("*") if f.is_file()))
            return super().generate(requests, adapter)

    harness = write(tmp_path, "h.py", DISK_HARNESS)
    jobs = [Job(id="fill", inputs={"mode": "fill", "mb": 8}), Job(id="next", inputs={"mode": "ok"})]
    with HarnessPool(DiskWatcher(), workers=1, example_timeout_s=30, scratch_mb=16,
                     scratch_root=str(scratch_root)) as pool:
        fill, after = pool.run(harness, jobs, {}, {}, progress=False)
    assert fill.error is None, fill.error
    assert fill.answer["error"] == "No space left on device"
    assert 8 << 20 <= fill.answer["written"] <= 16 << 20   # 64 MB asked, 16 MB allowed in all
    assert on_disk == [0]                                    # none of it ever reached the disk
    assert after.error is None and after.answer == "still running"
    assert not os.listdir(scratch_root)


SLEEP_OR_SPIN = '''
import time

def solve(inputs, ctx):
    end = time.monotonic() + inputs["seconds"]
    if inputs["mode"] == "sleep":
        time.sleep(inputs["seconds"])
    while inputs["mode"] == "spin" and time.monotonic() < end:
        pass
    return inputs["mode"]
'''


def test_the_example_timeout_counts_cpu_time_not_wall_time(tmp_path):
    """A job that waits 2 s without computing passes a 1-s limit (a loaded machine stretches wall
    time, not CPU time); one that would compute for 20 s is stopped after 1 s of CPU; one that
    would sleep 20 s is stopped by the 3x wall backstop."""
    harness = write(tmp_path, "h.py", SLEEP_OR_SPIN)
    jobs = [Job(id="sleeps", inputs={"mode": "sleep", "seconds": 2.0}),
            Job(id="spins", inputs={"mode": "spin", "seconds": 20.0}),
            Job(id="sleeps-too-long", inputs={"mode": "sleep", "seconds": 20.0})]
    with HarnessPool(FakeEngine(), workers=1, example_timeout_s=1.0, scratch_root=str(tmp_path / "s")) as pool:
        slept, spun, slept_long = pool.run(harness, jobs, {}, {}, progress=False)
    assert slept.error is None and slept.answer == "sleep" and slept.wall_s >= 2.0
    assert spun.error["kind"] == "timeout" and "of CPU time" in spun.error["message"]
    assert 1.0 <= spun.wall_s < 20.0
    assert slept_long.error["kind"] == "timeout" and "3 s of wall time" in slept_long.error["message"]
    assert 3.0 <= slept_long.wall_s < 20.0
