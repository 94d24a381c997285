"""Regression tests for the kernel judge holes of issue 8 (items 1-3), each with the hostile
submission that got through before. Every judged submission is a real sandboxed child."""
from __future__ import annotations

import itertools
import os
import secrets
import shutil
import threading
import time
from pathlib import Path

import pytest
import yaml

from security_layers import TRY_OS_CALL, canary, metadata_of, needs
from sia.harness.sandbox import probe
from sia.tasks import load_task

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf" / "task" / "cuda_kernel.yaml"
SUBMISSIONS = Path(__file__).resolve().parent / "cuda_kernel_submissions"
load_task("cuda_kernel", {**yaml.safe_load(CONF.read_text()), "device": "cpu"})
from sia_tasks.cuda_kernel.judge import Judge  # noqa: E402
from sia_tasks.cuda_kernel.settings import Settings  # noqa: E402

pytestmark = needs(probe())
SMALL = {"n": 8, "b": 1, "c": 16, "h": 8, "mask": "none", "dist": "normal"}
BENCH = {"n": 16, "b": 1, "c": 16, "h": 8, "mask": "random", "dist": "cauchy"}


def small_cfg(repeats: int = 3) -> dict:
    cfg = yaml.safe_load(CONF.read_text())
    cfg["device"] = "cpu"
    cfg["shapes"]["cpu"] = {"correctness": [SMALL], "benchmark": [BENCH]}
    cfg["timing"]["val"] = {"correctness_seeds": 1, "warmup": 0, "repeats": repeats}
    cfg["timeouts"]["cpu"] = {"start_s": 60, "call_s": 20, "total_s": 180}
    return cfg


def judge(source: str, **kwargs):
    settings = Settings.from_cfg(small_cfg())
    return Judge(settings, settings.plans["val"], **kwargs).judge(source)


def submission(name: str) -> str:
    return (SUBMISSIONS / name).read_text()


# ---- item 1: child-writable files are never opened by name ---------------------------------

def test_log_replaced_by_a_symlink_does_not_leak_the_target_into_the_reason(tmp_path):
    secret = tmp_path / "judge-only.txt"
    secret.write_text("TOP-SECRET-JUDGE-FILE-CONTENT\n")
    verdict = judge(submission("log_symlink.py").replace("@TARGET@", str(secret)))
    assert verdict.kind == "crash", verdict.reason
    assert "TOP-SECRET" not in verdict.reason


def test_log_replaced_by_a_fifo_does_not_hang_the_judge():
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("v", judge(submission("log_fifo.py"))), daemon=True)
    thread.start()
    thread.join(90)
    assert not thread.is_alive(), "the judge hung on a FIFO in the child's folder"
    assert box["v"].kind == "crash", box["v"].reason


# ---- item 2: nothing a child starts outlives it --------------------------------------------

def _live_hop(pid: int) -> bool:
    try:
        if Path(f"/proc/{pid}/comm").read_bytes().strip() != b"siachainhop":
            return False
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def _chain_seen(seconds: float) -> bool:
    """Whether a live hop shows up within ``seconds``. A hop lives about a millisecond, so
    each round reads the newest pids first, right after listing /proc (every tenth round
    reads them all, for pids that wrapped around)."""
    end, round_ = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        pids = sorted((int(e) for e in os.listdir("/proc") if e.isdigit()), reverse=True)
        if any(_live_hop(pid) for pid in (pids if round_ % 10 == 9 else pids[:200])):
            return True
        round_ += 1
    return False


def test_a_chain_forking_into_new_process_groups_dies_with_the_child():
    verdict = judge(submission("pgid_chain.py"))
    assert verdict.kind == "wrong", verdict.reason
    # A surviving chain keeps hopping (capped at 20000 hops); a contained one is gone.
    assert not _chain_seen(2.0), "processes the submission started outlived its child"


# ---- item 3: deferred work on timed calls --------------------------------------------------

def no_full_check_draws():
    """Seeds where every draw that the old judge used as its 'full check' coin (the fifth of
    each call's five) says 'sample only': the old code let deferred calls through every time."""
    counter = itertools.count()
    return lambda: 999_999 if next(counter) % 5 == 4 else secrets.randbits(63)


