"""`python -m sia.report` on the folder of a real sweep: 2 feedback agents x 2 seeds of the loop on the
echo engine, submitted to SLURM (hydra/launcher=slurm_local), W&B offline."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from sia.report.__main__ import build_report, main
from sia.report.plot import plot_report
from tests.support.slurm import REPO, require_slurm, run_sia


@pytest.fixture(scope="module")
def sweep():
    require_slurm()
    root = Path(tempfile.mkdtemp(prefix="sia-report-"))
    sweep_dir = root / "sweep"
    out = run_sia("+sweep=pair", "hydra/launcher=slurm_local", f"hydra.sweep.dir={sweep_dir}", "quiet=true",
                  "logger=wandb", "logger.mode=offline", timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    yield sweep_dir
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slurm
def test_report_compares_the_arms_of_a_sweep(sweep):
    out = subprocess.run([sys.executable, "-m", "sia.report", str(sweep)], cwd=REPO, capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "comparison" in out.stdout and "rules" in out.stdout and "harness_only" in out.stdout
    md = (sweep / "report.md").read_text(encoding="utf-8")
    comparison = md.split("## Comparison")[1].split("\n## ")[0]
    rows = {line.split("|")[2].strip(): line for line in comparison.splitlines() if line.startswith("| legal_charge |")}
    assert set(rows) == {"rules", "harness_only"}
    paired = md.split("## Paired by seed")[1].split("\n## ")[0]
    assert "| legal_charge | rules - harness_only |" in paired, paired
    assert all("| 2/2 | 0,1 |" in row for row in rows.values()), rows
    # the numbers are the runs' own: best val of the rules group is the mean of its two summaries
    bests = [json.loads((sweep / d / "summary.json").read_text())["best"]["val"]
             for d in ("0_legal_charge_rules_r8_s0", "1_legal_charge_rules_r8_s1")]
    assert f"{sum(bests) / 2:.3f} ±" in rows["rules"].split("|")[7]
    # decisions per generation of every run, and every job finished
    assert md.count("0:seed+") == 4
    assert md.count("| finished |") == 4
    png = sweep / "report.png"
    assert png.is_file() and png.stat().st_size > 10_000
    # the tables went into each run's offline W&B run (a second offline run dir, same run id)
    for run in sweep.glob("*_legal_charge_*"):
        offline = sorted(run.glob("wandb/offline-run-*"))
        assert len(offline) == 2, offline
        ids = {p.name.rsplit("-", 1)[-1] for p in offline}
        assert len(ids) == 1
        assert list(offline[-1].glob("files/media/table/report/comparison_*.table.json")), offline[-1]


@pytest.mark.slurm
def test_report_figure_puts_both_arms_on_the_same_axes(sweep, tmp_path):
    report = build_report(sweep)
    labels = plot_report(report["groups"], tmp_path / "r.png", "t")
    assert labels["val"][:2] == ["rules (n=2)", "harness_only (n=2)"]
    assert labels["test"][:2] == ["rules", "harness_only"]


def test_report_refuses_a_folder_without_runs(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "no runs under" in capsys.readouterr().err
    assert main([str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_job_fates_read_from_submitit_logs_alone(tmp_path):
    """Without sacct (another machine, accounting purged) the logs still tell each job's end."""
    from sia.report.jobs import read_jobs

    logs = {
        "7_0": "slurmstepd-vm: error: *** JOB 7_0 ON vm CANCELLED AT 2026-12-01T10:00:00 ***\n",
        "7_1": "sia: invalid configuration:\n  - lora.rank=0 must be an integer >= 1; use e.g. lora.rank=8\n"
               "srun: error: vm: task 0: Exited with exit code 2\n",
        "7_2": "slurmstepd-vm: error: *** STEP 7_2.0 ON vm CANCELLED AT 2026-12-01T10:00:00 DUE TO TIME LIMIT ***\n",
        "7_3": "gen 0 val:  50%|#####     | 4/8\rgen 0 val: 100%|##########| 8/8\n"
               "Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
               "RuntimeError: the first harness does not load in the sandbox\n"
               "srun: error: vm: task 0: Exited with exit code 1\n",
    }
    for job, err in logs.items():
        folder = tmp_path / ".submitit" / job
        folder.mkdir(parents=True)
        (folder / f"{job}_submitted.pkl").write_bytes(b"not a pickle")
        (folder / f"{job}_0_log.err").write_text(err)
    jobs = {j.job_id: j for j in read_jobs(tmp_path, use_sacct=False)}
    assert [jobs[j].index for j in sorted(jobs)] == [0, 1, 2, 3]
    assert jobs["7_0"].status == "cancelled"
    assert jobs["7_1"].status == "failed" and "lora.rank=0 must be an integer >= 1" in jobs["7_1"].detail
    assert jobs["7_2"].status == "timeout"
    assert jobs["7_3"].status == "failed"
    assert jobs["7_3"].detail == "RuntimeError: the first harness does not load in the sandbox"


