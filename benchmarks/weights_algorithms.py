"""Val gain per wall-clock minute of each reward-driven algorithm, from the same incumbent.

Per task, one base run builds the incumbent (the harness-only policy for a few generations,
e.g. legal_charge's few-shot edit). Per seed, the rollout is drawn once (by the first
algorithm's run) and every algorithm trains on that same rollout: a copy of the base run dir,
resumed through the real CLI for one more generation with ``feedback=weights_only
lora.algorithm=<name> seed=<seed>``. Minutes = rollout + training + val evaluation (the
shared rollout counted in full for every algorithm).

    python benchmarks/weights_algorithms.py                    # the table of issue 9
    python benchmarks/weights_algorithms.py --tasks sql_qa --algorithms grpo --seeds 0
    python benchmarks/weights_algorithms.py -- budget.train_steps=24   # extra overrides
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# The base run of each task: enough harness generations for a first kept edit where the seed
# harness's answers are unusable (legal_charge's seed scores 0 until the rules policy's
# few-shot edit; sql_qa's until its few-shot edit); scrna_denoise starts from its seed.
BASE_RUNS = {"legal_charge": ["feedback=rules", "budget.generations=2"],
             "sql_qa": ["feedback=harness_only", "budget.generations=1"],
             "scrna_denoise": ["feedback=harness_only", "budget.generations=0"]}
# test is not needed for the table: skipping it keeps every run to rollout + train + val
COMMON = ["quiet=true", "logger=none", "budget.test_examples=0", "budget.wall_clock_minutes=600"]


def sia(run_dir: Path, overrides: list[str]) -> None:
    cmd = [sys.executable, "-m", "sia", f"hydra.run.dir={run_dir}", *COMMON, *overrides]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({' '.join(cmd)}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")


def read_state(run_dir: Path) -> dict:
    return json.loads((run_dir / "state.json").read_text())


def reopen(base: Path, dest: Path, rollouts_from: Path | None) -> int:
    """A copy of the finished base run, set to continue at its next generation (with the
    seed's saved rollout when one exists); returns that generation."""
    shutil.copytree(base, dest, ignore=shutil.ignore_patterns("scratch", "wandb"))
    state = read_state(dest)
    state.update(status="running", stop_reason=None)
    (dest / "state.json").write_text(json.dumps(state))
    generation = int(state["next_generation"])
    if rollouts_from is not None:
        gen_dir = dest / f"gen_{generation:03d}"
        gen_dir.mkdir(exist_ok=True)
        shutil.copy(rollouts_from / f"gen_{generation:03d}" / "rollouts.jsonl", gen_dir / "rollouts.jsonl")
    return generation


def one(task: str, base: Path, out: Path, algorithm: str, seed: int, rollouts: dict, extra: list[str]) -> dict:
    """One algorithm from the base incumbent; ``rollouts``: seed -> (the run dir that drew that
    seed's rollout, its seconds), filled by the first run of each seed."""
    dest = out / f"{task}_{algorithm}_s{seed}"
    generation = reopen(base, dest, rollouts[seed][0] if seed in rollouts else None)
    sia(dest, [f"task={task}", "feedback=weights_only", f"budget.generations={generation}",
               f"lora.algorithm={algorithm}", f"seed={seed}", *extra])
    gen_dir = dest / f"gen_{generation:03d}"
    record = json.loads((gen_dir / "record.json").read_text())
    info_file = gen_dir / "train.json"    # absent when the generation failed (e.g. no reward spread for grpo)
    info = json.loads(info_file.read_text()) if info_file.is_file() else {"skipped": record.get("failed")}
    # a failed generation is the rollout and the refusal: its whole time counts as the rollout's
    own_rollout_s = float(info.get("rollout_s", record["wall_s"]))
    if seed not in rollouts and (gen_dir / "rollouts.jsonl").is_file():
        rollouts[seed] = (dest, own_rollout_s)
    rollout_s = rollouts[seed][1] if seed in rollouts else 0.0
    minutes = (record["wall_s"] - own_rollout_s + rollout_s) / 60
    base_val = read_state(base)["incumbent"]["val"]
    gain = None if record.get("val") is None else record["val"] - base_val
    stats = info.get("reward_stats") or {}
    return {"task": task, "algorithm": algorithm, "seed": seed, "base_val": base_val, "val": record.get("val"),
            "gain": gain, "minutes": minutes, "gain_per_min": None if gain is None else gain / minutes,
            "rollout_s": rollout_s, "train_s": info.get("wall_s"), "skipped": info.get("skipped"),
            "loss_first": (info.get("losses") or [None])[0], "loss_last": (info.get("losses") or [None])[-1],
            "reward_mean": stats.get("mean"), "zero_share": stats.get("zero_share"),
            "spread_share": stats.get("spread_share"), "run_dir": str(dest)}


def table(rows: list[dict]) -> None:
    print(f"\n{'task':<14} {'algorithm':<8} {'seeds':>5} {'val gain (x100)':>17} {'minutes':>8} "
          f"{'gain/min (x100)':>17}  base val")
    keys = sorted({(r["task"], r["algorithm"]) for r in rows}, key=lambda k: (k[0], k[1]))
    for task, algorithm in keys:
        group = [r for r in rows if r["task"] == task and r["algorithm"] == algorithm and r["gain"] is not None]
        if not group:
            print(f"{task:<14} {algorithm:<8} no training: "
                  f"{next(r['skipped'] for r in rows if r['task'] == task and r['algorithm'] == algorithm)}")
            continue
        gains = [100 * r["gain"] for r in group]
        per_min = [100 * r["gain_per_min"] for r in group]
        spread = lambda v: statistics.pstdev(v) if len(v) > 1 else 0.0  # noqa: E731
        print(f"{task:<14} {algorithm:<8} {len(group):>5} {statistics.mean(gains):>+9.2f} ±{spread(gains):<6.2f} "
              f"{statistics.mean(r['minutes'] for r in group):>8.1f} "
              f"{statistics.mean(per_min):>+9.2f} ±{spread(per_min):<6.2f}  {100 * group[0]['base_val']:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", nargs="+", default=list(BASE_RUNS))
    parser.add_argument("--algorithms", nargs="+", default=["grpo", "rs_sft", "eaw"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--ppo-task", default="legal_charge", help="the task that also runs ppo ('' for none)")
    parser.add_argument("--out", default=str(REPO / "outputs" / "benchmarks"))
    parser.add_argument("overrides", nargs="*", help="extra overrides for every run, e.g. budget.train_steps=24")
    args = parser.parse_args()
    out = Path(args.out) / time.strftime("weights_%Y-%m-%d_%H-%M-%S")
    rows: list[dict] = []
    for task in args.tasks:
        base = out / f"{task}_base"
        sia(base, [f"task={task}", *BASE_RUNS.get(task, ["feedback=harness_only", "budget.generations=1"]),
                   *args.overrides])
        print(f"{task}: base incumbent val {read_state(base)['incumbent']['val']:.3f}", flush=True)
        algorithms = args.algorithms + (["ppo"] if task == args.ppo_task and "ppo" not in args.algorithms else [])
        rollouts: dict = {}
        for seed in args.seeds:
            for algorithm in algorithms:
                row = one(task, base, out, algorithm, seed, rollouts, args.overrides)
                rows.append(row)
                print(json.dumps(row), flush=True)
                (out / "rows.json").write_text(json.dumps(rows, indent=1))
    table(rows)


if __name__ == "__main__":
    main()
