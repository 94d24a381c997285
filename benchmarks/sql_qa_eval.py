"""Time one sql_qa evaluation (the evaluator process included) and show the question mix.

    .venv/bin/python benchmarks/sql_qa_eval.py [--repeat 3] [--split val+test] [task overrides...]

Answer sets: the gold queries (accuracy must be 1.0), wrong answers (another question's gold
query), invalid SQL, and a slow query (time limit). Prints seconds per evaluation and per
answer, then the template levels per split. Overrides are dotted task keys, e.g.
``data.source=spider data.path=/data/spider``.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from omegaconf import OmegaConf  # noqa: E402

from sia.tasks import load_task  # noqa: E402

SLOW_SQL = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT COUNT(*) FROM c"


def answer_sets(examples, seed: int = 0) -> dict[str, list]:
    gold = [e.target["sql"] for e in examples]
    wrong = gold[1:] + gold[:1]             # each question gets its neighbour's query
    rng = random.Random(seed)
    invalid = [rng.choice(["SELECT nme FROM customers", "SELEC 1", "SELECT * FROM nowhere"]) for _ in examples]
    return {"gold": gold, "wrong": wrong, "invalid": invalid, "one slow query": [SLOW_SQL] + gold[1:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--split", default="val+test", help="'+'-joined split names to evaluate")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = OmegaConf.merge(OmegaConf.load(ROOT / "conf" / "task" / "sql_qa.yaml"),
                          OmegaConf.from_dotlist(args.overrides))
    task = load_task("sql_qa", cfg)
    problems = task.config_problems()
    if problems:
        sys.exit("\n".join(problems))
    started = time.perf_counter()
    splits = task.load()
    load_s = time.perf_counter() - started
    examples = [e for name in args.split.split("+") for e in splits[name]]
    print(f"data: {task.data_label}; load {load_s:.2f}s; evaluating {len(examples)} answers ({args.split}), "
          f"query timeout {cfg.query_timeout_s}s, best of {args.repeat}")
    print(f"{'answers':<16}{'accuracy':>9}{'s/eval':>9}{'ms/answer':>11}  outcomes")
    for name, answers in answer_sets(examples).items():
        times, report = [], None
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            report = task.evaluate(examples, answers, "val")
            times.append(time.perf_counter() - t0)
        outcomes = Counter(p.details["outcome"] for p in report.per_example)
        best = min(times)
        print(f"{name:<16}{report.metrics['execution_accuracy']:>9.3f}{best:>9.3f}"
              f"{1000 * best / len(examples):>11.2f}  {dict(outcomes)}  (median {statistics.median(times):.3f}s)")
    print("\nquestions per level:")
    for name in ("train", "val", "test"):
        levels = Counter(e.target.get("level") for e in splits[name])
        print(f"  {name:<5} {len(splits[name]):>4}  " + "  ".join(f"L{k}: {v}" for k, v in sorted(levels.items(),
                                                                                             key=str)))


if __name__ == "__main__":
    main()
