"""What happened to each SLURM job of a sweep, read through submitit's job API from the job
folders the launcher leaves (``.submitit/<job id>/``).

A job that never finished has no usable run dir, so its fate lives here: cancelled, timed out,
failed (with the error its log ends with), still running or pending. The job's own result is its
last word; without one, SLURM's state (submitit asks ``sacct``); without that, the log's end.
"""
from __future__ import annotations

import contextlib
import io
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import submitit

# SLURM state (as submitit reports it) -> the word the report uses
SLURM_WORDS = {"COMPLETED": "completed", "CANCELLED": "cancelled", "FAILED": "failed", "TIMEOUT": "timeout",
               "OUT_OF_MEMORY": "out of memory", "NODE_FAIL": "node failure", "PREEMPTED": "preempted",
               "RUNNING": "running", "PENDING": "pending", "REQUEUED": "requeued", "COMPLETING": "running",
               "BOOT_FAIL": "failed", "DEADLINE": "timeout", "SUSPENDED": "suspended"}
# submitit's and SLURM's own lines in a job's stderr, and the frame submitit puts around a job's traceback
NOISE = re.compile(r"^(submitit (INFO|WARNING|ERROR)|\[[0-9-]+ [0-9:,]+\]\[submitit\]|srun: (error|Job step)"
                   r"|-{10,}$|You can check full logs with)")


@dataclass
class Job:
    job_id: str                 # <array>_<index>, or <id> for a one-job sweep
    folder: Path
    index: int | None           # array index = Hydra job number
    status: str                 # completed | cancelled | failed | timeout | running | pending | unknown
    detail: str                 # the error, or what the log says last
    overrides: list[str]


def error_excerpt(err: str, limit: int = 400) -> str:
    """The part of a job's stderr that says what went wrong, on one line."""
    lines = [ln.split("\r")[-1].rstrip() for ln in err.splitlines()]
    lines = [ln for ln in lines if ln.strip() and not NOISE.match(ln) and "%|" not in ln]
    sia_at = next((i for i, ln in enumerate(lines) if ln.startswith("sia: ")), None)
    if sia_at is not None:           # SIA's own message (bad config, refused run): the whole of it
        picked = lines[sia_at:sia_at + 8]
    else:
        tb = max((i for i, ln in enumerate(lines) if ln.startswith("Traceback")), default=None)
        tail = lines[tb:] if tb is not None else lines
        picked = [ln for ln in tail if not ln.startswith(" ")][-1:] or tail[-3:]
    text = " ".join(ln.strip() for ln in picked if "CANCELLED AT" not in ln)
    return text[:limit]


def _submitit_job(folder: Path) -> submitit.SlurmJob:
    """The job of one ``.submitit/<job id>/`` folder (the launcher's folder pattern is ``.submitit/%j``)."""
    return submitit.SlurmJob(folder.parent / "%j", folder.name)


def _stderr(job: submitit.SlurmJob) -> str:
    try:
        return job.stderr() or ""
    except (OSError, UnicodeDecodeError):
        return ""


def _from_result(job: submitit.SlurmJob) -> tuple[str, str] | None:
    """(status, detail) from the result the job wrote, or None when it wrote none (killed, cancelled,
    timed out, still running) or it cannot be read."""
    if not job.paths.result_pickle.exists():    # checked first: result() would wait for one
        return None
    try:
        error = job.exception()                  # the job raised: submitit kept its traceback
        if error is not None:
            return "failed", error_excerpt(str(error))
        value = job.result()                     # a Hydra JobReturn: the run's own status
    except Exception:  # noqa: BLE001 - unreadable result: the logs and SLURM still tell
        return None
    if getattr(getattr(value, "status", None), "name", "COMPLETED") != "FAILED":
        return "completed", ""
    try:
        with contextlib.redirect_stderr(io.StringIO()):   # return_value announces itself on stderr
            value.return_value                    # noqa: B018 - raises the run's exception
    except Exception as e:  # noqa: BLE001 - any exception the run raised is its error
        return "failed", f"{type(e).__name__}: {e}"[:400]
    return "failed", "the run failed without an exception"


def _from_log(err: str) -> tuple[str, str]:
    """(status, detail) from the end SLURM wrote into the job's stderr."""
    ends = re.findall(r"\*\*\* (?:JOB|STEP) \S+ ON \S+ CANCELLED AT \S+( DUE TO [A-Z ]+)?", err)
    last = ends[-1].strip() if ends else None
    if last == "DUE TO TIME LIMIT":
        return "timeout", "hit its time limit"
    if ends and last != "DUE TO JOB REQUEUE":
        return "cancelled", "cancelled (scancel)" if not last else f"cancelled {last.lower()}"
    if "Exited with exit code" in err or "Traceback" in err:
        return "failed", error_excerpt(err)
    return "unknown", error_excerpt(err)


def _from_slurm(job: submitit.SlurmJob, err: str, detail: str) -> tuple[str, str] | None:
    """(status, detail) from SLURM's state of the job (submitit's watcher asks sacct once for all
    the jobs made so far), or None when SLURM does not know it."""
    state = (job.state or "UNKNOWN").split()[0]   # "CANCELLED by 1000" -> CANCELLED
    if state == "UNKNOWN":
        return None
    status = SLURM_WORDS.get(state, state.lower())
    if status == "pending" and job.paths.stderr.exists():
        # started (its log exists): sacct's array record (e.g. 138_[2-5%6] PENDING), which submitit
        # spreads over every index in the range, can outlive the task's own RUNNING row
        status = "running"
    if status == "cancelled":
        return status, "cancelled (scancel or an administrator)"
    if status in ("running", "pending", "requeued"):
        return status, detail
    return status, detail or error_excerpt(err)


def _overrides(job: submitit.SlurmJob) -> list[str]:
    """The Hydra overrides the launcher submitted (the first argument of its pickled call)."""
    try:
        return [str(o) for o in job.submission().args[0]]
    except Exception:  # noqa: BLE001 - the run dir's .hydra/overrides.yaml says it too
        return []


def _index(job_id: str) -> int | None:
    index = job_id.split("_")[1] if "_" in job_id else None
    return int(index) if index and index.isdigit() else None


def _array_number(job_id: str) -> tuple[int, str]:
    head = job_id.split("_")[0]
    return (int(head), head) if head.isdigit() else (-1, head)   # 93 before 115, as submitted


def read_jobs(sweep_dir: Path, use_sacct: bool = True) -> list[Job]:
    """Every submitted job under ``sweep_dir/.submitit``; ``use_sacct=False`` reads results and logs
    alone (another machine, accounting purged)."""
    root = Path(sweep_dir) / ".submitit"
    if not root.is_dir():
        return []
    # made first, all of them, so the watcher's one sacct call covers every job
    found = [_submitit_job(p) for p in sorted(root.iterdir()) if p.is_dir()]
    found = [j for j in found if j.paths.submitted_pickle.exists()]
    ask_slurm = use_sacct and shutil.which("sacct") is not None
    jobs = []
    for job in found:
        err = _stderr(job)
        status, detail = _from_result(job) or _from_log(err)
        if ask_slurm and not job.paths.result_pickle.exists():   # the result is the job's own last word
            status, detail = _from_slurm(job, err, detail) or (status, detail)
        jobs.append(Job(job_id=job.job_id, folder=job.paths.folder, index=_index(job.job_id),
                        status=status, detail=detail, overrides=_overrides(job)))
    jobs.sort(key=lambda j: (_array_number(j.job_id), j.index if j.index is not None else -1))
    return jobs