def test_job_fates_read_from_the_results_submitit_jobs_wrote(tmp_path):
    """A result is the job's own last word: a finished run, a run that raised (Hydra's JobReturn
    keeps the exception), a job whose code raised outside the run (submitit keeps the traceback);
    the logs then do not matter."""
    import traceback

    from hydra.core.utils import JobReturn, JobStatus
    from submitit.core.utils import DelayedSubmission, cloudpickle_dump

    from sia.report.jobs import read_jobs

    def raised(error: Exception) -> str:
        try:
            raise error
        except Exception:  # noqa: BLE001 - the traceback text submitit writes
            return traceback.format_exc()

    finished = JobReturn(overrides=["seed=0"], status=JobStatus.COMPLETED)
    finished.return_value = None
    failed = JobReturn(overrides=["seed=1"], status=JobStatus.FAILED)
    failed.return_value = ValueError("the harness has no solve()")
    results = {"9_0": ("success", finished), "9_1": ("success", failed),
               "9_2": ("error", raised(OSError("disk full while writing state.json")))}
    for job, result in results.items():
        folder = tmp_path / ".submitit" / job
        folder.mkdir(parents=True)
        DelayedSubmission(print, [f"seed={job[-1]}", "lora.rank=8"]).dump(folder / f"{job}_submitted.pkl")
        cloudpickle_dump(result, folder / f"{job}_0_result.pkl")
        (folder / f"{job}_0_log.err").write_text("srun: error: vm: task 0: Exited with exit code 1\n")
    jobs = {j.job_id: j for j in read_jobs(tmp_path, use_sacct=False)}
    assert (jobs["9_0"].status, jobs["9_0"].detail) == ("completed", "")
    assert (jobs["9_1"].status, jobs["9_1"].detail) == ("failed", "ValueError: the harness has no solve()")
    assert (jobs["9_2"].status, jobs["9_2"].detail) == ("failed", "OSError: disk full while writing state.json")
    assert jobs["9_1"].overrides == ["seed=1", "lora.rank=8"]
    assert jobs["9_2"].folder == tmp_path / ".submitit" / "9_2"


# ---- intervals and the paired comparison, on fabricated run dirs ---------------------------
def _fake_run(root: Path, name: str, feedback: str, seed: int, first: tuple, best: tuple, task="legal_charge"):
    """A finished run dir as the loop leaves one: config.yaml, state.json, summary.json."""
    import yaml

    from sia.records import GenerationRecord, Incumbent, RunState

    path = root / name
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump({"task": {"name": task}, "feedback": {"name": feedback},
                                                      "seed": seed, "logger": {"mode": "disabled"}}))
    history = [GenerationRecord(generation=0, action="seed", kept=True, val=first[0], test=first[1],
                                incumbent_val=first[0], incumbent_test=first[1]),
               GenerationRecord(generation=1, action="harness", edit="few_shot", kept=True, val=best[0], test=best[1],
                                keep_rule="paired", keep_gain=best[0] - first[0], keep_n=16,
                                incumbent_val=best[0], incumbent_test=best[1])]
    state = RunState(status="done", next_generation=2, incumbent=Incumbent(1, "h.py", None, best[0], best[1]),
                     history=history)
    (path / "state.json").write_text(json.dumps(state.to_json()))
    (path / "summary.json").write_text(json.dumps({
        "task": task, "feedback": feedback, "metric": "f1", "direction": "max",
        "first": {"val": first[0], "test": first[1]}, "best": {"generation": 1, "val": best[0], "test": best[1]},
        "baselines": {"knn": {"val": 0.9, "test": 0.8}, "tfidf_logreg": {"val": 0.95, "test": 0.97}},
        "wall_s": 100.0, "train_s": 0.0}))


def _fabricated(tmp_path):
    tests = {"rules": [0.80, 0.70, 0.75], "harness_only": [0.70, 0.72, 0.65]}
    for feedback, values in tests.items():
        for seed, test in enumerate(values):
            _fake_run(tmp_path, f"{seed}_{feedback}_s{seed}", feedback, seed, (0.1, 0.1), (0.9, test))
    return tests


