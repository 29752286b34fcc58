"""The batch driver: skip what is finished, hand the rest to a pool's workers, retry, record, write.

Only the driver writes into the output folder, and every write is atomic, so a killed worker or driver
leaves no partial PNG: an output is finished exactly when its file exists with its job's key inside.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ClipstudioError
from ..images import atomic_write, read_png_settings
from .executors import Executor
from .jobs import Job, JobFile
from .manifest import MANIFEST_NAME, Manifest, latest_by_key

WORKER_DIED = "the worker died while running this job"


@dataclass
class BatchSummary:
    """What a run did: counts, the seconds it took, and the one-line error of each failed job."""

    total: int
    skipped: int = 0
    done: int = 0
    failed: int = 0
    retried: int = 0
    workers_lost: int = 0
    seconds: float = 0.0
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def jobs_per_minute(self) -> float:
        return 60.0 * (self.done + self.failed) / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (f"{self.done} done, {self.failed} failed, {self.skipped} already finished of {self.total} jobs "
                f"in {self.seconds:.1f} s ({self.jobs_per_minute:.1f} jobs/min; {self.retried} retries, "
                f"{self.workers_lost} workers lost)")


def is_finished(job: Job, out_dir: Path) -> bool:
    """True when the job's PNG exists and carries the job's key (an unrelated file is not taken for it)."""
    path = job.output(out_dir)
    if not path.is_file():
        return False
    try:
        return read_png_settings(path).get("farm", {}).get("key") == job.key
    except ClipstudioError:
        return False


def remove_stale_temporaries(out_dir: Path) -> int:
    """Delete the hidden temporaries a driver killed mid-write left (``.NAME.png.XXXX.tmp``)."""
    stale = [p for p in out_dir.rglob(".*.tmp") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def _record(job: Job, out_dir: Path, status: str, **fields: Any) -> dict[str, Any]:
    return {"key": job.key, "status": status, "backend": job.backend, "prompt": job.prompt, "seed": job.seed,
            "recipe": job.recipe, "output": str(job.output(out_dir).relative_to(out_dir)), **fields}


def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc="batch", unit="job", dynamic_ncols=True)


class _Run:
    """One pass of the scheduling loop (state kept together so each step stays short)."""

    def __init__(self, job_file: JobFile, out_dir: Path, executor: Executor, manifest: Manifest,
                 summary: BatchSummary, progress: bool, on_event: Callable[[dict[str, Any]], Any] | None):
        self.job_file, self.out_dir, self.executor, self.manifest = job_file, out_dir, executor, manifest
        self.summary, self.on_event = summary, on_event
        self.score_clip = job_file.score_clip
        self.attempts: dict[str, int] = {}
        self.busy: dict[int, Job] = {}
        self.pending: deque[Job] = deque()
        self.progress = progress
        self.bar = None
        self.start = time.perf_counter()

    def submit(self, slot: int) -> None:
        if self.pending:
            job = self.pending.popleft()
            self.attempts[job.key] = self.attempts.get(job.key, 0) + 1
            self.busy[slot] = job
            self.executor.submit(slot, job.message(self.score_clip))

    def run(self, todo: list[Job], workers: int | None) -> None:
        self.pending.extend(todo)
        self.bar = _progress_bar(len(todo), self.progress)
        slots = self.executor.start(min(workers or len(todo), len(todo)))
        for slot in range(slots):
            self.submit(slot)
        while self.busy:
            for slot, result in self.executor.wait(timeout=1.0):
                job = self.busy.pop(slot, None)
                if job is not None:
                    record = self.finish(job, result)
                    self.submit(slot)
                    if self.on_event is not None:
                        self.on_event(record)

    def finish(self, job: Job, result: dict[str, Any] | None) -> dict[str, Any]:
        """Write a finished job's PNG, or requeue a failed attempt, or record it failed; one manifest line."""
        attempt = self.attempts[job.key]
        if result is None:
            self.summary.workers_lost += 1
            result = {"status": "error", "error": WORKER_DIED, "seconds": None}
        fields = {"attempt": attempt, "seconds": result.get("seconds"), "host": result.get("host"),
                  "pid": result.get("pid")}
        if result["status"] == "done":
            atomic_write(_output_dir(job, self.out_dir), lambda handle: handle.write(result["png"]))
            record = _record(job, self.out_dir, "done", scores=result.get("scores", {}), **fields)
            self.summary.done += 1
        elif attempt <= self.job_file.retries:
            record = _record(job, self.out_dir, "retry", error=result["error"], **fields)
            self.summary.retried += 1
            self.pending.append(job)
        else:
            record = _record(job, self.out_dir, "failed", error=result["error"], **fields)
            self.summary.failed += 1
            self.summary.errors[job.key] = result["error"]
        self.manifest.append(record)
        minutes = (time.perf_counter() - self.start) / 60
        self.bar.set_postfix(done=self.summary.done, failed=self.summary.failed, refresh=False,
                             jobs_per_min=f"{(self.summary.done + self.summary.failed) / max(minutes, 1e-9):.1f}")
        self.bar.update(0 if record["status"] == "retry" else 1)
        return record


def _output_dir(job: Job, out_dir: Path) -> Path:
    path = job.output(out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def run_batch(job_file: JobFile, out_dir: str | Path, executor: Executor, *, workers: int | None = None,
              progress: bool = False, on_event: Callable[[dict[str, Any]], Any] | None = None) -> BatchSummary:
    """Run every job of ``job_file`` whose output is not finished yet; returns the counts.

    ``on_event(record)`` is called in the driver after each manifest line (tests kill workers from it). The
    pool is closed on the way out, also when the driver is interrupted; rerunning finishes what is missing.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    summary = BatchSummary(total=len(job_file.jobs))
    start = time.perf_counter()
    with Manifest(out_dir / MANIFEST_NAME) as manifest:
        known = latest_by_key(manifest.records())
        todo = []
        for job in job_file.jobs:
            if not is_finished(job, out_dir):
                todo.append(job)
                continue
            summary.skipped += 1
            if known.get(job.key, {}).get("status") != "done":  # written, but the driver died before its line
                manifest.append(_record(job, out_dir, "done", recovered=True))
        if todo:
            state = _Run(job_file, out_dir, executor, manifest, summary, progress, on_event)
            try:
                state.run(todo, workers)
            finally:
                if state.bar is not None:
                    state.bar.close()
                executor.close()
    summary.seconds = time.perf_counter() - start
    return summary
