"""Trusted judgement of one submission: correctness first, then timing, in one sandboxed child.

Every call uses inputs drawn from fresh one-time seeds (``secrets``), so nothing a
submission saw before (its own earlier calls, published seeds, a val run) predicts them.
After each ``run`` (whose reply commits to the whole output: ``checksum.py``) the parent
fetches the whole output, compares every element with its own reference, and checks that
the commitment matches what was fetched, so nothing was completed or changed after the
clock stopped. A call's time counts only once that check passed; the runner's code lives in
the submission's process and may be patched, which is why its replies are verified here.

The reason of a failing submission is one sentence that names the case, never a seed or a
reference value.
"""
from __future__ import annotations

import ast
import math
import secrets
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Callable

import numpy as np
import torch

from .cases import Case
from .checksum import matches
from .child import ChildFailure, ChildProcess
from .inputs import generate_bulk, generate_run_time_weights, position_weights
from .reference import trimul_reference
from .settings import Settings, SplitPlan

REFERENCE_SOURCE = Path(__file__).with_name("reference.py").read_text(encoding="utf-8")
FETCH_BYTES = 8 << 20          # one fetched chunk of output rows

PREFIX = {
    "no_submission": "no submission",
    "compile": "compile error",
    "contract": "contract violation",
    "wrong": "wrong result",
    "timeout": "timeout",
    "crash": "crash",
    "memory": "out of memory",
    "runtime": "runtime error",
    "protocol": "protocol violation",
    "sandbox": "sandbox unavailable",
    "setup": "evaluator setup failed",
    "evaluator": "evaluator error",
}


@dataclass
class Verdict:
    ok: bool
    kind: str                   # "ok" or a key of PREFIX
    reason: str                 # one sentence for the Feedback-Agent; empty when ok
    device: str = "cpu"
    case_us: dict[str, float] = field(default_factory=dict)   # trusted: parent's clock, median
    child_us: dict[str, float] = field(default_factory=dict)  # reported by the child: untrusted
    eval_s: float = 0.0

    @property
    def runtime_us(self) -> float:
        """Geometric mean of the per-case medians (µs); nan when not ok."""
        if not self.ok or not self.case_us:
            return math.nan
        return geomean(self.case_us.values())


def geomean(values) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values))


def failure(kind: str, message: str, device: str, started: float) -> Verdict:
    reason = f"{PREFIX.get(kind, kind)}: {message}" if message else PREFIX.get(kind, kind)
    return Verdict(False, kind, reason, device, eval_s=time.perf_counter() - started)


def source_problem(source) -> tuple[str, str] | None:
    """(kind, message) for answers that need no child to reject, else None."""
    if not isinstance(source, str) or not source.strip():
        return "no_submission", "the harness returned no Python source"
    try:
        ast.parse(source)
    except SyntaxError as e:
        if "```" in source:
            return "compile", "the answer is not Python source (it holds a ``` fence: extract the code block)"
        return "compile", f"SyntaxError at line {e.lineno}: {e.msg}"
    if "custom_kernel" not in source:
        return "contract", "the submission defines no custom_kernel(data)"
    return None


class WrongResult(Exception):
    pass


