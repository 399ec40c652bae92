"""Jobs carry a kind and a key (pages find their jobs by them, never by a title), and progress events say when a
step's result came from a cache."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

from core.__main__ import build_parser
from core.base.errors import FlowerProbeError
from core.base.progress import STAGES, ProgressEvent
from core.jobs.runner import JobRunner


def test_jobs_are_found_by_kind_and_key_and_keep_them_when_retried():
    runner = JobRunner()
    gate = threading.Event()
    blocker = runner.submit("Prepare X", lambda context: gate.wait(10), kind="prepare", key="synthetic")
    other = runner.submit("Prepare X", lambda context: None, kind="prepare", key="folder:x")  # the same title
    health = runner.submit("Health check: a", lambda context: 1 / 0, kind="health", key="a")
    assert [j.id for j in runner.find(kinds=("prepare",))] == [other.id, blocker.id]
    assert [j.id for j in runner.find(kinds=("prepare",), key="synthetic")] == [blocker.id]
    assert [j.id for j in runner.find(kinds=("prepare", "health"), active=True)] == [health.id, other.id, blocker.id]
    assert runner.find(kinds=("map",)) == []
    gate.set()
    failed = runner.wait(health.id, timeout_s=30)
    assert failed.status == "failed" and runner.find(kinds=("health",), active=True) == []
    again = runner.retry(health.id)
    assert (again.kind, again.key, again.retry_of) == ("health", "a", health.id)
    with pytest.raises(FlowerProbeError, match="kind must be one of"):
        runner.submit("x", lambda context: None, kind="nonsense")


def test_features_read_from_the_cache_say_so_in_their_event(populated_workspace):
    from core.data.datasets import load_dataset
    from core.features.extract import extract_features

    events: list[ProgressEvent] = []
    result = extract_features(
        load_dataset("synthetic", populated_workspace),
        "efficientnet_lite0",
        workspace=populated_workspace,
        progress=events.append,
    )
    assert result.from_cache
    finished = [e for e in events if e.stage == "features"]
    assert finished and all(e.from_cache for e in finished) and all(e.stage in STAGES for e in events)


def test_the_cli_reads_its_defaults_and_choices_from_the_engine():
    from core.data.datasets import DEFAULT_SPLIT
    from core.features.extract import DEVICES, PRECISIONS
    from core.health.checks import HealthConfig
    from core.maps.projection import MAP_METHODS, MapParams

    parser = build_parser()
    for command in ("compare", "probe"):  # the shared parent parser
        args = parser.parse_args([command])
        assert (args.split, args.device, args.precision) == (DEFAULT_SPLIT, "auto", "auto")
        for option, choices in (("--device", DEVICES), ("--precision", PRECISIONS)):
            for value in choices:
                assert getattr(parser.parse_args([command, option, value]), option[2:]) == value
    map_args = parser.parse_args(["map", "--dataset", "d", "--backbone", "b", "--out", "o.png"])
    defaults = MapParams()
    assert (map_args.method, map_args.perplexity, map_args.n_neighbors, map_args.min_dist) == (
        next(iter(MAP_METHODS)),
        defaults.perplexity,
        defaults.n_neighbors,
        defaults.min_dist,
    )
    health = parser.parse_args(["health", "--dataset", "d", "--backbone", "b"])
    assert (health.split, health.folds, health.duplicate_threshold) == (
        HealthConfig().split,
        HealthConfig().folds,
        HealthConfig().duplicate_threshold,
    )
    # The head's options say what they are; the older spellings still work.
    old = parser.parse_args(["compare", "--head", "linear", "--batch-size", "16"])
    new = parser.parse_args(["compare", "--head-architecture", "linear", "--head-batch-size", "16"])
    assert (
        (old.head_architecture, old.head_batch_size) == (new.head_architecture, new.head_batch_size) == ("linear", 16)
    )


def test_every_stage_the_engine_reports_has_a_name_for_people():
    """Job cards and the sidebar show ``STAGES[event.stage]``; a missing one showed its raw key ("onnx: ...")."""
    root = Path(__file__).resolve().parents[3] / "core"
    calls = re.compile(r'report\(\s*\w*progress\w*,\s*"([a-z_]+)"')
    used = {stage for path in root.rglob("*.py") for stage in calls.findall(path.read_text(encoding="utf-8"))}
    assert {"features", "onnx", "runtime"} <= used, used  # the pattern still finds the engine's calls
    assert sorted(used - set(STAGES)) == []
