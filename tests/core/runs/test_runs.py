"""Run registry: complete-or-nothing records, interrupted runs, concurrent writers."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import subprocess
import sys
import types

import numpy as np
import pytest

from core.runs.registry import RunRegistry


def _create(registry: RunRegistry, **overrides) -> int:
    fields = dict(
        dataset_key="synthetic",
        dataset_name="Synthetic",
        dataset_fingerprint="f",
        synthetic=True,
        class_names=["a", "b"],
        split="1",
        backbone="resnet50",
        weights="random",
        seed=0,
        config={"x": 1},
        versions={"torch": "2"},
    )
    return registry.create_run(**{**fields, **overrides})


def _complete(registry: RunRegistry, run_id: int, n_predictions: int = 3) -> None:
    registry.complete_run(
        run_id,
        weights_tag="random",
        device="cpu",
        precision="fp32",
        timings={"total_s": 1.0},
        best_epoch=1,
        test_acc=50.0,
        test_loss=0.7,
        per_class_acc=[100.0, 0.0],
        confusion=np.array([[1, 0], [1, 0]]),
        skipped=[],
        features_path="f.npz",
        head_path="h.safetensors",
        epochs=[{"epoch": 1, "train_loss": 1.0, "train_acc": 50.0, "valid_loss": 1.0, "valid_acc": 50.0}],
        predictions=[(i, f"img{i}.jpg", 0, 0, 0.9, [0.9, 0.1]) for i in range(n_predictions)],
    )


def test_complete_run_round_trip(tmp_path):
    registry = RunRegistry(tmp_path / "runs.sqlite")
    run_id = _create(registry)
    assert registry.get_run(run_id)["status"] == "running"
    _complete(registry, run_id)
    run = registry.get_run(run_id)
    assert run["status"] == "completed" and run["test_acc"] == 50.0 and run["config"] == {"x": 1}
    assert run["confusion"] == [[1, 0], [1, 0]] and run["versions"] == {"torch": "2"}
    assert len(registry.epochs(run_id)) == 1 and len(registry.predictions(run_id)) == 3
    assert registry.integrity_check() == "ok"


def test_failed_completion_leaves_no_half_success(tmp_path):
    registry = RunRegistry(tmp_path / "runs.sqlite")
    run_id = _create(registry)
    with pytest.raises(sqlite3.IntegrityError):
        # A duplicate prediction row violates the primary key midway through the transaction.
        registry.complete_run(
            run_id,
            weights_tag="t",
            device="cpu",
            precision="fp32",
            timings={},
            best_epoch=1,
            test_acc=1.0,
            test_loss=1.0,
            per_class_acc=[],
            confusion=np.zeros((2, 2)),
            skipped=[],
            features_path="",
            head_path="",
            epochs=[],
            predictions=[(0, "a", 0, 0, 1.0, [1.0]), (0, "a", 0, 0, 1.0, [1.0])],
        )
    run = registry.get_run(run_id)
    assert run["status"] == "running" and run["test_acc"] is None and registry.predictions(run_id) == []


def test_run_of_a_dead_process_is_marked_interrupted(tmp_path):
    path = tmp_path / "runs.sqlite"
    code = (
        f"import os, sys; sys.path.insert(0, {os.getcwd()!r}); from tests.core.runs.test_runs import _create; "
        f"from core.runs.registry import RunRegistry; _create(RunRegistry({str(path)!r})); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    run = RunRegistry(path).list_runs()[0]  # opening the registry reconciles
    assert run["status"] == "interrupted" and "stopped before it finished" in run["error"]


def _writer(path: str, count: int, start) -> None:
    try:
        registry = RunRegistry(path)
        start.wait(timeout=120)  # both processes imported and connected: their writes overlap
        for _ in range(count):
            _complete(registry, _create(registry), n_predictions=50)
    except BaseException:
        # A spawned process's traceback is not captured by pytest: keep it beside the database for the assertion.
        import traceback

        with open(f"{path}.{os.getpid()}.error", "w", encoding="utf-8") as log:
            traceback.print_exc(file=log)
        raise


# Per writer process; they start together (a barrier), so their transactions contend for the lock from the first.
RUNS_PER_WRITER = 5


# heavy for -m "not slow" (under 3 min on 2 cores): two spawned processes; runs in the full suite
@pytest.mark.slow
def test_concurrent_writers_both_recorded(tmp_path, monkeypatch):
    # A spawned child re-imports the parent's __main__; after an AppTest in the same session that is a page script
    # Streamlit ran as __main__, which fails outside a server. The writers need nothing from it.
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))
    path = str(tmp_path / "runs.sqlite")
    RunRegistry(path)
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    workers = [ctx.Process(target=_writer, args=(path, RUNS_PER_WRITER, start)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    errors = {log.name: log.read_text() for log in tmp_path.glob("runs.sqlite.*.error")}
    assert [w.exitcode for w in workers] == [0, 0], errors
    registry = RunRegistry(path)
    runs = registry.list_runs()
    assert len(runs) == 2 * RUNS_PER_WRITER and all(r["status"] == "completed" for r in runs)
    assert len({r["pid"] for r in runs}) == 2
    assert all(len(registry.predictions(r["id"])) == 50 for r in runs)
    assert registry.integrity_check() == "ok"
