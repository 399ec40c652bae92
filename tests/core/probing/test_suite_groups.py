"""A suite is one group with a status, and it resumes: interrupted (Ctrl-C, kill -9), the same suite run again records
only the runs it lacks and ends with exactly the runs an uninterrupted suite records. ``compare`` is that suite with
the reference head; a run is recorded one way (``core.probing.record.record_run``), whatever made it.

The suites here run k-NN, NCM and the linear probe on the cached features of ``populated_copy`` (tiny Synthetic
Flowers): seconds each.
"""

from __future__ import annotations

import re

import pytest

from core.__main__ import main
from core.base.workspace import Workspace
from core.probing.experiment import ExperimentConfig, run_comparison, run_experiment
from core.probing.heads import HeadConfig
from core.probing.record import run_key
from core.probing.suite import ALL, run_probe_suite
from core.runs.files import RunFiles, head_file
from core.runs.registry import RunRegistry
from tests.helpers.cli_process import Cli

SUITE = {
    "dataset": "synthetic",
    "backbones": ["efficientnet_lite0"],
    "protocols": ["knn", "ncm"],
    "shots": [1, 2, ALL],
    "seeds": 2,
}
SUITE_RUNS = 2 * (2 + 2 + 1)  # protocols x (two seeded draws at 1 and 2 shots, one run on the whole training part)


def _suite_groups(registry: RunRegistry) -> list[dict]:
    """The probe suites' groups, newest first (the populated workspace holds a compare's group too)."""
    return [g for g in registry.list_groups() if g["kind"] == "suite"]


def _outcomes(records: list[dict]) -> dict[tuple, tuple]:
    """Each run's key and what it measured."""
    return {run_key(r): (r["test_acc"], r["metrics"]["test_acc_ci"]) for r in records}


class _Stop(KeyboardInterrupt):
    """Ctrl-C after some runs were recorded."""


def test_an_interrupted_suite_reads_interrupted_and_resumes_to_the_uninterrupted_runs(populated_copy, capsys):
    registry = RunRegistry(populated_copy.registry_path)
    before = {r["id"] for r in registry.list_runs()}
    first: list[dict] = []

    def stop_after_four(record: dict) -> None:
        first.append(record)
        if len(first) == 4:
            raise _Stop()

    with pytest.raises(KeyboardInterrupt):
        run_probe_suite(**SUITE, workspace=populated_copy, on_run=stop_after_four)
    [group] = _suite_groups(registry)
    assert (group["status"], group["recorded"], group["planned"]) == ("interrupted", 4, SUITE_RUNS)
    assert {r["group_id"] for r in first} == {group["id"]}
    assert main(["runs", "--groups"]) == 0  # what a person reads
    assert f"group {group['id']} · suite · interrupted · 4/{SUITE_RUNS} runs" in capsys.readouterr().out

    second: list[dict] = []
    resumed = run_probe_suite(**SUITE, workspace=populated_copy, on_run=second.append)
    assert len(second) == SUITE_RUNS - 4, "the rerun recorded runs the first one had recorded"
    assert {r["id"] for r in first}.isdisjoint(r["id"] for r in second)
    assert {r["group_id"] for r in resumed} == {group["id"]}
    group = registry.get_group(group["id"])
    assert (group["status"], group["recorded"]) == ("completed", SUITE_RUNS)
    new_runs = [r for r in registry.list_runs() if r["id"] not in before]
    assert len(new_runs) == SUITE_RUNS and len({run_key(r) for r in new_runs}) == SUITE_RUNS

    # The same suite once more, uninterrupted: a completed group is not reopened, so it is a new group, whose runs
    # are the resumed group's, measurement for measurement.
    again = run_probe_suite(**SUITE, workspace=populated_copy)
    assert {r["group_id"] for r in again} != {group["id"]} and len(again) == SUITE_RUNS
    assert _outcomes(again) == _outcomes(resumed)
    assert [run_key(r) for r in again] == [run_key(r) for r in resumed], "not in the suite's order"


