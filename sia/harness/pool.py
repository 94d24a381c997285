"""The harness worker pool: runs jobs in sandboxed workers and batches their model calls.

``HarnessPool`` is the public face; ``sia.harness.session`` runs one call's event loop,
``sia.harness.workerproc`` holds one worker's process and pipes, ``sia.harness.batcher``
batches model calls, ``sia.harness.supervisor`` starts, contains and kills the children.

Everything a worker sends is untrusted data: decoded by ``sia.harness.protocol`` (never
pickle, object count bounded before decoding), validated, and size-bounded per answer and
per run (``sia.harness.limits``), so a split of huge answers fails its examples instead of
exhausting the loop's memory.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Callable

from tqdm import tqdm

from sia.harness import limits
from sia.harness.batcher import check_sampling
from sia.harness.contract import Job, JobResult
from sia.harness.sandbox import SCRATCH_MB
from sia.harness.session import Session


class HarnessPool:
    """Sandboxed harness workers whose model calls are batched on one engine.

    Use as a context manager; ``close()`` kills every worker and removes the scratch dirs.
    Workers live for one ``run()`` call (reused across its jobs), so no harness state leaks
    from one call to the next. ``max_answer_*`` bound one example's decoded result,
    ``max_event_bytes`` its trajectory, ``max_split_*`` everything one ``run()`` keeps,
    trajectories included (see ``sia.harness.limits``). ``scratch_mb``: size of each
    worker's scratch tmpfs (writes past it fail with ENOSPC in the worker).
    """

    def __init__(self, engine, *, workers: int = 8, example_timeout_s: float = 60, memory_mb: int = 2048,
                 max_llm_calls: int = 8, max_new_tokens: int = 48, strict: bool = True,
                 scratch_root: str | None = None, deny_paths: list[str] | None = None,
                 max_answer_objects: int = limits.ANSWER_OBJECTS, max_answer_bytes: int = limits.ANSWER_BYTES,
                 max_split_objects: int = limits.SPLIT_OBJECTS, max_split_bytes: int = limits.SPLIT_BYTES,
                 max_event_bytes: int = limits.EVENT_BYTES, scratch_mb: int = SCRATCH_MB):
        self.engine = engine
        self.workers = max(1, int(workers))
        self.example_timeout_s = float(example_timeout_s)
        self.memory_mb = int(memory_mb)
        self.max_llm_calls = int(max_llm_calls)
        self.max_new_tokens = int(max_new_tokens)
        self.strict = bool(strict)
        self.scratch_root = scratch_root
        self.deny_paths = [os.path.abspath(p) for p in deny_paths or []]   # never readable by a harness
        self.max_answer_objects = int(max_answer_objects)
        self.limits = limits.ResultLimits(self.max_answer_objects, int(max_answer_bytes),
                                          int(max_split_objects), int(max_split_bytes), int(max_event_bytes))
        self.scratch_mb = int(scratch_mb)   # each worker's scratch is a tmpfs this big (disk fill)
        self.layers: dict | None = None   # sandbox layers the last worker reported
        self._scratch: str | None = None
        self._session: Session | None = None

    def __enter__(self) -> "HarnessPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def scratch_dir(self) -> str:
        if self._scratch is None:
            if self.scratch_root:
                os.makedirs(self.scratch_root, exist_ok=True)
            self._scratch = tempfile.mkdtemp(prefix="sia-pool-", dir=self.scratch_root)   # mode 0700
        return self._scratch

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def _config(self, harness_path: str, resources: dict, files: dict[str, str]) -> dict:
        return {"type": "config", "harness_path": os.path.abspath(harness_path), "resources": resources,
                "files": {str(k): os.path.abspath(v) for k, v in files.items()},
                "spec": {"memory_mb": self.memory_mb, "strict": self.strict, "deny_paths": self.deny_paths,
                           "scratch_mb": self.scratch_mb},
                "max_llm_calls": self.max_llm_calls, "max_new_tokens": self.max_new_tokens,
                "max_event_bytes": self.limits.event_bytes}

    def _open(self, harness_path, resources, files, adapter, sampling=None) -> Session:
        self.close()
        self._session = Session(self, self._config(harness_path, resources or {}, files or {}), adapter, sampling)
        return self._session

    def check(self, harness_path: str, resources: dict, files: dict[str, str]) -> str | None:
        """None when the harness imports in a sandboxed worker and defines solve, else the error."""
        try:
            error = self._open(harness_path, resources, files, None).check()
            self.layers = self._session.layers
            return error
        finally:
            self.close()

    def run(self, harness_path: str, jobs: list[Job], resources: dict, files: dict[str, str],
            adapter: str | None = None, progress: bool = True, desc: str = "",
            sampling: dict | None = None, on_progress: Callable[[int, int], None] | None = None) -> list[JobResult]:
        """Results in job order. Harness failures are per-job errors; only a sandbox that cannot
        be applied (strict mode), an engine failure or a bad ``sampling`` raises.

        ``sampling={"temperature": t, "seed": s}`` (rollouts): every model call of this run uses
        temperature t and its own seed derived from s, the job id and the call's index,
        whatever the harness asked for; each llm event records the temperature and seed used.

        ``on_progress(done, total)`` is called as jobs finish; what it raises stops the run (the
        workers are killed) and reaches the caller."""
        check_sampling(sampling)
        if not jobs:
            return []
        session = self._open(harness_path, resources, files, adapter, sampling)
        try:
            with tqdm(total=len(jobs), disable=not progress, desc=desc or "harness", leave=False) as bar:
                results = session.run(jobs, bar, on_progress)
            self.layers = session.layers
            return results
        finally:
            self.close()
