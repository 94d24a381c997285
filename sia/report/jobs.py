"""What happened to each SLURM job of a sweep, from submitit's job folders (``.submitit/<id>/``)
and, when the cluster answers, ``sacct``.

A job that never finished has no usable run dir, so its fate lives here: cancelled, timed out,
failed (with the error its log ends with), still running or pending.
"""
from __future__ import annotations

import pickle
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# sacct state -> the word the report uses
SACCT_WORDS = {"COMPLETED": "completed", "CANCELLED": "cancelled", "FAILED": "failed", "TIMEOUT": "timeout",
               "OUT_OF_MEMORY": "out of memory", "NODE_FAIL": "node failure", "PREEMPTED": "preempted",
               "RUNNING": "running", "PENDING": "pending", "REQUEUED": "requeued", "COMPLETING": "running",
               "BOOT_FAIL": "failed", "DEADLINE": "timeout", "SUSPENDED": "suspended"}
NOISE = re.compile(r"^(submitit (INFO|WARNING|ERROR)|\[[0-9-]+ [0-9:,]+\]\[submitit\]|srun: (error|Job step))")


@dataclass
class Job:
    job_id: str                 # <array>_<index>, or <id> for a one-job sweep
    folder: Path
    index: int | None           # array index = Hydra job number
    status: str                 # completed | cancelled | failed | timeout | running | pending | unknown
    detail: str                 # the error, or what the log says last
    overrides: list[str]
    requeues: int               # times the job went back to the queue (requeue, preemption, time limit)


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _logs(folder: Path) -> tuple[str, str]:
    out = "".join(_text(p) for p in sorted(folder.glob("*_log.out")))
    err = "".join(_text(p) for p in sorted(folder.glob("*_log.err")))
    return out, err


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


def _from_result(folder: Path) -> tuple[str, str] | None:
    """(status, detail) from submitit's result pickle, when the job wrote one."""
    results = sorted(folder.glob("*_result.pkl"))
    if not results:
        return None
    try:
        with open(results[0], "rb") as f:
            outcome, value = pickle.load(f)   # written by this sweep's own trusted job process
    except Exception:  # noqa: BLE001 - unreadable: fall back to the logs
        return None
    if outcome == "error":
        return "failed", error_excerpt(str(value))
    status = getattr(getattr(value, "status", None), "name", "COMPLETED")
    if status == "FAILED":
        return "failed", f"{type(value._return_value).__name__}: {value._return_value}"[:400]
    return "completed", ""


def _from_logs(err: str) -> tuple[str, str]:
    ends = re.findall(r"\*\*\* (?:JOB|STEP) \S+ ON \S+ CANCELLED AT \S+( DUE TO [A-Z ]+)?", err)
    last = ends[-1].strip() if ends else None
    if last == "DUE TO TIME LIMIT":
        return "timeout", "hit its time limit"
    if ends and last != "DUE TO JOB REQUEUE":
        return "cancelled", "cancelled (scancel)" if not last else f"cancelled {last.lower()}"
    if "Exited with exit code" in err or "Traceback" in err:
        return "failed", error_excerpt(err)
    return "unknown", error_excerpt(err)


def _overrides(folder: Path) -> list[str]:
    pkls = sorted(folder.glob("*_submitted.pkl"))
    if not pkls:
        return []
    try:
        with open(pkls[0], "rb") as f:
            delayed = pickle.load(f)
        return [str(o) for o in delayed.args[0]]
    except Exception:  # noqa: BLE001 - the run dir's .hydra/overrides.yaml says it too
        return []


def sacct(job_ids: list[str]) -> dict[str, tuple[str, int]]:
    """job id -> (final sacct state, requeues); empty when sacct is missing or does not answer."""
    if not job_ids or shutil.which("sacct") is None:
        return {}
    arrays = sorted({j.split("_")[0] for j in job_ids})
    try:
        out = subprocess.run(["sacct", "-n", "-P", "-X", "-D", "-j", ",".join(arrays), "-o", "JobID,State"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if out.returncode != 0:
        return {}
    seen: dict[str, tuple[str, int]] = {}
    for line in out.stdout.splitlines():
        parts = line.split("|")
        if len(parts) < 2:
            continue
        job, state = parts[0], parts[1].split()[0] if parts[1] else "UNKNOWN"
        prior = seen.get(job, ("", 0))
        seen[job] = (state, prior[1] + (state == "REQUEUED"))
    return seen


def read_jobs(sweep_dir: Path, use_sacct: bool = True) -> list[Job]:
    root = Path(sweep_dir) / ".submitit"
    if not root.is_dir():
        return []
    folders = [p for p in root.iterdir() if p.is_dir() and any(p.glob("*_submitted.pkl"))]
    accounting = sacct([p.name for p in folders]) if use_sacct else {}
    jobs = []
    for folder in folders:
        _, err = _logs(folder)
        result = _from_result(folder)
        status, detail = result if result is not None else _from_logs(err)
        requeues = len(set(re.findall(r"CANCELLED AT (\S+) DUE TO JOB REQUEUE", err)))
        if folder.name in accounting:
            state, sacct_requeues = accounting[folder.name]
            requeues = max(requeues, sacct_requeues)
            if result is None:      # the result pickle is the job's own last word; else SLURM's
                status = SACCT_WORDS.get(state, state.lower())
                if status == "cancelled":
                    detail = "cancelled (scancel or an administrator)"
                elif status not in ("running", "pending", "requeued"):
                    detail = detail or error_excerpt(err)
        index = folder.name.split("_")[1] if "_" in folder.name else None
        jobs.append(Job(job_id=folder.name, folder=folder, index=int(index) if index and index.isdigit() else None,
                        status=status, detail=detail, overrides=_overrides(folder), requeues=requeues))
    jobs.sort(key=lambda j: (j.job_id.split("_")[0], j.index if j.index is not None else -1))
    return jobs
