"""The run registry: every experiment run, its per-epoch metrics and per-image test predictions, in SQLite.

A run is inserted as ``running`` before any work and finished in one transaction together with its
epochs and predictions, so a reader sees either a complete success or no success at all. A run left
``running`` by a process that no longer exists (kill -9, power loss) is marked ``interrupted`` the
next time the registry is opened. WAL mode and a generous busy timeout let several processes write.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from core.backbones.variants import default_variant
from core.base.errors import FlowerProbeError
from core.base.fileio import disk_errors

STATUSES = ("running", "completed", "failed", "cancelled", "interrupted")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id TEXT,
    status TEXT NOT NULL CHECK (status IN ('running','completed','failed','cancelled','interrupted')),
    created_at REAL NOT NULL,
    finished_at REAL,
    dataset_key TEXT NOT NULL,
    dataset_name TEXT NOT NULL,
    dataset_fingerprint TEXT NOT NULL,
    synthetic INTEGER NOT NULL DEFAULT 0,
    class_names TEXT NOT NULL,
    split TEXT NOT NULL,
    backbone TEXT NOT NULL,
    weights TEXT NOT NULL,
    weights_tag TEXT,
    seed INTEGER NOT NULL,
    config TEXT NOT NULL,
    device TEXT,
    precision TEXT,
    versions TEXT NOT NULL,
    timings TEXT,
    best_epoch INTEGER,
    test_acc REAL,
    test_loss REAL,
    per_class_acc TEXT,
    confusion TEXT,
    skipped TEXT,
    features_path TEXT,
    head_path TEXT,
    error TEXT,
    pid INTEGER,
    host TEXT
);
CREATE TABLE IF NOT EXISTS epochs (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    train_loss REAL, train_acc REAL, valid_loss REAL, valid_acc REAL,
    PRIMARY KEY (run_id, epoch)
);
CREATE TABLE IF NOT EXISTS predictions (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    row INTEGER NOT NULL,
    path TEXT NOT NULL,
    label INTEGER NOT NULL,
    predicted INTEGER NOT NULL,
    confidence REAL NOT NULL,
    probabilities TEXT NOT NULL,
    PRIMARY KEY (run_id, row)
);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs(status);
CREATE TABLE IF NOT EXISTS run_groups (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running','completed','failed','cancelled','interrupted')),
    created_at REAL NOT NULL,
    finished_at REAL,
    planned INTEGER NOT NULL,
    config TEXT NOT NULL,
    error TEXT,
    pid INTEGER,
    host TEXT
);
CREATE INDEX IF NOT EXISTS run_groups_by_key ON run_groups(key);
"""
# A group is one suite (``core.probing.suite``; ``compare`` is one too): its runs share ``runs.group_id``. Groups made
# before this table existed have no row here and read as they always did (a group id on their runs, no status).
GROUP_KINDS = ("suite", "compare")
# The statuses a group is resumed from: the same suite run again records only the runs it lacks.
RESUMABLE = ("failed", "cancelled", "interrupted")

_JSON_COLUMNS = (
    "class_names",
    "config",
    "versions",
    "timings",
    "per_class_acc",
    "confusion",
    "skipped",
    "metrics",
    "tags",
)
# Columns added since the first schema (the probes, issue 10); a registry that lacks them gains them when opened.
_ADDED_COLUMNS = (
    (
        "protocol",
        "TEXT NOT NULL DEFAULT 'mlp'",
    ),  # core.probing.probes.PROTOCOLS; runs made before probes were the reference MLP head
    (
        "features",
        "TEXT",
    ),  # the core.backbones.variants name; NULL (runs before variants) reads as the backbone's default variant
    ("shots", "INTEGER"),  # training images per class of a few-shot run; NULL: the whole training part
    ("metrics", "TEXT"),  # JSON: test_acc_ci, top5, mean_class_acc, valid_acc, hyperparameter, standardised
    ("title", "TEXT"),  # a name the user gave the run (core.runs.naming.run_name puts it first); NULL: none
    ("tags", "TEXT"),  # JSON list of the user's tags; NULL: none
)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine still exists (one of another user counts: it cannot be signalled)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _row_to_dict(row: sqlite3.Row) -> dict:
    record = dict(row)
    for column in _JSON_COLUMNS:
        if column in record and record[column] is not None:
            record[column] = json.loads(record[column])
    head = (record.get("config") or {}).get("head") or {}
    if record.get("protocol") == "mlp" and head.get("head") == "linear":
        # Recorded before core.probing.probes.REFERENCE_PROTOCOLS: ``compare --head linear`` was written as "mlp".
        record["protocol"] = "reference_linear"
    if record.get("features") is None and "backbone" in record:  # a run from before feature variants: the default one
        record["features"] = default_variant(record["backbone"])
    return record


