"""The ``task`` config of legal_charge: every key, its type and its one default."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class SyntheticConfig:
    seed: int = 0
    n_charges: int = 24
    n_train: int = 240
    n_val: int = 60
    n_test: int = 80
    multi_label_share: float = 0.15    # share of cases with two charges


@dataclass
class DataConfig:
    path: Optional[str] = None         # LawBench 3-3 JSON list or CAIL2018 JSON-lines; null = synthetic
    format: str = "auto"               # auto | lawbench | cail
    test_path: Optional[str] = None    # optional file used as the whole test split
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    split_seed: int = 0
    labels_path: Optional[str] = None  # JSON list of charge names; default: charges.json beside path, else gold names
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class Config:
    name: str = "legal_charge"
    primary_metric: str = "f1"         # f1 | exact (abstention is reported, lower is better)
    data: DataConfig = field(default_factory=DataConfig)
