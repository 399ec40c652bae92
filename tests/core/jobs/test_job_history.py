"""Jobs that report: runs recorded, failed (with the reason) and cancelled per job, kept across a restart, retried."""

from __future__ import annotations

from core.base.errors import FlowerProbeError
from core.jobs.runner import JobRunner
from core.runs.registry import RunRegistry
from tests.core.runs.test_runs import _complete, _create


def test_a_job_with_a_failed_run_reports_its_recorded_runs_and_keeps_them_after_a_restart(tmp_path):
    path = tmp_path / "runs.sqlite"
    registry = RunRegistry(path)
    outside = _create(registry)  # a run made before the job (by another command): not the job's
    _complete(registry, outside)
    attempts = []

    def target(context):
        attempts.append(len(attempts))
        first = _create(registry)
        _complete(registry, first)
        context.add_run(first)
        second = _create(registry, backbone="efficientnet_lite0")
        registry.end_run(second, status="failed", error="Out of memory on the second backbone.")
        raise FlowerProbeError("The second backbone failed: out of memory.")

    runner = JobRunner(counter_path=tmp_path / "jobs.counter", registry_path=path)
    job = runner.wait(runner.submit("two backbones", target).id, timeout_s=30)
    assert job.status == "failed" and "out of memory" in job.error
    first, second = sorted(r["id"] for r in registry.list_runs() if r["id"] != outside)
    assert job.report["recorded"] == [first]
    assert job.report["failed"] == [[second, "Out of memory on the second backbone."]]
    assert job.report["cancelled"] == [] and job.report["datasets"] == ["synthetic"]

    restarted = JobRunner(counter_path=tmp_path / "jobs.counter", registry_path=path)  # a new server process
    kept = restarted.get(job.id)
    assert (kept.status, kept.report, kept.title) == ("failed", job.report, "two backbones")
    assert not restarted.can_retry(job.id)  # its work was code in the old process: start it again from its page

    assert runner.can_retry(job.id)
    again = runner.wait(runner.retry(job.id).id, timeout_s=30)
    assert again.id != job.id and again.retry_of == job.id and len(attempts) == 2
    assert len(again.report["recorded"]) == 1 and again.report["recorded"] != job.report["recorded"]


def test_a_cancelled_job_reports_the_runs_it_kept(tmp_path):
    path = tmp_path / "runs.sqlite"
    registry = RunRegistry(path)

    def target(context):
        kept = _create(registry)
        _complete(registry, kept)
        stopped = _create(registry)
        registry.end_run(stopped, status="cancelled", error="Cancelled by the user.")
        from core.base.errors import CancelledError

        raise CancelledError("Cancelled by the user.")

    runner = JobRunner(registry_path=path)
    job = runner.wait(runner.submit("suite", target).id, timeout_s=30)
    assert job.status == "cancelled"
    assert len(job.report["recorded"]) == 1 and len(job.report["cancelled"]) == 1


def test_a_restarted_server_finds_past_jobs_by_kind_and_key(tmp_path):
    path = tmp_path / "runs.sqlite"
    runner = JobRunner(counter_path=tmp_path / "jobs.counter", registry_path=path)
    job = runner.wait(runner.submit("prepare", lambda context: None, kind="prepare", key="synthetic").id, timeout_s=30)
    assert job.status == "completed"

    restarted = JobRunner(counter_path=tmp_path / "jobs.counter", registry_path=path)
    kept = restarted.get(job.id)
    assert (kept.kind, kept.key) == ("prepare", "synthetic")
    assert [j.id for j in restarted.find(kinds=("prepare",), key="synthetic")] == [job.id]


def test_a_job_history_made_before_kind_and_key_opens_and_keeps_its_jobs(tmp_path):
    import sqlite3

    path = tmp_path / "runs.sqlite"
    with sqlite3.connect(path) as conn:  # the table as it first shipped: no kind, no key
        conn.execute(
            "CREATE TABLE jobs (id INTEGER PRIMARY KEY, title TEXT NOT NULL, status TEXT NOT NULL, created_at REAL NOT "
            "NULL, started_at REAL, finished_at REAL, error TEXT, report TEXT, pid INTEGER, host TEXT)"
        )
        conn.execute("INSERT INTO jobs (id, title, status, created_at) VALUES (3, 'old job', 'completed', 1.0)")
    conn.close()

    runner = JobRunner(counter_path=tmp_path / "jobs.counter", registry_path=path)
    old = runner.get(3)
    assert (old.title, old.status, old.kind, old.key) == ("old job", "completed", "other", "")
    new = runner.wait(runner.submit("features", lambda context: None, kind="features", key="run 7").id, timeout_s=30)
    again = JobRunner(counter_path=tmp_path / "jobs.counter", registry_path=path).get(new.id)
    assert (again.kind, again.key) == ("features", "run 7")
    with sqlite3.connect(path) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(jobs)")]
    conn.close()
    assert columns.count("kind") == 1 and columns.count("key") == 1