def test_a_failed_suite_reads_failed_with_its_reason(populated_copy, monkeypatch):
    import core.probing.probes as probes

    def explode(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(probes, "ncm_probe", explode)
    with pytest.raises(RuntimeError):
        run_probe_suite(**SUITE, workspace=populated_copy)
    [group] = _suite_groups(RunRegistry(populated_copy.registry_path))
    assert group["status"] == "failed" and "disk on fire" in group["error"] and group["recorded"] == 1  # the k-NN


def test_compare_is_the_suite_with_the_reference_head_and_names_a_linear_head_apart(populated_copy):
    registry = RunRegistry(populated_copy.registry_path)
    mlp, linear = (
        run_comparison(
            dataset="synthetic",
            backbones=["efficientnet_lite0"],
            head=HeadConfig(architecture=architecture, epochs=2, seed=3),
            workspace=populated_copy,
        )
        for architecture in ("mlp", "linear")
    )
    assert [r["protocol"] for r in mlp + linear] == ["mlp", "reference_linear"]
    for [run] in (mlp, linear):
        assert registry.get_group(run["group_id"])["kind"] == "compare"
        assert run["seed"] == 3 and run["config"]["head"]["seed"] == 3 and run["best_epoch"] in (1, 2)
        # The head file is where the files record says a run's head is.
        assert RunFiles(run, populated_copy).head == head_file(populated_copy, run["id"]) and run["head_path"]
        assert RunFiles(run, populated_copy).head.is_file()
    assert linear[0]["config"]["head"]["architecture"] == "linear"


def test_run_experiment_records_the_way_the_suite_does(populated_copy):
    single = run_experiment(
        ExperimentConfig(dataset="synthetic", backbone="efficientnet_lite0", head=HeadConfig(epochs=2, seed=3)),
        workspace=populated_copy,
    )
    [suite] = run_comparison(
        dataset="synthetic",
        backbones=["efficientnet_lite0"],
        head=HeadConfig(epochs=2, seed=3),
        workspace=populated_copy,
    )
    assert single["status"] == suite["status"] == "completed"
    assert set(single["config"]) == set(suite["config"]) and set(single["timings"]) == set(suite["timings"])
    assert run_key(single) == run_key(suite)
    assert (single["test_acc"], single["test_loss"], single["best_epoch"]) == (
        suite["test_acc"],
        suite["test_loss"],
        suite["best_epoch"],
    )
    registry = RunRegistry(populated_copy.registry_path)
    assert [(p["row"], p["predicted"]) for p in registry.predictions(single["id"])] == [
        (p["row"], p["predicted"]) for p in registry.predictions(suite["id"])
    ]


def test_runs_recorded_before_the_names_changed_still_read(populated_copy):
    """A compare --head linear run of the previous version: protocol "mlp", its head config's key "head"."""
    registry = RunRegistry(populated_copy.registry_path)
    old = registry.list_runs(status="completed")[-1]
    config = {**old["config"], "head": {**HeadConfig(architecture="linear").to_dict()}}
    config["head"]["head"] = config["head"].pop("architecture")
    run_id = registry.record_completed_run(
        run={
            **{k: old[k] for k in ("dataset_key", "dataset_name", "dataset_fingerprint", "synthetic", "split")},
            **{k: old[k] for k in ("class_names", "backbone", "weights", "seed", "versions")},
            "config": config,
        },
        result={
            **{k: old[k] for k in ("weights_tag", "device", "precision", "timings", "best_epoch", "test_acc")},
            **{k: old[k] for k in ("test_loss", "per_class_acc", "confusion", "skipped", "features_path")},
            "epochs": [],
            "predictions": [],
        },
    )
    run = registry.get_run(run_id)
    assert run["protocol"] == "reference_linear"
    assert HeadConfig.from_dict(run["config"]["head"]) == HeadConfig(architecture="linear")


# ---------------------------------------------------------------------------------------------------- kill -9

PROBE_LINE = re.compile(r"^\s*probe \[[#.]*\] (\d+)/(\d+)")
CLI_SUITE = [
    "probe",
    *("--dataset", "synthetic", "--backbones", "efficientnet_lite0", "--protocols", "linear,knn,ncm"),
    *("--shots", "1,2,all", "--seeds", "3"),
]
CLI_RUNS = 3 * (2 * 3 + 1)


def _kill_after_first_recorded_run(cli: Cli) -> str:
    """SIGKILL the CLI at its first "probe k/n" line with 0 < k < n (k runs recorded); returns that line."""
    line = cli.wait_for(lambda text: bool((m := PROBE_LINE.match(text)) and 0 < int(m[1]) < int(m[2])))
    cli.kill_9()
    return line


@pytest.mark.slow  # three CLI suites of 21 runs: about a minute on a busy 2-core machine
def test_probe_suite_killed_with_kill_9_resumes_to_exactly_the_uninterrupted_runs(populated_copy):
    root = populated_copy.root
    registry = RunRegistry(Workspace(root=root, data_root=root / "datasets").registry_path)
    before = {r["id"] for r in registry.list_runs()}

    line = _kill_after_first_recorded_run(Cli(CLI_SUITE, workspace_root=root))
    killed = RunRegistry(registry.path)  # a reader after the kill finds the group's process gone
    [group] = _suite_groups(killed)
    assert group["status"] == "interrupted", group
    assert 0 < group["recorded"] < CLI_RUNS and group["planned"] == CLI_RUNS, (line, group)
    recorded_then = {r["id"]: run_key(r) for r in killed.group_runs(group["id"])}
    assert all(r["status"] == "completed" for r in killed.list_runs() if r["id"] not in before)

    output = Cli(CLI_SUITE, workspace_root=root).finish()
    assert f"resuming it: {group['recorded']} were recorded before" in output, output
    assert f"Recorded {CLI_RUNS - group['recorded']} runs (group {group['id']}" in output, output
    group = killed.get_group(group["id"])
    assert (group["status"], group["recorded"]) == ("completed", CLI_RUNS)
    resumed = killed.group_runs(group["id"])
    assert {r["id"]: run_key(r) for r in resumed if r["id"] in recorded_then} == recorded_then
    assert len({run_key(r) for r in resumed}) == CLI_RUNS, "a run was recorded twice"
    assert len([r for r in killed.list_runs() if r["id"] not in before]) == CLI_RUNS

    # The same command again: a new group (the other completed), uninterrupted, with the same runs and numbers.
    Cli(CLI_SUITE, workspace_root=root).finish()
    [uninterrupted, _] = _suite_groups(killed)
    assert uninterrupted["id"] != group["id"] and uninterrupted["status"] == "completed"
    assert _outcomes(killed.group_runs(uninterrupted["id"])) == _outcomes(resumed)
    assert killed.integrity_check() == "ok"
