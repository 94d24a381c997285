"""The evaluator's child process: runs ONE untrusted submission, under the sandbox.

Started by ``child.py`` as ``python -m cuda_kernel.runner`` with the tasks folder on
PYTHONPATH. It imports its own few modules first, then confines itself
(``sia.harness.sandbox``: no network, reads limited to the Python install, the sia package,
its scratch folder and system dirs, so neither ``tasks/`` nor the parent's files), and only
then imports the submission. It holds no reference implementation and never sees an
expected output: it computes what the parent asks and the parent judges.

Protocol (length-prefixed JSON, ``sia.harness.protocol``), one reply per command:

    (start)                                   -> ready {sandbox}
    load {case, seed}                         -> loaded        inputs drawn on the device
    run {norm_in_weight, norm_in_bias, u, v}  -> done {digest, child_ms}   (the timed call)
    fetch {start, stop} | {positions}         -> rows {values [k, c] float32}
    exit
Any failure replies ``error {kind, message}``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
import traceback

import numpy as np
import torch

from sia.harness import protocol
from sia.harness.sandbox import SandboxSpec, SandboxUnavailable, apply_sandbox, forbid_process_groups

from .cases import Case
from .checksum import digest
from .inputs import generate_bulk

SUBMISSION_MODULE = "submission"
L2_FLUSH_BYTES = 256 * 1024 * 1024   # larger than any current GPU's L2 cache
MAX_MESSAGE_CHARS = 600


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 3] + "..."


def describe_exception(exc: BaseException, source_path: str) -> str:
    """``Type: message (submission line N)``: where in the submission it went wrong."""
    if isinstance(exc, SyntaxError) and exc.filename == source_path:
        return _short(f"SyntaxError at line {exc.lineno}: {exc.msg}")
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == source_path:
            line = frame.lineno
    where = f" (submission line {line})" if line else ""
    return _short(f"{type(exc).__name__}: {exc}{where}")


def classify(exc: BaseException, during_import: bool) -> str:
    text = f"{type(exc).__name__} {exc}"
    if isinstance(exc, MemoryError) or "out of memory" in text.lower() or "can't allocate memory" in text:
        return "memory"
    if during_import or "CompilationError" in type(exc).__name__ or "Error building extension" in text:
        return "compile"
    return "runtime"


class Runner:
    def __init__(self, module, device: torch.device, source_path: str):
        self.kernel = getattr(module, "custom_kernel")
        self.device = device
        self.source_path = source_path
        self.case: Case | None = None
        self.inputs = None
        self.out: torch.Tensor | None = None
        cuda = device.type == "cuda"
        self.flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device=device) if cuda else None

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def load(self, msg: dict) -> dict:
        self.case = Case(**msg["case"])
        self.inputs = self.out = None
        x, mask, weights = generate_bulk(self.case, int(msg["seed"]), self.device)
        self.inputs = (x, mask, weights)
        if self.flush is not None:
            self.flush.zero_()   # evict the freshly written inputs from L2
        self.sync()
        return {"type": "loaded"}

    def run(self, msg: dict) -> dict:
        if self.inputs is None:
            return {"type": "error", "kind": "protocol", "message": "run before load"}
        x, mask, weights = self.inputs
        dev = self.device
        weights = dict(weights)
        for name in ("norm_in_weight", "norm_in_bias"):
            weights[name] = torch.from_numpy(msg[name]).to(dev)
        u = torch.from_numpy(msg["u"]).to(dev, torch.float64)
        v = torch.from_numpy(msg["v"]).to(dev, torch.float64)
        if dev.type == "cuda":   # CUDA events: what leaderboards report (the parent's clock rules)
            events = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            events[0].record()
            out = self.kernel((x, mask, weights))
            events[1].record()
            self.sync()
            child_ms = events[0].elapsed_time(events[1])
        else:
            start = time.perf_counter()
            out = self.kernel((x, mask, weights))
            child_ms = (time.perf_counter() - start) * 1e3
        problem = self._output_problem(out)
        if problem:
            return {"type": "error", "kind": "wrong", "message": problem}
        self.out = out
        return {"type": "done", "digest": digest(out, u, v), "child_ms": child_ms}

    def _output_problem(self, out) -> str:
        case = self.case
        expected = (case.b, case.n, case.n, case.c)
        if not isinstance(out, torch.Tensor):
            return f"custom_kernel returned {type(out).__name__}, expected a torch.Tensor"
        if tuple(out.shape) != expected:
            return f"custom_kernel returned shape {list(out.shape)}, expected {list(expected)}"
        if out.dtype != torch.float32:
            return f"custom_kernel returned dtype {out.dtype}, expected torch.float32"
        if out.device.type != self.device.type:
            return f"custom_kernel returned a tensor on {out.device}, expected {self.device.type}"
        return ""

    def fetch(self, msg: dict) -> dict:
        if self.out is None:
            return {"type": "error", "kind": "protocol", "message": "fetch before a successful run"}
        rows = self.out.reshape(-1, self.case.c)
        if "positions" in msg:
            index = torch.from_numpy(msg["positions"].astype(np.int64)).to(rows.device)
            values = rows.index_select(0, index)
        else:
            values = rows[int(msg["start"]): int(msg["stop"])]
        return {"type": "rows", "values": values.detach().float().cpu().numpy()}


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cuda_kernel.runner")
    parser.add_argument("--in-fd", type=int, required=True)
    parser.add_argument("--out-fd", type=int, required=True)
    parser.add_argument("--submission", required=True)
    parser.add_argument("--device", choices=("cpu", "cuda"), required=True)
    parser.add_argument("--spec", required=True, help="SandboxSpec fields as JSON")
    parser.add_argument("--hide", action="append", default=[], help="sys.path entries to drop")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    out_fd, in_fd = args.out_fd, args.in_fd

    def reply(msg: dict) -> None:
        protocol.send(out_fd, msg)

    try:
        layers = apply_sandbox(SandboxSpec(**json.loads(args.spec)))
    except SandboxUnavailable as e:
        reply({"type": "error", "kind": "sandbox", "message": _short(str(e))})
        return 3
    # The tasks folder was on the path only for this runner; it is unreadable now anyway.
    sys.path[:] = [p for p in sys.path if p not in args.hide]
    device = torch.device("cuda:0" if args.device == "cuda" else "cpu")   # CUDA_VISIBLE_DEVICES picks the GPU
    try:
        if device.type == "cuda":
            torch.cuda.init()   # after the sandbox: CUDA starts threads, Landlock needs one
            torch.empty(1, device=device)
    except Exception as e:  # noqa: BLE001 - reported, not raised
        reply({"type": "error", "kind": "setup", "message": _short(f"CUDA unavailable in the child: {e}")})
        return 3

    source_path = os.path.abspath(args.submission)
    try:
        spec = importlib.util.spec_from_file_location(SUBMISSION_MODULE, source_path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[SUBMISSION_MODULE] = module   # Triton reads the source of @jit functions
        spec.loader.exec_module(module)
    except BaseException as e:  # noqa: BLE001 - SystemExit and friends are the submission's too
        kind = classify(e, during_import=True)
        reply({"type": "error", "kind": kind, "message": describe_exception(e, source_path)})
        return 4
    if not callable(getattr(module, "custom_kernel", None)):
        reply({"type": "error", "kind": "contract",
               "message": "the submission defines no callable custom_kernel(data)"})
        return 4
    try:
        forbid_process_groups()   # the compile step (import) is over
    except OSError as e:
        if json.loads(args.spec).get("strict", True):
            reply({"type": "error", "kind": "sandbox", "message": _short(f"cannot forbid setpgid: {e}")})
            return 3
    runner = Runner(module, device, source_path)
    reply({"type": "ready", "sandbox": layers})

    handlers = {"load": runner.load, "run": runner.run, "fetch": runner.fetch}
    while True:
        try:
            msg = protocol.recv(in_fd)
        except EOFError:
            return 0
        op = msg.get("op") if isinstance(msg, dict) else None
        if op == "exit":
            return 0
        handler = handlers.get(op)
        if handler is None:
            reply({"type": "error", "kind": "protocol", "message": f"unknown command {op!r}"})
            continue
        try:
            result = handler(msg)
        except BaseException as e:  # noqa: BLE001
            result = {"type": "error", "kind": classify(e, during_import=False),
                      "message": describe_exception(e, source_path)}
        reply(result)


if __name__ == "__main__":
    sys.exit(main())
