"""The parent side of the SQL evaluator: ``execution.py`` run as a supervised child process.

The child reads the batch on stdin and writes one JSON line per event: ``{"phase": "gold"}``
or ``{"phase": "pred"}`` when it starts a query, then the item's verdict. Each query gets its
limit plus a little slack on the parent's clock, from the moment the child said it started:
SQLite's progress handler never fires inside one long function call, so a query that runs
past its limit gets the whole process killed (``sia.harness.supervisor``) and is recorded as
timed out; a new child continues after it.
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

from sia.harness.supervisor import Child

from .execution import Verdict, gold_timeout

SCRIPT = Path(__file__).resolve().with_name("execution.py")
START_S = 30.0    # interpreter start-up, on a loaded machine
SLACK_S = 0.5     # past a query's limit before the process is killed (the handler had its chance)
STEP_S = 10.0     # between one item's verdict and the next item's first query
STDERR_BYTES = 4096


def evaluate_in_child(items: list[dict], timeout_s: float, max_rows: int, memory_mb: int = 1024,
                      python: str | None = None) -> list[Verdict]:
    """``evaluate_batch`` in a fresh Python process (``execution.py`` run as a script). The child
    says which query it starts; one running past its limit (inside a single SQLite function
    call the progress handler cannot stop) gets the process killed and is recorded as timed
    out. If the child dies on an item, that item gets the reason. Either way a new child
    continues after it."""
    verdicts: list[Verdict] = []
    while len(verdicts) < len(items):
        rest = items[len(verdicts):]
        verdicts += _one_child(rest, timeout_s, max_rows, memory_mb, python)
    return verdicts


def _one_child(rest: list[dict], timeout_s: float, max_rows: int, memory_mb: int, python: str | None) -> list[Verdict]:
    """Verdicts from one child: all of ``rest``, or those before the item it failed on plus
    that item's verdict."""
    request = json.dumps({"items": rest, "timeout_s": timeout_s, "max_rows": max_rows, "memory_mb": memory_mb})
    cwd = str(SCRIPT.parent)
    child = Child([python or sys.executable, "-I", str(SCRIPT)], cwd=cwd,
                  env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"},
                  stdin=subprocess.PIPE, strict=False)
    got: list[Verdict] = []
    try:
        try:
            child.proc.stdin.write(request.encode("utf-8"))
            child.proc.stdin.close()
        except BrokenPipeError:
            pass
        phase, deadline = "start", time.monotonic() + START_S
        for line, err in _lines(child, lambda: deadline):
            if line is None:   # EOF or deadline
                if time.monotonic() < deadline:
                    tail = (err.decode("utf-8", "replace").strip() or f"it {child.exit_reason()}").splitlines()[-1:]
                    got.append(Verdict(0.0, "crashed", f"the query crashed the evaluator process: {tail[0][:200]}"))
                elif phase == "pred":
                    got.append(Verdict(0.0, "timeout", f"query timed out after {timeout_s:g}s"))
                elif phase == "gold":
                    got.append(Verdict(0.0, "gold_failed", "gold query timed out; this example cannot be scored"))
                else:
                    got.append(Verdict(0.0, "crashed", "the evaluator process stopped responding"))
                break
            msg = json.loads(line)
            if "phase" in msg:
                phase = msg["phase"]
                limit = timeout_s if phase == "pred" else gold_timeout(timeout_s)
                deadline = time.monotonic() + limit + SLACK_S
            else:
                got.append(Verdict(**msg))
                phase, deadline = "between", time.monotonic() + STEP_S
                if len(got) == len(rest):
                    break
    finally:
        child.close()
        for f in (child.proc.stdout, child.proc.stderr):
            f.close()
    return got[: len(rest)]


def _lines(child, deadline):
    """Yield (line, stderr so far) for each line the child writes; (None, stderr) at EOF or
    when ``deadline()`` passes."""
    out, err = child.proc.stdout.fileno(), child.proc.stderr.fileno()
    buf, errbuf, open_fds = b"", b"", {out, err}
    while out in open_fds:
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.strip():
                yield line.decode("utf-8"), errbuf
        remaining = deadline() - time.monotonic()
        if remaining <= 0:
            break
        ready, _, _ = select.select(list(open_fds), [], [], remaining)
        for fd in ready:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                open_fds.discard(fd)
            elif fd == out:
                buf += chunk
            else:
                errbuf = (errbuf + chunk)[-STDERR_BYTES:]
    if out not in open_fds and err in open_fds:   # EOF on stdout: collect its last words
        child.wait(2)
        try:
            os.set_blocking(err, False)
            errbuf = (errbuf + os.read(err, STDERR_BYTES))[-STDERR_BYTES:]
        except OSError:
            pass
    yield None, errbuf
