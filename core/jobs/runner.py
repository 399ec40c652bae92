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
import dataclasses
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

# What sort of work a job is (``Job.kind``): pages find their jobs by kind and key, never by parsing a title.
JOB_KINDS = (
    "comparison",  # a comparison (Train, Home's ready-made ones): core.probing.experiment.run_comparison
    "probe",  # a probe suite (core.probing.suite)
    "prepare",  # preparing a dataset; key: the dataset key
    "features",  # extracting a backbone's features; key: what the page asked for (a run, a health choice)
    "health",  # a health analysis; key: the health choice
    "health-features",  # the features a health analysis needs; key: the health choice
    "map",  # a map or its sprite sheets / thumbnails; key: the map's cache key
    "patches",  # patch features of photos; key: the inputs' key
    "cost",  # measuring backbones' cost
    "export",  # exporting a run as a deployable bundle (core.bundle.export); key: the run id
    "other",  # anything else (scripts, tests)
)


@dataclass
class Job:
    id: int
    title: str  # for people: job cards and the sidebar show it; nothing parses it
    kind: str = "other"  # one of JOB_KINDS
    key: str = ""  # which work of its kind (a dataset key, a run id, a cache key): the same work, the same key
    status: str = "queued"  # queued -> running -> (cancelling ->) completed, failed or cancelled
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    stage: ProgressEvent | None = None  # the latest progress event (a "train" one while a head trains)
    current: str = ""  # what is running now, e.g. "resnet50, split 1"
    epochs: list[dict] = field(default_factory=list)  # per-epoch metrics as they arrive, tagged with `current`
    run_ids: list[int] = field(default_factory=list)
    result: Any = None
    error: str | None = None
    # What the job did, once it ended (core.jobs.history.job_report): runs recorded, failed with the reason,
    # cancelled, interrupted, and their datasets. None while it runs, or without a registry to ask.
    report: dict | None = None
    retry_of: int | None = None  # the failed or cancelled job this one runs again

    @property
    def active(self) -> bool:
        return self.status in ("queued", "running", "cancelling")


JobTarget = Callable[["JobContext"], Any]


