"""Background jobs with progress: long work runs here, never in a page's script thread.

One ``JobRunner`` per server process (the dashboard keeps it in ``st.cache_resource``) owns one
worker thread and a FIFO queue, so two launches never fight over one GPU; every teammate's page
sees the same jobs. A page polls ``runner.jobs()`` for snapshots; closing or refreshing a tab
does not touch the work. Cancelling sets a flag that the job's progress callback turns into
``CancelledError`` at the next progress report, so the run is recorded as cancelled.
"""

from __future__ import annotations

import copy
import itertools
import queue
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import CancelledError, FlowerProbeError
from .progress import ProgressCallback, ProgressEvent

JOB_STATUSES = ("queued", "running", "completed", "failed", "cancelled")


@dataclass
class Job:
    id: int
    title: str
    status: str = "queued"
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    stage: ProgressEvent | None = None  # the latest non-training progress event
    current: str = ""  # what is running now, e.g. "resnet50, split 1"
    epochs: list[dict] = field(default_factory=list)  # per-epoch metrics as they arrive, tagged with `current`
    run_ids: list[int] = field(default_factory=list)
    result: Any = None
    error: str | None = None

    @property
    def active(self) -> bool:
        return self.status in ("queued", "running")


JobTarget = Callable[["JobContext"], Any]


class JobContext:
    """What a job's function gets: a progress callback that also checks for cancellation."""

    def __init__(self, runner: "JobRunner", job: Job, cancel: threading.Event) -> None:
        self._runner = runner
        self._job = job
        self._cancel = cancel

    def progress(self, event: ProgressEvent) -> None:
        if self._cancel.is_set():
            raise CancelledError("Cancelled by the user.")
        with self._runner._lock:
            if event.stage == "train":
                self._job.epochs.append({"run": self._job.current, **event.metrics})
            else:
                self._job.stage = event

    def set_current(self, description: str) -> None:
        with self._runner._lock:
            self._job.current = description

    def add_run(self, run_id: int) -> None:
        with self._runner._lock:
            self._job.run_ids.append(run_id)


class JobRunner:
    """A FIFO of jobs run one at a time by a daemon worker thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[int, Job] = {}
        self._cancels: dict[int, threading.Event] = {}
        self._queue: queue.Queue[tuple[Job, JobTarget]] = queue.Queue()
        self._ids = itertools.count(1)
        self._worker = threading.Thread(target=self._work, name="flower-probe-jobs", daemon=True)
        self._worker.start()

    def submit(self, title: str, target: JobTarget) -> Job:
        """Queue ``target(context)``; returns a snapshot of the queued job."""
        with self._lock:
            job = Job(id=next(self._ids), title=title)
            self._jobs[job.id] = job
            self._cancels[job.id] = threading.Event()
        self._queue.put((job, target))
        return self.get(job.id)

    def cancel(self, job_id: int) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or not job.active:
                return
            self._cancels[job_id].set()
            if job.status == "queued":
                job.status, job.finished_at, job.error = "cancelled", time.time(), "Cancelled before it started."

    def get(self, job_id: int) -> Job:
        with self._lock:
            if job_id not in self._jobs:
                raise FlowerProbeError(f"There is no job {job_id}.")
            return copy.deepcopy(self._jobs[job_id])

    def jobs(self) -> list[Job]:
        """Snapshots of every job of this server process, newest first."""
        with self._lock:
            return [copy.deepcopy(j) for j in sorted(self._jobs.values(), key=lambda j: j.id, reverse=True)]

    def wait(self, job_id: int, *, timeout_s: float) -> Job:
        """Block until the job ends (for tests and scripts); raises TimeoutError past ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job = self.get(job_id)
            if not job.active:
                return job
            time.sleep(0.05)
        raise TimeoutError(f"job {job_id} still {self.get(job_id).status} after {timeout_s} s")

    def _work(self) -> None:
        while True:
            job, target = self._queue.get()
            with self._lock:
                if job.status == "cancelled":
                    continue
                job.status, job.started_at = "running", time.time()
            context = JobContext(self, job, self._cancels[job.id])
            status, error, result = "completed", None, None
            try:
                result = target(context)
            except CancelledError:
                status, error = "cancelled", "Cancelled by the user."
            except FlowerProbeError as exc:
                status, error = "failed", str(exc)
            except Exception as exc:  # a bug: keep the worker alive, show the reason, keep the trace in the log
                status, error = "failed", f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
            with self._lock:
                job.status, job.error, job.result, job.finished_at = status, error, result, time.time()


def comparison_job(**comparison_kwargs) -> JobTarget:
    """A job target running ``core.experiment.run_comparison`` with live progress and per-run bookkeeping."""
    from .experiment import run_comparison

    def target(context: JobContext) -> list[int]:
        def on_run_start(config) -> None:
            weights = " (random weights)" if config.weights == "random" else ""
            context.set_current(f"{config.backbone}{weights}, split {config.split}")

        records = run_comparison(
            **comparison_kwargs, progress=context.progress, on_run_start=on_run_start, on_run=lambda r: context.add_run(r["id"])
        )
        return [r["id"] for r in records]

    return target


def progress_job(function: Callable[..., Any], **kwargs) -> JobTarget:
    """A job target calling ``function(**kwargs, progress=...)``, for dataset preparation and the like."""

    def target(context: JobContext) -> Any:
        return function(**kwargs, progress=context.progress)

    return target