def test_report_gives_t_intervals_over_seeds_and_the_paired_difference(tmp_path):
    from scipy import stats

    tests = _fabricated(tmp_path)
    report = build_report(tmp_path, use_sacct=False)
    rows = {r["feedback"]: r for r in report["comparison"]}
    t2 = stats.t.ppf(0.975, 2)
    for feedback, values in tests.items():     # by hand: mean ± t(0.975, 2) * sd / sqrt(3)
        mean = sum(values) / 3
        sd = (sum((v - mean) ** 2 for v in values) / 2) ** 0.5
        assert rows[feedback]["best test"] == f"{mean:.3f} ± {t2 * sd / 3 ** 0.5:.3f}"
        assert rows[feedback]["first val"] == "0.100 ± 0.000"
        assert rows[feedback]["best baseline val / test"] == "tfidf_logreg 0.950 / 0.970"
    (paired,) = report["paired"]
    diffs = [a - b for a, b in zip(tests["rules"], tests["harness_only"])]     # +0.10, -0.02, +0.10
    mean = sum(diffs) / 3
    half = t2 * (sum((d - mean) ** 2 for d in diffs) / 2) ** 0.5 / 3 ** 0.5
    assert paired["feedback"] == "rules - harness_only" and paired["seeds"] == "0,1,2"
    assert paired["best test diff"] == f"{mean:.3f} ± {half:.3f}"
    assert paired["best test 95% interval"] == f"[{mean - half:+.3f}, {mean + half:+.3f}]"
    assert paired["best test per seed"] == "+0.100 -0.020 +0.100"
    assert paired["best val per seed"] == "+0.000 +0.000 +0.000"
    # the decisions table shows the paired keep rule's gain and the examples that decided it
    assert any("1:harness:few_shot+(+0.800/16)" in r["decisions"] for r in report["decisions"])


