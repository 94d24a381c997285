"""Val gain per wall-clock minute of each reward-driven algorithm, from the same incumbent.

Per task, one base run builds the incumbent (the harness-only feedback for a few generations,
e.g. legal_charge's few-shot edit). Per seed, the rollout is drawn once (by the first
algorithm's run) and every algorithm trains on that same rollout: a copy of the base run dir,
resumed through the real CLI for one more generation with ``feedback=weights_only
lora.algorithm=<name> seed=<seed>``. Minutes = rollout + training + val evaluation (the
shared rollout counted in full for every algorithm). The table gives, per task and algorithm,
the mean over seeds of the val gain of the one update and of that gain per minute, each with a
95% t interval over seeds (none from one seed).

    python benchmarks/weights_algorithms.py                    # the table of issues 9 and 22
    python benchmarks/weights_algorithms.py --tasks sql_qa --algorithms grpo --seeds 0
    python benchmarks/weights_algorithms.py -- budget.train_steps=24   # extra overrides
    # the smallest run that exercises it (one seed, one algorithm, legal_charge):
    python benchmarks/weights_algorithms.py --tasks legal_charge --algorithms grpo --seeds 0 --ppo-task '' \
        -- budget.val_examples=16 lora.rollout_examples=8 budget.train_steps=4
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
# harness's answers are unusable (legal_charge's seed scores 0 until the rules feedback's
# few-shot edit; sql_qa's until its few-shot edit); scrna_denoise starts from its seed.
BASE_RUNS = {"legal_charge": ["feedback=rules", "budget.generations=2"],
             "sql_qa": ["feedback=harness_only", "budget.generations=1"],
             "scrna_denoise": ["feedback=harness_only", "budget.generations=0"]}
# test is not needed for the table: skipping it keeps every run to rollout + train + val. The
# strict keep rule scores every candidate on the whole val pool (the paired rule stops a loser
# early, and its val would then be a partial one).
COMMON = ["quiet=true", "logger=none", "budget.test_examples=0", "budget.wall_clock_minutes=600",
          "feedback.keep=strict"]

# 97.5% quantiles of Student's t by degrees of freedom (a 95% two-sided interval)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


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
            "spread_share": stats.get("spread_share"), "n_positive": stats.get("n_positive"),
            "note": info.get("note"), "auto_would_choose": auto_choice(task, stats), "run_dir": str(dest)}


def auto_choice(task: str, stats: dict) -> str | None:
    """What ``lora.algorithm=auto`` picks from this rollout's statistics (the val answers' format
    rate taken as 0: gold SFT for unreadable answers aside)."""
    if not stats:
        return None
    from omegaconf import OmegaConf

    from sia.tasks import load_task
    from sia.train.choose import choose_algorithm
    from sia.train.samples import RewardStats

    thresholds = OmegaConf.load(REPO / "conf" / "lora" / "default.yaml").thresholds
    loaded = load_task(task, {})
    name, _ = choose_algorithm(RewardStats(**stats), has_gold=loaded.supports_gold_sft(), format_rate=0.0,
                               prior_shape=loaded.scoring.reward_shape, **thresholds)
    return name or "none"


def interval(values: list[float]) -> tuple[float, float | None]:
    """(mean, half-width of the 95% t interval over seeds; None from one seed)."""
    mean = statistics.mean(values)
    if len(values) < 2:
        return mean, None
    t = T975.get(len(values) - 1, 1.96)
    return mean, t * statistics.stdev(values) / len(values) ** 0.5


def fmt(values: list[float]) -> str:
    mean, half = interval(values)
    return f"{mean:+7.2f} " + ("[  one seed  ]" if half is None else f"[{mean - half:+6.2f},{mean + half:+6.2f}]")


def table(rows: list[dict]) -> None:
    print(f"\n{'task':<14} {'algorithm':<8} {'seeds':>5}  {'val gain/update x100 [95%]':<28} {'minutes':>7}  "
          f"{'gain/min x100 [95%]':<28} base val  rollout reward mean / zero / spread, auto's choice")
    keys = sorted({(r["task"], r["algorithm"]) for r in rows}, key=lambda k: (k[0], k[1]))
    for task, algorithm in keys:
        mine = [r for r in rows if r["task"] == task and r["algorithm"] == algorithm]
        group = [r for r in mine if r["gain"] is not None]
        if not group:
            print(f"{task:<14} {algorithm:<8} no training: {mine[0]['skipped']}")
            continue
        reward = " / ".join("-" if not seen else f"{statistics.mean(seen):.2f}"   # mean over the seeds' rollouts
                            for seen in ([r[k] for r in mine if r.get(k) is not None]
                                         for k in ("reward_mean", "zero_share", "spread_share")))
        print(f"{task:<14} {algorithm:<8} {len(group):>5}  {fmt([100 * r['gain'] for r in group]):<28} "
              f"{statistics.mean(r['minutes'] for r in group):>7.1f}  "
              f"{fmt([100 * r['gain_per_min'] for r in group]):<28} {100 * group[0]['base_val']:>8.1f}  {reward}, "
              f"{'/'.join(sorted({str(r.get('auto_would_choose')) for r in mine}))}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", nargs="+", default=list(BASE_RUNS))
    parser.add_argument("--algorithms", nargs="+", default=["rs_sft", "grpo", "eaw"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--ppo-task", default="legal_charge", help="the task that also runs ppo ('' for none)")
    parser.add_argument("--out", default=str(REPO / "outputs" / "benchmarks"))
    parser.add_argument("--base-from", default="", help="an earlier benchmark folder whose <task>_base runs "
                        "are the incumbents (more seeds from the same incumbent; its rows are not re-read)")
    parser.add_argument("overrides", nargs="*", help="extra overrides for every run, e.g. budget.train_steps=24")
    args = parser.parse_args()
    out = Path(args.out) / time.strftime("weights_%Y-%m-%d_%H-%M-%S")
    rows: list[dict] = []
    for task in args.tasks:
        base = out / f"{task}_base"
        if args.base_from:
            shutil.copytree(Path(args.base_from) / f"{task}_base", base,
                            ignore=shutil.ignore_patterns("scratch", "wandb"))
        else:
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