def _snapshot(job: Job) -> Job:
    """A copy of ``job`` that later progress does not change; its ``result`` is shared, not copied: a result may hold
    what cannot be copied (a map job's FeatureMap keeps its fitted model, with locks), and it no longer changes."""
    return copy.deepcopy(job, memo={id(job.result): job.result})


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

    def __init__(
        self, *, counter_path: str | os.PathLike | None = None, registry_path: str | os.PathLike | None = None
    ) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[int, Job] = {}
        self._cancels: dict[int, threading.Event] = {}
        self._targets: dict[int, JobTarget] = {}  # kept for retry (this process only: a target is code)
        self._queue: queue.Queue[tuple[Job, JobTarget]] = queue.Queue()
        self._ids = JobIds(counter_path)
        # registry_path: the workspace's runs database; jobs then report their runs and are kept across restarts.
        self._registry_path = None if registry_path is None else Path(registry_path)
        self._history = None
        if self._registry_path is not None:
            from core.jobs.history import JobHistory

            self._history = JobHistory(self._registry_path)
            for row in reversed(self._history.load()):
                self._jobs[row["id"]] = Job(
                    **{k: row[k] for k in ("id", "title", "status", "created_at", "started_at", "finished_at")},
                    kind=row["kind"] if row["kind"] in JOB_KINDS else "other",  # a kind this version no longer has
                    key=row["key"],
                    error=row["error"],
                    report=row["report"],
                )
        self._worker = threading.Thread(target=self._work, name="flower-probe-jobs", daemon=True)
        self._worker.start()

    def submit(
        self, title: str, target: JobTarget, *, kind: str = "other", key: str = "", retry_of: int | None = None
    ) -> Job:
        """Queue ``target(context)`` as a job of ``kind`` (``JOB_KINDS``) for the work ``key``; returns a snapshot."""
        if kind not in JOB_KINDS:
            raise FlowerProbeError(f"kind must be one of {', '.join(JOB_KINDS)}, got {kind!r}.")
        with self._lock:
            job = Job(id=self._ids.next(), title=title, kind=kind, key=str(key), retry_of=retry_of)
            self._jobs[job.id] = job
            self._cancels[job.id] = threading.Event()
            self._targets[job.id] = target
            self._save(job)
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

    def can_retry(self, job_id: int) -> bool:
        """A failed or cancelled job of this server process (its work is still known) can run again."""
        with self._lock:
            job = self._jobs.get(job_id)
            return job is not None and job.status in ("failed", "cancelled") and job_id in self._targets

    def retry(self, job_id: int) -> Job:
        """Queue a failed or cancelled job's work again as a new job (a probe suite then records only the runs it
        lacks); ``FlowerProbeError`` when the job cannot be retried (a job from before a restart: start it again)."""
        if not self.can_retry(job_id):
            raise FlowerProbeError(
                f"job_id {job_id} cannot be retried: only a failed or cancelled job of this server can; start the "
                "work again from its page."
            )
        with self._lock:
            job, target = self._jobs[job_id], self._targets[job_id]
            title, kind, key = job.title, job.kind, job.key
        return self.submit(title, target, kind=kind, key=key, retry_of=job_id)

    def _save(self, job: Job) -> None:
        # Best effort: a job's history is not worth failing the job for (a full disk shows on the next write).
        if self._history is not None:
            try:
                self._history.save(job)
            except FlowerProbeError:
                traceback.print_exc()

    def _report(self, job: Job) -> dict | None:
        if self._registry_path is None or job.started_at is None:
            return None
        from core.jobs.history import job_report
        from core.runs.registry import RunRegistry

        try:
            return job_report(
                RunRegistry(self._registry_path), started_at=job.started_at, finished_at=job.finished_at or time.time()
            )
        except FlowerProbeError:
            traceback.print_exc()
            return None

    def get(self, job_id: int) -> Job:
        with self._lock:
            if job_id not in self._jobs:
                raise FlowerProbeError(f"There is no job {job_id}.")
            return _snapshot(self._jobs[job_id])

    def jobs(self) -> list[Job]:
        """Snapshots of every job of this server process, newest first."""
        with self._lock:
            return [_snapshot(j) for j in sorted(self._jobs.values(), key=lambda j: j.id, reverse=True)]

    def find(self, *, kinds: tuple[str, ...] = (), key: str | None = None, active: bool | None = None) -> list[Job]:
        """Snapshots of the jobs of ``kinds`` (every kind when empty) for ``key`` (any when None), newest first;
        ``active`` True keeps queued and running ones, False finished ones, None both."""
        return [
            job
            for job in self.jobs()
            if (not kinds or job.kind in kinds)
            and (key is None or job.key == str(key))
            and (active is None or job.active == active)
        ]

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
                    self._save(job)
                    continue
                job.status, job.started_at = "running", time.time()
                self._save(job)
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
            finished_at = time.time()
            report = self._report(dataclasses.replace(job, finished_at=finished_at))
            with self._lock:
                job.status, job.error, job.result, job.finished_at = status, error, result, finished_at
                job.report = report
                self._save(job)


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
    backbone,
    workspace,
    weights: str | None = None,
    device: str = "auto",
    precision: str = "auto",
) -> JobTarget:
    """A job target extracting and caching every feature variant of ``backbone`` for ``dataset`` (a dataset key).

    For the Health page and for Classify when a run's features are missing. Returns a summary dict:
    ``images`` (decoded), ``skipped``, ``from_cache``, ``cache_path``. ``backbone`` is the resolved record
    (``core.backbones.resolved``) or a spec, resolved here once when the job is made (an unknown name fails then,
    on the page, not in the job); ``weights`` as ``extract_features`` takes it.
    """
    from core.backbones.resolved import resolve_backbone
    from core.data.datasets import load_dataset
    from core.features.extract import extract_features

    backbone = resolve_backbone(backbone, weights=weights)

    def target(context: JobContext) -> dict:
        context.set_current(f"{backbone.name} ({backbone.weights}) features of {dataset}")
        result = extract_features(
            load_dataset(dataset, workspace, progress=context.progress),
            backbone,
            workspace=workspace,
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
