"""Background jobs with progress: long work runs here, never in a page's script thread.

One ``JobRunner`` per server process (the dashboard keeps it in ``st.cache_resource``) owns one
worker thread and a FIFO queue, so two launches never fight over one GPU; every teammate's page
sees the same jobs. A page polls ``runner.jobs()`` for snapshots; closing or refreshing a tab
does not touch the work. Cancelling a running job marks it ``cancelling`` at once (what the job card
shows) and sets a flag that the job's progress callback turns into ``CancelledError`` at the next
progress report (feature extraction reports every batch), so the job stops within a batch and its run
is recorded as cancelled. Job ids come from a counter file in the workspace, so they do not repeat when
the server restarts (run ids, from the registry, never did).
"""

from __future__ import annotations

import copy
import fcntl
import os
import queue
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.base.errors import CancelledError, FlowerProbeError
from core.base.fileio import atomic_write_bytes, disk_errors
from core.base.progress import ProgressEvent


@dataclass
class Job:
    id: int
    title: str
    status: str = "queued"  # queued -> running -> (cancelling ->) completed, failed or cancelled
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
        return self.status in ("queued", "running", "cancelling")


JobTarget = Callable[["JobContext"], Any]


class JobContext:
    """What a job's function gets: a progress callback that also checks for cancellation."""

    def __init__(self, runner: JobRunner, job: Job, cancel: threading.Event) -> None:
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


JOB_COUNTER_FILENAME = "jobs.counter"  # in the workspace: the last job id given


class JobIds:
    """Job ids that never repeat: the last one given is kept in ``path``, behind an exclusive lock, so
    a restarted server (or a second server on the same workspace) carries on from it. Without a path
    (tests, scripts) ids count from 1 in memory."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = None if path is None else Path(path)
        self._last = 0

    def next(self) -> int:
        if self.path is None:
            self._last += 1
            return self._last
        with disk_errors(self.path):  # a full or read-only workspace: the message every write gives
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
                try:
                    last = int(self.path.read_text(encoding="ascii").strip() or 0)
                except (FileNotFoundError, ValueError):
                    last = 0  # a first start, or a file edited by hand
                atomic_write_bytes(self.path, f"{last + 1}\n".encode("ascii"))
        return last + 1


class JobRunner:
    """A FIFO of jobs run one at a time by a daemon worker thread.

    ``counter_path``: the file keeping the last job id (``<workspace>/jobs.counter`` in the dashboard);
    None counts from 1 in memory.
    """

    def __init__(self, *, counter_path: str | os.PathLike | None = None) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[int, Job] = {}
        self._cancels: dict[int, threading.Event] = {}
        self._queue: queue.Queue[tuple[Job, JobTarget]] = queue.Queue()
        self._ids = JobIds(counter_path)
        self._worker = threading.Thread(target=self._work, name="flower-probe-jobs", daemon=True)
        self._worker.start()

    def submit(self, title: str, target: JobTarget) -> Job:
        """Queue ``target(context)``; returns a snapshot of the queued job."""
        with self._lock:
            job = Job(id=self._ids.next(), title=title)
            self._jobs[job.id] = job
            self._cancels[job.id] = threading.Event()
        self._queue.put((job, target))
        return self.get(job.id)

    def cancel(self, job_id: int) -> None:
        """Cancel a queued job now, or mark a running one ``cancelling`` until its next progress report stops it."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or not job.active:
                return
            self._cancels[job_id].set()
            if job.status == "queued":
                job.status, job.finished_at, job.error = "cancelled", time.time(), "Cancelled before it started."
            elif job.status == "running":
                job.status = "cancelling"

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
    """A job target running ``core.probing.experiment.run_comparison`` with live progress and per-run bookkeeping."""
    from core.probing.experiment import BackboneChoice, run_comparison

    def target(context: JobContext) -> list[int]:
        started = []

        def on_run_start(config) -> None:
            started.append(config)
            label = BackboneChoice(config.backbone, config.weights).label
            context.set_current(f"{label}, split {config.split} (run {len(started)})")

        records = run_comparison(
            **comparison_kwargs,
            progress=context.progress,
            on_run_start=on_run_start,
            on_run=lambda r: context.add_run(r["id"]),
        )
        return [r["id"] for r in records]

    return target


def extraction_job(
    *,
    dataset: str,
    backbone: str,
    workspace,
    weights: str = "pretrained",
    device: str = "auto",
    precision: str = "auto",
) -> JobTarget:
    """A job target extracting and caching every feature variant of ``backbone`` for ``dataset`` (a dataset key).

    For the Health page and for Classify when a run's features are missing. Returns a summary dict:
    ``images`` (decoded), ``skipped``, ``from_cache``, ``cache_path``.
    """
    from core.data.datasets import load_dataset
    from core.features.extract import extract_features

    def target(context: JobContext) -> dict:
        context.set_current(f"{backbone} ({weights}) features of {dataset}")
        result = extract_features(
            load_dataset(dataset, workspace, progress=context.progress),
            backbone,
            workspace=workspace,
            weights=weights,
            device=device,
            precision=precision,
            progress=context.progress,
        )
        return {
            "images": len(result.rows),
            "skipped": len(result.skipped),
            "from_cache": result.from_cache,
            "cache_path": str(result.cache_path),
        }

    return target


def probe_job(**suite_kwargs) -> JobTarget:
    """A job target running ``core.probing.suite.run_probe_suite`` (every run recorded as it finishes) with live
    progress.
    """
    from core.probing.suite import run_probe_suite

    def target(context: JobContext) -> list[int]:
        context.set_current("probe suite")
        records = run_probe_suite(**suite_kwargs, progress=context.progress, on_run=lambda r: context.add_run(r["id"]))
        return [r["id"] for r in records]

    return target


def progress_job(function: Callable[..., Any], **kwargs) -> JobTarget:
    """A job target calling ``function(**kwargs, progress=...)``, for dataset preparation and the like."""

    def target(context: JobContext) -> Any:
        return function(**kwargs, progress=context.progress)

    return target


def preset_job(preset, *, workspace) -> JobTarget:
    """A job target running a ready-made comparison (``core.probing.presets.ComparisonPreset``): the reference head,
    then its ``probe_protocols`` on the features the first part cached (seconds), so the demo answers by protocol.
    """
    comparison, probes = comparison_job(**preset.comparison_kwargs(), workspace=workspace), None
    if preset.probe_kwargs() is not None:
        probes = probe_job(**preset.probe_kwargs(), workspace=workspace)

    def target(context: JobContext) -> list[int]:
        run_ids = comparison(context)
        if probes is not None:
            run_ids = [*run_ids, *probes(context)]
        return run_ids

    return target