@contextmanager
def one_cpu_thread(device: torch.device):
    """On CPU the parent's reference runs single-threaded, like the child (scrubbed env):
    two busy processes oversubscribing a small machine would slow both down unpredictably."""
    previous = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def float32_matmuls():
    """The reference is float32: no TF32 shortcuts, whatever the process set before."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


class Judge:
    def __init__(self, settings: Settings, plan: SplitPlan, *,
                 seeds: Callable[[], int] = lambda: secrets.randbits(63)):
        self.s = settings
        self.plan = plan
        self.seeds = seeds
        self.device = torch.device(settings.device)

    # -- one submission ----------------------------------------------------------------------
    def judge(self, source) -> Verdict:
        started = time.perf_counter()
        problem = source_problem(source)
        if problem:
            return failure(*problem, self.s.device, started)
        deadline = started + self.s.total_s
        try:
            with one_cpu_thread(self.device):
                return self._judge_in_child(source, deadline, started)
        except ChildFailure as e:
            return failure(e.kind, e.message, self.s.device, started)
        except WrongResult as e:
            return failure("wrong", str(e), self.s.device, started)
        except Exception as e:  # noqa: BLE001 - the evaluator's own fault: say so, keep the run going
            return failure("evaluator", f"{type(e).__name__}: {e}"[:400], self.s.device, started)

    def _judge_in_child(self, source: str, deadline: float, started: float) -> Verdict:
        child = None
        try:
            child = ChildProcess(source, self.s.device, self.s.sandbox_spec(),
                                 start_timeout_s=self.s.start_s, scratch_root=self.s.scratch_dir,
                                 extra_env=self.s.child_env())
            case_us, child_us = self._run_all(child, deadline)
        finally:
            if child is not None:
                child.close()
        return Verdict(True, "ok", "", self.s.device, case_us, child_us, time.perf_counter() - started)

    def _run_all(self, child: ChildProcess, deadline: float) -> tuple[dict, dict]:
        first = True
        for case in self.s.correctness:
            for _ in range(self.plan.correctness_seeds):
                self._call(child, case, deadline, first=first)
                first = False
        case_us, child_us = {}, {}
        for case in self.s.benchmark:
            # Every call is checked in full; the first of a shape and warm-up calls are not timed.
            self._call(child, case, deadline, first=first)
            first = False
            for _ in range(self.plan.warmup):
                self._call(child, case, deadline)
            walls, reported = [], []
            for _ in range(self.plan.repeats):
                wall_s, child_ms = self._call(child, case, deadline)
                walls.append(wall_s * 1e6)
                if isinstance(child_ms, (int, float)) and math.isfinite(child_ms):
                    reported.append(child_ms * 1e3)
            case_us[case.label] = median(walls)
            if reported:
                child_us[case.label] = median(reported)
        return case_us, child_us

    # -- one call --------------------------------------------------------------------------
    def _timeout(self, deadline: float, limit: float) -> float:
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            raise ChildFailure("timeout", f"the evaluation used up its total budget of {self.s.total_s:g} s")
        return min(limit, remaining)

    def _reference(self, case: Case, bulk_seed: int, weight_seed: int) -> torch.Tensor:
        x, mask, weights = generate_bulk(case, bulk_seed, self.device)
        for name, value in generate_run_time_weights(case, weight_seed).items():
            weights[name] = value.to(self.device)
        with torch.no_grad(), float32_matmuls():
            ref = trimul_reference(x, mask, weights)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)   # nothing of ours may run inside the child's window
        return ref

    def _call(self, child: ChildProcess, case: Case, deadline: float, *, first: bool = False) -> tuple[float, float | None]:
        bulk_seed, weight_seed, sign_seed = (self.seeds() for _ in range(3))
        ref = self._reference(case, bulk_seed, weight_seed)
        u, v = position_weights(case, sign_seed)
        limit = self.s.start_s if first else self.s.call_s   # a first call may compile (Triton JIT)
        child.request({"op": "load", "case": case.to_dict(), "seed": bulk_seed},
                      self._timeout(deadline, self.s.call_s), f"loading inputs for {case.label}")
        run_weights = generate_run_time_weights(case, weight_seed)
        command = {"op": "run", **{k: t.numpy() for k, t in run_weights.items()},
                   "u": u.numpy().astype(np.int8), "v": v.numpy().astype(np.int8)}
        reply, wall_s = child.request(command, self._timeout(deadline, limit),
                                      f"running custom_kernel on {case.label}")
        if reply.get("type") != "done":
            raise ChildFailure("protocol", f"expected 'done' after run, got {reply.get('type')!r}")
        # Every call, timed ones included, is checked in full before its time may count: the
        # whole output is compared, and the checksum the reply committed to (random signs
        # sent with the command) must be the one of what was fetched. Work deferred past the
        # reply, by the kernel or by a patched runner, changes the output after the commit.
        out = self._check_all_rows(child, case, ref, deadline)
        if not matches(reply.get("digest"), out, u, v):
            raise WrongResult(
                f"on {case.label}, the output sent back is not the one the timed call returned "
                "(its checksum differs): it was completed or changed after the call returned")
        return wall_s, reply.get("child_ms")

    # -- comparisons -----------------------------------------------------------------------
    def _fetch(self, child: ChildProcess, case: Case, command: dict, count: int, deadline: float) -> torch.Tensor:
        reply, _ = child.request(command, self._timeout(deadline, self.s.call_s), f"returning the output of {case.label}")
        values = reply.get("values")
        if not isinstance(values, np.ndarray) or values.dtype != np.float32 or values.shape != (count, case.c):
            raise WrongResult(f"on {case.label}, the output rows sent back have the wrong shape or dtype")
        return torch.from_numpy(values).to(self.device)

    def _check_all_rows(self, child: ChildProcess, case: Case, ref: torch.Tensor, deadline: float) -> torch.Tensor:
        """Fetch the whole output in chunks, compare every element; returns what was fetched."""
        rows = ref.reshape(-1, case.c)
        fetched = torch.empty_like(rows)
        step = max(1, FETCH_BYTES // (4 * case.c))
        for start in range(0, rows.shape[0], step):
            stop = min(rows.shape[0], start + step)
            got = self._fetch(child, case, {"op": "fetch", "start": start, "stop": stop}, stop - start, deadline)
            self._compare(case, got, rows[start:stop], torch.arange(start, stop))
            fetched[start:stop] = got
        return fetched.view(ref.shape)

    def _compare(self, case: Case, got: torch.Tensor, expected: torch.Tensor, positions: torch.Tensor) -> None:
        close = torch.isclose(got, expected, rtol=self.s.rtol, atol=self.s.atol)
        if bool(close.all()):
            return
        bad = int((~close).sum())
        error = (got - expected).abs().nan_to_num(nan=math.inf)
        flat = int(error.argmax())
        row, channel = divmod(flat, case.c)
        b, rest = divmod(int(positions[row]), case.n * case.n)
        i, j = divmod(rest, case.n)
        nans = int(torch.isnan(got).sum())
        raise WrongResult(
            f"on {case.label}, {bad} of {got.numel()} checked values differ from the reference "
            f"beyond rtol={self.s.rtol:g} atol={self.s.atol:g}"
            + (f" ({nans} NaN)" if nans else "")
            # The submission's own value only: the reference's stays with the evaluator.
            + f"; worst at [b={b}, i={i}, j={j}, c={channel}], where it returned {float(got.flatten()[flat]):.4g}")
