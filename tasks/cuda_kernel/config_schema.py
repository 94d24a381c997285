"""The ``task`` config of cuda_kernel, typed. Its values live in conf/task/cuda_kernel.yaml
(the shape lists read best there, with their comments); ranges and cross-field rules are
checked by ``settings.problems``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING


@dataclass
class Examples:
    train: int = MISSING
    val: int = MISSING
    test: int = MISSING


@dataclass
class Tolerance:
    rtol: float = MISSING
    atol: float = MISSING


@dataclass
class SplitTiming:
    correctness_seeds: int = MISSING
    warmup: int = MISSING
    repeats: int = MISSING


@dataclass
class Timing:
    val: SplitTiming = field(default_factory=SplitTiming)
    test: SplitTiming = field(default_factory=SplitTiming)


@dataclass
class Timeouts:
    start_s: float = MISSING
    call_s: float = MISSING
    total_s: float = MISSING


@dataclass
class DeviceTimeouts:
    cpu: Timeouts = field(default_factory=Timeouts)
    cuda: Timeouts = field(default_factory=Timeouts)


@dataclass
class DeviceMemory:
    cpu: int = MISSING
    cuda: int = MISSING


@dataclass
class Sandbox:
    strict: bool = MISSING
    memory_mb: DeviceMemory = field(default_factory=DeviceMemory)
    read_paths: list[str] = field(default_factory=list)
    exec_paths: list[str] = field(default_factory=list)


@dataclass
class Config:
    name: str = "cuda_kernel"
    device: str = MISSING                 # auto | cpu | cuda
    primary_metric: str = MISSING         # speedup | score
    examples: Examples = field(default_factory=Examples)
    tolerance: Tolerance = field(default_factory=Tolerance)
    shapes: Any = MISSING                 # {cpu, cuda} x {correctness, benchmark}: lists of cases
    timing: Timing = field(default_factory=Timing)
    timeouts: DeviceTimeouts = field(default_factory=DeviceTimeouts)
    sandbox: Sandbox = field(default_factory=Sandbox)
    scratch_dir: Optional[str] = None