def test_report_pairs_only_seeds_both_arms_finished(tmp_path):
    _fake_run(tmp_path, "a", "rules", 0, (0.1, 0.1), (0.9, 0.8))
    _fake_run(tmp_path, "b", "rules", 1, (0.1, 0.1), (0.9, 0.7))
    _fake_run(tmp_path, "c", "harness_only", 1, (0.1, 0.1), (0.9, 0.6))
    report = build_report(tmp_path, use_sacct=False)
    (paired,) = report["paired"]
    assert paired["seeds"] == "1" and paired["best test diff"] == "0.100 (n=1)"
    assert paired["best test 95% interval"] == "-"
    assert main([str(tmp_path), "--no-wandb-offline"]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "## Paired by seed: each feedback minus harness_only" in md and "rules - harness_only" in md


def test_wandb_report_is_built_offline_with_its_panels_and_queries(tmp_path, monkeypatch):
    """The W&B Report object of a fabricated sweep, built without a login and not saved."""
    import wandb_workspaces.reports.v2 as wr

    from sia.report.wandb_out import build_wandb_report

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    _fabricated(tmp_path)
    report = build_report(tmp_path, use_sacct=False)
    built = build_wandb_report(report, "SIA report: test", entity="team", project="sia")
    assert isinstance(built, wr.Report) and (built.entity, built.project) == ("team", "sia")
    grids = [b for b in built.blocks if isinstance(b, wr.PanelGrid)]
    assert len(grids) == 1                                   # one task
    (runset,) = grids[0].runsets
    assert runset.filters == "Config('task.name') == 'legal_charge'" and runset.groupby == ["config.feedback.name"]
    from wandb_workspaces import expr

    assert [str(f) for f in expr.string_to_filterexpr_list(runset.filters)] == \
        ["(Config(name='task.name') == 'legal_charge')"]          # a query W&B parses
    assert expr.groupby_str_to_key(runset.groupby[0]).name == "feedback.value.name"   # the nested config key
    panels = {type(p).__name__ + ":" + getattr(p, "title", getattr(p, "table_name", "")): p for p in grids[0].panels}
    val = panels["LinePlot:legal_charge: incumbent val per generation"]
    assert (val.x, val.y, val.groupby_aggfunc, val.groupby_rangefunc) == ("generation", ["incumbent_val"], "mean",
                                                                           "minmax")
    assert val.groupby == wr.Config("feedback.name")
    test = panels["BarPlot:legal_charge: test at the best generation"]
    assert test.metrics == [wr.SummaryMetric("best/test")] and test.groupby_rangefunc == "stderr"
    assert "WeavePanelSummaryTable:generations" in panels
    text = "\n".join(b.text for b in built.blocks if isinstance(b, wr.MarkdownBlock))
    paired = report["paired"][0]
    assert paired["best test 95% interval"] in text and "rules - harness_only" in text     # the paired table
    assert report["comparison"][0]["best test"] in text                                   # the t intervals
    assert "1:harness:few_shot+(+0.800/16)" in text                                      # the decisions


def test_a_resumed_sweeps_earlier_jobs_are_attempts_of_its_runs_not_more_runs(tmp_path):
    """Rerunning a sweep's command resumes its run dirs with new jobs; the report counts runs, not
    jobs: the earlier jobs are listed under the run they worked on, and a job that never started its
    run is one row however many times it was submitted."""
    from submitit.core.utils import DelayedSubmission

    _fake_run(tmp_path, "0_legal_charge_rules_s0", "rules", 0, (0.1, 0.1), (0.9, 0.8))
    (tmp_path / "0_legal_charge_rules_s0" / ".hydra").mkdir()
    (tmp_path / "0_legal_charge_rules_s0" / ".hydra" / "hydra.yaml").write_text("hydra:\n  job:\n    id: '115_0'\n")
    for array in ("93", "115"):
        for index, seed in ((0, 0), (1, 1)):
            job = f"{array}_{index}"
            folder = tmp_path / ".submitit" / job
            folder.mkdir(parents=True)
            DelayedSubmission(print, [f"seed={seed}", "feedback=rules", "task=legal_charge"]).dump(
                folder / f"{job}_submitted.pkl")
            (folder / f"{job}_0_log.err").write_text(
                f"slurmstepd-vm: error: *** JOB {job} ON vm CANCELLED AT 2026-12-01T10:00:00 ***\n")
    report = build_report(tmp_path, use_sacct=False)
    (group,) = [r for r in report["comparison"] if r["feedback"] == "rules"]
    assert group["runs"] == "1/2"                       # one finished run of two, not 1 of 4 jobs
    rows = [(r["job"], r["run"], r["status"]) for r in report["job_rows"]]
    assert rows[:2] == [("115_0", "0_legal_charge_rules_s0", "finished"),
                        ("93_0", "0_legal_charge_rules_s0", "cancelled")]
    assert [job for job, _, _ in rows[2:]] == ["115_1", "93_1"]     # newest first: 115 after 93 as numbers
    assert "its latest job is 115_1" in report["job_rows"][3]["detail"]


def test_report_figure_draws_the_best_baseline_of_the_task_on_both_panels(tmp_path):
    _fabricated(tmp_path)
    report = build_report(tmp_path, use_sacct=False)
    labels = plot_report(report["groups"], tmp_path / "r.png", "t")
    assert sorted(labels["val"]) == ["best baseline: tfidf_logreg", "harness_only (n=3)", "rules (n=3)"]
    assert sorted(labels["test"]) == ["best baseline: tfidf_logreg", "harness_only", "rules"]
    _fake_run(tmp_path, "other_task", "rules", 0, (0.1, 0.1), (0.5, 0.5), task="sql_qa")
    mixed = plot_report(build_report(tmp_path, use_sacct=False)["groups"], tmp_path / "m.png", "t")
    assert not any("baseline" in label for label in mixed["val"] + mixed["test"])   # no one task's line


def test_report_written_elsewhere_names_the_sweep_command_that_made_it(tmp_path):
    """``--out`` puts report.md/png where docs live; the md says which sweep and report commands made it."""
    _fabricated(tmp_path / "sweep")
    (tmp_path / "sweep" / "multirun.yaml").write_text(
        "hydra:\n  overrides:\n    hydra: [hydra/launcher=slurm_local, hydra.sweep.dir=sweep]\n"
        "    task: [+sweep=ablation, task=legal_charge]\n")
    assert main([str(tmp_path / "sweep"), "--out", str(tmp_path / "docs"), "--no-wandb-offline"]) == 0
    md = (tmp_path / "docs" / "report.md").read_text()
    assert ("Sweep: `python -m sia -m +sweep=ablation task=legal_charge hydra/launcher=slurm_local "
            f"hydra.sweep.dir=sweep`; report: `python -m sia.report {tmp_path / 'sweep'} --out {tmp_path / 'docs'} "
            "--no-wandb-offline`") in md
    assert (tmp_path / "docs" / "report.png").stat().st_size > 0 and "](report.png)" in md
    assert not (tmp_path / "sweep" / "report.md").exists()
