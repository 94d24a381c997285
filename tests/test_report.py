"""`python -m sia.report` on the folder of a real sweep: 2 policies x 2 seeds of the loop on the
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
def test_report_compares_the_policies_of_a_sweep(sweep):
    out = subprocess.run([sys.executable, "-m", "sia.report", str(sweep)], cwd=REPO, capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "comparison" in out.stdout and "rules" in out.stdout and "harness_only" in out.stdout
    md = (sweep / "report.md").read_text(encoding="utf-8")
    rows = {line.split("|")[2].strip(): line for line in md.splitlines() if line.startswith("| legal_charge |")}
    assert set(rows) == {"rules", "harness_only"}
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
def test_report_figure_puts_both_policies_on_the_same_axes(sweep, tmp_path):
    report = build_report(sweep)
    labels = plot_report(report["groups"], tmp_path / "r.png", "t")
    assert labels["val"] == ["rules (n=2)", "harness_only (n=2)"]
    assert labels["test"] == ["rules", "harness_only"]


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
