"""The ``task`` config of sql_qa: every key, its type and its one default."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class DataConfig:
    source: str = "synthetic"          # synthetic | spider
    path: Optional[str] = None         # spider: folder with dev.json (+ train_spider.json) and database/<db_id>/<db_id>.sqlite
    seed: int = 0                      # synthetic database, slot values, splits (spider: split and sample order)
    instances_per_template: int = 10   # synthetic: 27 templates -> ~220 questions (fewer where slots run out)
    paraphrases: int = 1               # questions per template instance (an instance never straddles splits)
    split_by: str = "instance"         # instance: val/test hold new slot values | template: new query shapes
    val_fraction: float = 0.2          # of each template's instances (spider: of the dev databases)
    test_fraction: float = 0.25
    max_per_split: int = 200           # spider: questions kept per split (CPU budget)


@dataclass
class Config:
    name: str = "sql_qa"
    primary_metric: str = "execution_accuracy"
    data: DataConfig = field(default_factory=DataConfig)
    query_timeout_s: float = 2.0       # per predicted query in the evaluator
    max_result_rows: int = 10000       # a predicted result with more rows is wrong
    eval_memory_mb: int = 1024         # address-space limit of the evaluator process
