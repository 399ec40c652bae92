"""What each job did, kept across server restarts: its runs recorded, failed (with the reason) and cancelled.

A job used to say only "failed" when one of its runs failed after another was recorded, and its history went with
the server process. Now, when a job ends, ``JobRunner`` asks the run registry which runs the job made and keeps the
job (its kind and key too, so pages still find it) and that report in the workspace's SQLite database (table ``jobs``
beside ``runs``); a restarted server lists the past jobs again, and a job the server stopped in the middle reads as
interrupted.

Which runs a job made: the runner's single worker runs one job at a time, so the runs this process created between
the job's start and its end are exactly the job's (``RunRegistry.runs_created``): no bookkeeping inside the engine.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.base.fileio import disk_errors
from core.runs.registry import RunRegistry, pid_alive

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    error TEXT,
    report TEXT,
    pid INTEGER,
    host TEXT,
    kind TEXT NOT NULL DEFAULT 'other',
    key TEXT NOT NULL DEFAULT ''
);
"""
# Columns added after the table first shipped: a database made before them gains them on open (ALTER TABLE ... ADD
# COLUMN keeps every row; the default is what those older jobs were: kind "other", no key).
_ADDED_COLUMNS = {"kind": "TEXT NOT NULL DEFAULT 'other'", "key": "TEXT NOT NULL DEFAULT ''"}
INTERRUPTED = "The server stopped before this job finished (restart or crash); its recorded runs are kept."


def job_report(registry: RunRegistry, *, started_at: float, finished_at: float, pid: int | None = None) -> dict:
    """The runs this process created between ``started_at`` and ``finished_at``, by outcome.

    Returns
    -------
    dict
        ``recorded`` (completed run ids), ``failed`` ([run id, reason]), ``cancelled`` and ``interrupted`` (run
        ids), ``datasets`` (dataset keys of the runs, first seen first).
    """
    runs = registry.runs_created(
        pid=os.getpid() if pid is None else pid, host=socket.gethostname(), since=started_at, until=finished_at
    )
    return {
        "recorded": [r["id"] for r in runs if r["status"] == "completed"],
        "failed": [[r["id"], r["error"] or "no reason recorded"] for r in runs if r["status"] == "failed"],
        "cancelled": [r["id"] for r in runs if r["status"] == "cancelled"],
        "interrupted": [r["id"] for r in runs if r["status"] == "interrupted"],
        "datasets": list(dict.fromkeys(r["dataset_key"] for r in runs)),
    }


def _alive(pid: int | None, host: str | None) -> bool:
    """Whether the process that ran a job is still there (another server on this workspace may be running it)."""
    if pid is None or host != socket.gethostname():
        return host != socket.gethostname() and host is not None  # another machine's job: not ours to judge
    return pid_alive(pid)


class JobHistory:
    """Finished (and started) jobs in the ``jobs`` table of the SQLite file at ``path`` (the workspace's runs
    database)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        with self._connect() as conn:
            conn.executescript(_SCHEMA)
            present = {row["name"] for row in conn.execute("PRAGMA table_info(jobs)")}
            for name, declaration in _ADDED_COLUMNS.items():
                if name not in present:
                    try:
                        conn.execute(f"ALTER TABLE jobs ADD COLUMN {name} {declaration}")
                    except sqlite3.OperationalError as exc:  # another server on this workspace added it just now
                        if "duplicate column" not in str(exc):
                            raise

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with disk_errors(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            try:
                conn.row_factory = sqlite3.Row
                conn.execute("PRAGMA journal_mode=WAL")
                yield conn
            finally:
                conn.close()

    def save(self, job) -> None:
        """Insert or update ``job`` (a ``core.jobs.runner.Job``) with its ``report``."""
        with self._connect() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO jobs (id, title, kind, key, status, created_at, started_at, finished_at, error,"
                " report, pid, host) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.id,
                    job.title,
                    job.kind,
                    job.key,
                    job.status,
                    job.created_at,
                    job.started_at,
                    job.finished_at,
                    job.error,
                    json.dumps(job.report) if job.report is not None else None,
                    os.getpid(),
                    socket.gethostname(),
                ),
            )

    def load(self, *, limit: int = 50) -> list[dict]:
        """The newest ``limit`` jobs, newest first; one left running by a process that is gone reads as failed,
        with ``INTERRUPTED`` as its reason (and is saved so)."""
        with self._connect() as conn:
            rows = [dict(r) for r in conn.execute("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,))]
        for row in rows:
            row["report"] = json.loads(row["report"]) if row["report"] else None
            if row["status"] in ("queued", "running", "cancelling") and not _alive(row["pid"], row["host"]):
                row["status"], row["error"] = "failed", INTERRUPTED
                row["finished_at"] = row["finished_at"] or time.time()
                with self._connect() as conn:
                    conn.execute(
                        "UPDATE jobs SET status=?, error=?, finished_at=? WHERE id=?",
                        (row["status"], row["error"], row["finished_at"], row["id"]),
                    )
        return rows