class RunRegistry:
    """SQLite-backed registry; one short-lived connection per call, so threads and processes can share it."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        with disk_errors(self.path), self._connect() as conn:
            conn.executescript(_SCHEMA)
        self._migrate()
        self.reconcile()

    def _migrate(self) -> None:
        """Add the columns an older registry lacks, in one transaction (two processes opening it race safely)."""
        with self._transaction() as conn:
            present = {row["name"] for row in conn.execute("PRAGMA table_info(runs)")}
            for name, declaration in _ADDED_COLUMNS:
                if name not in present:
                    conn.execute(f"ALTER TABLE runs ADD COLUMN {name} {declaration}")
            conn.execute("CREATE INDEX IF NOT EXISTS runs_by_group ON runs(group_id)")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA synchronous=FULL")
            yield conn
        finally:
            conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with disk_errors(self.path), self._connect() as conn:
            try:
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    # ------------------------------------------------------------------------------------------- writes

    def create_run(
        self,
        *,
        dataset_key: str,
        dataset_name: str,
        dataset_fingerprint: str,
        synthetic: bool,
        class_names: list[str],
        split: str,
        backbone: str,
        weights: str,
        seed: int,
        config: dict,
        versions: dict,
        group_id: str | None = None,
        protocol: str = "mlp",
        features: str | None = None,
        shots: int | None = None,
    ) -> int:
        run = dict(locals())  # every argument, passed on to the insert shared with record_completed_run
        del run["self"]
        with self._transaction() as conn:
            return self._insert_run(conn, run)

    @staticmethod
    def _insert_run(conn: sqlite3.Connection, run: dict) -> int:
        """Insert ``run`` (``create_run``'s arguments by name) as running, made by this process; returns its id."""
        cursor = conn.execute(
            "INSERT INTO runs (group_id, status, created_at, dataset_key, dataset_name, dataset_fingerprint, synthetic,"
            " class_names,"
            " split, backbone, weights, seed, config, versions, pid, host, protocol, features, shots)"
            " VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                run["group_id"],
                time.time(),
                run["dataset_key"],
                run["dataset_name"],
                run["dataset_fingerprint"],
                int(run["synthetic"]),
                json.dumps(run["class_names"]),
                run["split"],
                run["backbone"],
                run["weights"],
                run["seed"],
                json.dumps(run["config"]),
                json.dumps(run["versions"]),
                os.getpid(),
                socket.gethostname(),
                run["protocol"],
                run["features"],
                run["shots"],
            ),
        )
        return int(cursor.lastrowid)

    def complete_run(
        self,
        run_id: int,
        *,
        weights_tag: str,
        device: str,
        precision: str,
        timings: dict,
        best_epoch: int,
        test_acc: float,
        test_loss: float,
        per_class_acc: list,
        confusion: np.ndarray,
        skipped: list,
        features_path: str,
        head_path: str,
        epochs: list[dict],
        predictions: list[tuple[int, str, int, int, float, list[float]]],
        metrics: dict | None = None,
    ) -> None:
        """Record a finished run with its epochs and predictions, all in one transaction.

        ``features_path`` and ``head_path`` are relative to the workspace, each prediction's path relative to
        the dataset's folder (``core.runs.files.stored_path``); ``core.runs.files.RunFiles`` finds the files again.
        """
        result = dict(locals())  # every argument, passed on to the update shared with record_completed_run
        del result["self"], result["run_id"]
        with self._transaction() as conn:
            self._complete_run(conn, run_id, result)

    @staticmethod
    def _complete_run(conn: sqlite3.Connection, run_id: int, result: dict) -> None:
        """Complete run ``run_id`` with ``result`` (``complete_run``'s arguments by name), epochs and predictions."""
        conn.execute(
            "UPDATE runs SET status='completed', finished_at=?, weights_tag=?, device=?, precision=?, timings=?,"
            " best_epoch=?,"
            " test_acc=?, test_loss=?, per_class_acc=?, confusion=?, skipped=?,"
            " features_path=?, head_path=?, metrics=?,"
            " error=NULL WHERE id=?",
            (
                time.time(),
                result["weights_tag"],
                result["device"],
                result["precision"],
                json.dumps(result["timings"]),
                result["best_epoch"],
                result["test_acc"],
                result["test_loss"],
                json.dumps(result["per_class_acc"]),
                json.dumps(np.asarray(result["confusion"]).tolist()),
                json.dumps(result["skipped"]),
                result["features_path"],
                result["head_path"],
                None if result["metrics"] is None else json.dumps(result["metrics"]),
                run_id,
            ),
        )
        conn.executemany(
            "INSERT INTO epochs (run_id, epoch, train_loss, train_acc, valid_loss, valid_acc)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [
                (run_id, e["epoch"], e["train_loss"], e["train_acc"], e["valid_loss"], e["valid_acc"])
                for e in result["epochs"]
            ],
        )
        conn.executemany(
            "INSERT INTO predictions (run_id, row, path, label, predicted, confidence, probabilities)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (run_id, row, path, label, predicted, confidence, json.dumps([round(p, 6) for p in probs]))
                for row, path, label, predicted, confidence, probs in result["predictions"]
            ],
        )

    def record_completed_run(self, *, run: dict, result: dict, head: Callable[[int], str | None] | None = None) -> int:
        """Insert a run that is already finished (a probe on cached features) in one transaction; returns its id.

        ``run`` holds ``create_run``'s arguments, ``result`` ``complete_run``'s (``head_path`` aside). ``head(run_id)``,
        when given, writes the head file inside the transaction and returns its stored path: a failure leaves no run.
        """
        run = {"group_id": None, "protocol": "mlp", "features": None, "shots": None, **run}  # create_run's defaults
        with self._transaction() as conn:
            run_id = self._insert_run(conn, run)
            self._complete_run(conn, run_id, {"metrics": None, **result, "head_path": head(run_id) if head else None})
            return run_id

    def complete_recorded_run(
        self, run_id: int, *, config: dict, result: dict, head: Callable[[int], str | None] | None = None
    ) -> None:
        """Complete run ``run_id`` (created ``running``) with ``result`` (``complete_run``'s arguments, ``head_path``
        aside) and its final ``config``, in one transaction; ``head(run_id)`` writes the head file inside it."""
        with self._transaction() as conn:
            conn.execute("UPDATE runs SET config=? WHERE id=?", (json.dumps(config), run_id))
            self._complete_run(conn, run_id, {"metrics": None, **result, "head_path": head(run_id) if head else None})

    def end_run(self, run_id: int, *, status: str, error: str | None = None) -> None:
        """Mark a run that did not complete: failed, cancelled or interrupted."""
        if status not in STATUSES or status in ("running", "completed"):
            raise FlowerProbeError(f"status must be 'failed', 'cancelled' or 'interrupted', got {status!r}.")
        with self._transaction() as conn:
            conn.execute(
                "UPDATE runs SET status=?, finished_at=?, error=? WHERE id=? AND status='running'",
                (status, time.time(), error, run_id),
            )

    def reconcile(self) -> int:
        """Mark runs and groups of this host whose process is gone as interrupted; returns how many runs."""
        host = socket.gethostname()
        with self._connect() as conn:
            stale = [
                r["id"]
                for r in conn.execute("SELECT id, pid FROM runs WHERE status='running' AND host=?", (host,))
                if r["pid"] is not None and not pid_alive(r["pid"])
            ]
            stale_groups = [
                r["id"]
                for r in conn.execute("SELECT id, pid FROM run_groups WHERE status='running' AND host=?", (host,))
                if r["pid"] is not None and not pid_alive(r["pid"])
            ]
        for group_id in stale_groups:
            self.end_group(
                group_id,
                status="interrupted",
                error="The process running this suite stopped before it finished (killed or crashed).",
            )
        for run_id in stale:
            self.end_run(
                run_id,
                status="interrupted",
                error="The process running this run stopped before it finished (killed or crashed).",
            )
        return len(stale)

    # ------------------------------------------------------------------------------------------- the user's edits

    def rename_run(self, run_id: int, *, title: str | None) -> None:
        """Give run ``run_id`` a name of the user's (``core.runs.naming.run_name`` shows it first); None or blank
        removes it."""
        if title is not None and not isinstance(title, str):
            raise FlowerProbeError(f"title must be text or None, got {type(title).__name__}.")
        title = (title or "").strip() or None
        if title is not None and len(title) > 200:
            raise FlowerProbeError(f"title must be at most 200 characters, got {len(title)}.")
        self._update_one(run_id, "title", title)

    def set_tags(self, run_id: int, *, tags: list[str]) -> None:
        """Replace run ``run_id``'s tags with ``tags`` (blank ones dropped, duplicates once, order kept)."""
        if isinstance(tags, str) or not all(isinstance(t, str) for t in tags):
            raise FlowerProbeError(f"tags must be a list of texts, got {tags!r}.")
        cleaned = list(dict.fromkeys(t.strip() for t in tags if t.strip()))
        too_long = [t for t in cleaned if len(t) > 50]
        if too_long:
            raise FlowerProbeError(f"tags must be at most 50 characters each, got {too_long[0]!r}.")
        self._update_one(run_id, "tags", json.dumps(cleaned) if cleaned else None)

    def _update_one(self, run_id: int, column: str, value: str | None) -> None:
        # column is one of ours ("title", "tags"), never user input.
        with self._transaction() as conn:
            if conn.execute(f"UPDATE runs SET {column}=? WHERE id=?", (value, run_id)).rowcount == 0:
                raise FlowerProbeError(f"run_id must be a recorded run, got {run_id}; the Compare page lists the runs.")

    def delete_runs(self, run_ids: list[int], *, workspace_root: str | os.PathLike) -> list[str]:
        """Delete runs ``run_ids`` with their epochs, predictions and head files; feature caches are kept (other runs
        and later runs read them). A running run is refused. Returns the head files removed (workspace-relative).
        """
        ids = [int(i) for i in run_ids]
        root = Path(workspace_root).resolve()
        with self._transaction() as conn:
            rows = {
                r["id"]: r
                for r in conn.execute(
                    f"SELECT id, status, head_path FROM runs WHERE id IN ({','.join('?' * len(ids))})", ids
                )
            }
            missing = [i for i in ids if i not in rows]
            if missing:
                raise FlowerProbeError(f"run_ids must be recorded runs, got {missing}; the Compare page lists them.")
            running = [i for i in ids if rows[i]["status"] == "running"]
            if running:
                raise FlowerProbeError(f"Runs {running} are still running: cancel their job first, then delete them.")
            conn.executemany("DELETE FROM runs WHERE id=?", [(i,) for i in ids])  # epochs, predictions cascade
        removed = []
        for run_id in ids:
            head = rows[run_id]["head_path"]
            if not head:
                continue
            path = Path(head) if Path(head).is_absolute() else root / head
            # Only files inside this workspace's heads are ours to remove (an old absolute record may point elsewhere).
            if path.resolve().is_relative_to(root) and path.is_file():
                with disk_errors(path):
                    path.unlink()
                removed.append(head)
        return removed

    # ------------------------------------------------------------------------------------------- groups

    def start_group(self, *, kind: str, key: str, planned: int, config: dict) -> tuple[str, bool]:
        """Open the group of a suite whose identity is ``key``; returns (group id, resumed).

        The newest group with the same ``key`` that did not complete (``RESUMABLE``) is taken up again, so the
        caller records only the runs it lacks (``group_run_keys``); otherwise a new group starts. A completed
        group is never reopened: the same suite run after it is a new measurement. One transaction.
        """
        if kind not in GROUP_KINDS:
            raise FlowerProbeError(f"kind must be one of {GROUP_KINDS}, got {kind!r}.")
        self.reconcile()  # a suite killed with kill -9 reads as interrupted, and so resumable, from here on
        with self._transaction() as conn:
            row = conn.execute(
                f"SELECT id FROM run_groups WHERE key=? AND status IN ({','.join('?' * len(RESUMABLE))})"
                " ORDER BY created_at DESC LIMIT 1",
                (key, *RESUMABLE),
            ).fetchone()
            if row is not None:
                conn.execute(
                    "UPDATE run_groups SET status='running', finished_at=NULL, error=NULL, pid=?, host=?, planned=?"
                    " WHERE id=?",
                    (os.getpid(), socket.gethostname(), planned, row["id"]),
                )
                return row["id"], True
            group_id = uuid.uuid4().hex[:12]
            conn.execute(
                "INSERT INTO run_groups (id, kind, key, status, created_at, planned, config, pid, host)"
                " VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?)",
                (group_id, kind, key, time.time(), planned, json.dumps(config), os.getpid(), socket.gethostname()),
            )
            return group_id, False

    def end_group(self, group_id: str, *, status: str, error: str | None = None) -> None:
        """Close a running group: completed, failed, cancelled or interrupted."""
        if status not in STATUSES or status == "running":
            raise FlowerProbeError(
                f"status must be 'completed', 'failed', 'cancelled' or 'interrupted', got {status!r}."
            )
        with self._transaction() as conn:
            conn.execute(
                "UPDATE run_groups SET status=?, finished_at=?, error=? WHERE id=? AND status='running'",
                (status, time.time(), error, group_id),
            )

    def get_group(self, group_id: str) -> dict | None:
        """The group's record with ``recorded`` (its completed runs so far); None for a group from before groups
        had records (its runs still carry the id)."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT g.*, (SELECT COUNT(*) FROM runs r WHERE r.group_id=g.id AND r.status='completed') AS recorded"
                " FROM run_groups g WHERE g.id=?",
                (group_id,),
            ).fetchone()
        if row is None:
            return None
        return {**dict(row), "config": json.loads(row["config"])}

    def list_groups(self, *, limit: int = 100) -> list[dict]:
        """Newest first, each as ``get_group`` gives it."""
        with self._connect() as conn:
            rows = conn.execute("SELECT id FROM run_groups ORDER BY created_at DESC LIMIT ?", (limit,)).fetchall()
        ids = [r["id"] for r in rows]
        return [self.get_group(group_id) for group_id in ids]

    def group_runs(self, group_id: str) -> list[dict]:
        """The group's completed runs, in the order they were recorded."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT * FROM runs WHERE group_id=? AND status='completed' ORDER BY id", (group_id,)
            ).fetchall()
        return [_row_to_dict(r) for r in rows]

    # ------------------------------------------------------------------------------------------- reads

    def list_runs(
        self,
        *,
        status: str | None = None,
        dataset_key: str | None = None,
        limit: int = 500,
        few_shot: bool | None = None,
    ) -> list[dict]:
        """Newest first. Each run as a dict with JSON columns decoded.

        ``few_shot``: None lists every run, False only those trained on the whole training part, True only few-shot
        runs (a probe suite makes a hundred of them per backbone: lists meant for people ask for False).
        """
        clauses, params = [] if few_shot is None else ["shots IS NOT NULL" if few_shot else "shots IS NULL"], []
        if status is not None:
            clauses.append("status=?")
            params.append(status)
        if dataset_key is not None:
            clauses.append("dataset_key=?")
            params.append(dataset_key)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._connect() as conn:
            rows = conn.execute(f"SELECT * FROM runs {where} ORDER BY id DESC LIMIT ?", (*params, limit)).fetchall()
        return [_row_to_dict(r) for r in rows]

    def runs_created(self, *, pid: int, host: str, since: float, until: float) -> list[dict]:
        """Runs process ``pid`` on ``host`` created between ``since`` and ``until`` (Unix times), oldest first: the
        runs of one job (``core.jobs.history``), since the job runner runs one job at a time."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT * FROM runs WHERE pid=? AND host=? AND created_at>=? AND created_at<=? ORDER BY id",
                (pid, host, since, until),
            ).fetchall()
        return [_row_to_dict(r) for r in rows]

    def count_runs(self, *, status: str | None = None, few_shot: bool | None = None) -> int:
        """How many runs there are (``status`` and ``few_shot`` as for ``list_runs``), counted in SQL, no rows read."""
        clauses, params = [] if few_shot is None else ["shots IS NOT NULL" if few_shot else "shots IS NULL"], []
        if status is not None:
            clauses.append("status=?")
            params.append(status)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._connect() as conn:
            return int(conn.execute(f"SELECT COUNT(*) FROM runs {where}", params).fetchone()[0])

    def get_run(self, run_id: int) -> dict:
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            raise FlowerProbeError(f"There is no run with id {run_id}; the Compare page lists the runs.")
        return _row_to_dict(row)

    def epochs(self, run_id: int) -> list[dict]:
        with self._connect() as conn:
            return [dict(r) for r in conn.execute("SELECT * FROM epochs WHERE run_id=? ORDER BY epoch", (run_id,))]

    def predictions(self, run_id: int) -> list[dict]:
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM predictions WHERE run_id=? ORDER BY row", (run_id,)).fetchall()
        return [{**dict(r), "probabilities": json.loads(r["probabilities"])} for r in rows]

    def integrity_check(self) -> str:
        with self._connect() as conn:
            return conn.execute("PRAGMA integrity_check").fetchone()[0]
