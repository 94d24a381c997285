"""The task's configuration (``conf/task/cuda_kernel.yaml``): validated, then frozen.

``problems`` names every bad key with its value and the fix; ``Settings.from_cfg`` assumes
a config without problems.
"""
from __future__ import annotations

import glob
import math
import os
from dataclasses import dataclass
from typing import Any

from sia.tasks import plain_config

from .cases import Case, case_problems, parse_case

DEVICES = ("auto", "cpu", "cuda")
PRIMARY_METRICS = ("speedup", "score")
SPLITS = ("train", "val", "test")
TIMING_SPLITS = ("val", "test")   # train is timed like val
TIMEOUT_KEYS = ("start_s", "call_s", "total_s")


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if cuda_available() else "cpu"
    return requested


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def problems(raw_cfg: Any) -> list[str]:
    cfg = plain_config(raw_cfg) or {}
    out: list[str] = []
    device = cfg.get("device", "auto")
    if device not in DEVICES:
        out.append(f"task.device={device!r}: must be one of {', '.join(DEVICES)}")
    elif device == "cuda" and not cuda_available():
        out.append("task.device='cuda': torch sees no CUDA device here; use task.device=auto or task.device=cpu")
    metric = cfg.get("primary_metric", "speedup")
    if metric not in PRIMARY_METRICS:
        out.append(f"task.primary_metric={metric!r}: must be one of {', '.join(PRIMARY_METRICS)}")
    examples = cfg.get("examples", {})
    for split in SPLITS:
        value = examples.get(split)
        if not _positive_int(value):
            out.append(f"task.examples.{split}={value!r}: must be a positive integer (attempts per split)")
    tolerance = cfg.get("tolerance", {})
    for key in ("rtol", "atol"):
        value = tolerance.get(key)
        if not _positive_number(value) or value >= 1:
            out.append(f"task.tolerance.{key}={value!r}: must be a number in (0, 1), e.g. 0.02")
    for dev in ("cpu", "cuda"):
        for kind in ("correctness", "benchmark"):
            cases = cfg.get("shapes", {}).get(dev, {}).get(kind)
            where = f"task.shapes.{dev}.{kind}"
            if not isinstance(cases, list) or not cases:
                out.append(f"{where}={cases!r}: must be a non-empty list of cases "
                           "{n, b, c, h, mask, dist}")
                continue
            for i, raw in enumerate(cases):
                out += case_problems(raw, f"{where}[{i}]")
    timing = cfg.get("timing", {})
    for split in TIMING_SPLITS:
        plan = timing.get(split, {})
        for key in ("correctness_seeds", "repeats"):
            if not _positive_int(plan.get(key)):
                out.append(f"task.timing.{split}.{key}={plan.get(key)!r}: must be a positive integer")
        warmup = plan.get("warmup")
        if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
            out.append(f"task.timing.{split}.warmup={warmup!r}: must be an integer >= 0")
    for dev in ("cpu", "cuda"):
        limits = cfg.get("timeouts", {}).get(dev, {})
        for key in TIMEOUT_KEYS:
            if not _positive_number(limits.get(key)):
                out.append(f"task.timeouts.{dev}.{key}={limits.get(key)!r}: must be a positive number of seconds")
    sandbox = cfg.get("sandbox", {})
    if not isinstance(sandbox.get("strict"), bool):
        out.append(f"task.sandbox.strict={sandbox.get('strict')!r}: must be true or false")
    for dev in ("cpu", "cuda"):
        value = sandbox.get("memory_mb", {}).get(dev)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            out.append(f"task.sandbox.memory_mb.{dev}={value!r}: must be an integer >= 0 (0 = no limit)")
    for key in ("read_paths", "exec_paths"):
        value = sandbox.get(key, [])
        if not isinstance(value, list) or not all(isinstance(p, str) and os.path.isabs(p) for p in value):
            out.append(f"task.sandbox.{key}={value!r}: must be a list of absolute paths")
    scratch = cfg.get("scratch_dir")
    if scratch is not None and not os.path.isdir(str(scratch)):
        out.append(f"task.scratch_dir={scratch!r}: no such directory; create it or use null (system temp)")
    return out


@dataclass(frozen=True)
class SplitPlan:
    correctness_seeds: int
    warmup: int
    repeats: int


@dataclass(frozen=True)
class Settings:
    device: str                      # resolved: cpu | cuda
    primary_metric: str
    examples: dict
    rtol: float
    atol: float
    correctness: tuple[Case, ...]
    benchmark: tuple[Case, ...]
    plans: dict                      # split -> SplitPlan
    start_s: float
    call_s: float
    total_s: float
    sandbox_strict: bool
    memory_mb: int
    read_paths: tuple[str, ...]
    exec_paths: tuple[str, ...]
    scratch_dir: str | None

    @classmethod
    def from_cfg(cls, raw_cfg: Any) -> "Settings":
        cfg = plain_config(raw_cfg)
        device = resolve_device(cfg.get("device", "auto"))
        shapes = cfg["shapes"][device]
        timing = cfg["timing"]
        plans = {split: SplitPlan(**{k: int(timing[split][k]) for k in ("correctness_seeds", "warmup", "repeats")})
                 for split in TIMING_SPLITS}
        plans["train"] = plans["val"]
        limits = cfg["timeouts"][device]
        sandbox = cfg["sandbox"]
        return cls(
            device=device,
            primary_metric=cfg.get("primary_metric", "speedup"),
            examples={split: int(cfg["examples"][split]) for split in SPLITS},
            rtol=float(cfg["tolerance"]["rtol"]),
            atol=float(cfg["tolerance"]["atol"]),
            correctness=tuple(parse_case(c) for c in shapes["correctness"]),
            benchmark=tuple(parse_case(c) for c in shapes["benchmark"]),
            plans=plans,
            start_s=float(limits["start_s"]),
            call_s=float(limits["call_s"]),
            total_s=float(limits["total_s"]),
            sandbox_strict=bool(sandbox["strict"]),
            memory_mb=int(sandbox["memory_mb"][device]),
            read_paths=tuple(sandbox.get("read_paths", [])),
            exec_paths=tuple(sandbox.get("exec_paths", [])),
            scratch_dir=cfg.get("scratch_dir"),
        )

    def sandbox_spec(self) -> dict:
        """SandboxSpec fields for a child (its scratch folder is added by the child handle).

        Compilers (c++, nvcc, ninja) live under /usr, which the sandbox already lets a child
        read and execute; exec_paths lets a child run the compilers (chmod stays denied: the linker ignores that).
        """
        read_paths = list(self.read_paths)
        write_paths: list[str] = []
        exec_paths = list(self.exec_paths) or ["/usr/lib/gcc"]
        cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
        if self.device == "cuda":
            # The driver opens its device nodes read-write and reads its /proc and /sys entries.
            write_paths += sorted(glob.glob("/dev/nvidia*"))
            read_paths += ["/proc/driver/nvidia", "/sys/bus/pci", "/sys/devices", cuda_home]
            exec_paths.append(cuda_home)
        return {"memory_mb": self.memory_mb, "read_paths": read_paths, "write_paths": write_paths,
                "exec_paths": exec_paths, "strict": self.sandbox_strict}

    def child_env(self) -> dict:
        # On CPU, Triton kernels run through its interpreter; on CUDA they are compiled.
        env = {"TRITON_INTERPRET": "1" if self.device == "cpu" else "0"}
        if self.device == "cuda":
            for name in ("CUDA_VISIBLE_DEVICES", "CUDA_HOME", "CUDA_PATH"):
                if name in os.environ:
                    env[name] = os.environ[name]
        return env