def test_deferring_work_past_the_reply_fails_on_every_timed_call():
    verdict = judge(submission("defers_timed_calls.py"), seeds=no_full_check_draws())
    assert (verdict.ok, verdict.kind) == (False, "wrong"), verdict.reason
    assert verdict.reason.endswith("it was completed or changed after the call returned"), verdict.reason


# ---- issue 20: file metadata outside the sandbox, disk fill ---------------------------------

METADATA_SUBMISSION = TRY_OS_CALL + '''
PATH = "@CANARY@"

def attack():
    return [_try(lambda: os.chmod(PATH, 0o666)), _try(lambda: os.utime(PATH, (0, 0))),
            _try(lambda: os.chown(PATH, -1, 0)), _try(lambda: os.setxattr(PATH, "user.sia", b"x")),
            _try(lambda: os.removexattr(PATH, "user.kept"))]

AT_IMPORT = attack()   # the compile step: build tools run here

def custom_kernel(data):
    raise RuntimeError(f"import {AT_IMPORT} call {attack()}")
'''


def test_a_kernel_child_cannot_change_metadata_of_files_outside_its_sandbox(tmp_path):
    path = canary(tmp_path)
    before = metadata_of(path)
    verdict = judge(METADATA_SUBMISSION.replace("@CANARY@", str(path)))
    assert verdict.kind == "runtime", verdict.reason
    denied = str(["EPERM"] * 5)
    assert f"import {denied} call {denied}" in verdict.reason, verdict.reason
    assert metadata_of(path) == before


FILL_SUBMISSION = '''
written, error = 0, None
try:
    for i in range(8):   # eight files, each under the per-file limit
        with open(f"fill{i}", "wb") as f:
            for _ in range(8):
                f.write(b"x" * (1 << 20))
                written += 1 << 20
except OSError as e:
    error = e.strerror

def custom_kernel(data):
    raise RuntimeError(f"wrote {written} bytes, then: {error}")
'''


def test_a_kernel_child_filling_its_scratch_stops_at_the_limit(tmp_path, monkeypatch):
    from sia_tasks.cuda_kernel import child

    monkeypatch.setattr(child, "SCRATCH_MB", 16)
    cfg = small_cfg()
    cfg["scratch_dir"] = str(tmp_path)
    largest, stop = [0], threading.Event()

    def watch():   # the scratch folder on disk, as the judge's host sees it
        while not stop.is_set():
            sizes = [f.stat().st_size for f in tmp_path.rglob("*") if f.is_file()]
            largest[0] = max([largest[0], *sizes])
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        settings = Settings.from_cfg(cfg)
        verdict = Judge(settings, settings.plans["val"]).judge(FILL_SUBMISSION)
    finally:
        stop.set()
        watcher.join()
    assert verdict.kind == "runtime", verdict.reason
    written = int(verdict.reason.split("wrote ")[1].split(" bytes")[0])
    assert 8 << 20 <= written <= 16 << 20 and "then: No space left on device" in verdict.reason
    assert largest[0] < 1 << 20          # only the submission itself ever lay on the disk
    assert os.listdir(tmp_path) == []    # and nothing remains
    assert judge((REPO / "tasks" / "cuda_kernel" / "reference.py").read_text()).ok   # the next one runs


NVCC_SUBMISSION = r'''
import ctypes, os, subprocess
with open("k.cu", "w") as f:
    f.write('extern "C" __global__ void k(float* x) { x[threadIdx.x] *= 2.f; }\n'
            'extern "C" int host() { return 42; }\n')
r = subprocess.run(["nvcc", "-shared", "-Xcompiler", "-fPIC", "-o", "k.so", "k.cu"], capture_output=True, text=True)
result = f"rc={r.returncode} host={ctypes.CDLL(os.path.abspath('k.so')).host() if r.returncode == 0 else None}"

def custom_kernel(data):
    raise RuntimeError(result)
'''


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_nvcc_builds_and_loads_a_shared_object_with_metadata_calls_denied():
    # seccomp denies chmod to every child, compile step included: nvcc and the linker must not need it
    verdict = judge(NVCC_SUBMISSION)
    assert "rc=0 host=42" in verdict.reason, verdict.reason
