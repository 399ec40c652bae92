"""The job runner, progress ETA, presets, duration estimates and one backbone run twice with different weights.

Cancel is tested end to end: a real comparison (real images, a real random-weight backbone) runs in the
JobRunner, is cancelled mid-extraction, says ``cancelling`` at once, stops within 2 s and leaves its run
recorded as cancelled.
"""

from __future__ import annotations

import threading
import time

import pytest

from core.__main__ import build_parser, main
from core.base.errors import FlowerProbeError
from core.base.progress import ProgressEvent, format_duration
from core.jobs.runner import JobRunner, comparison_job
from core.probing.experiment import (
    ESTIMATED_CPU_IMAGES_PER_S,
    GENERATE_KEY,
    BackboneChoice,
    backbone_choices,
    estimate_comparison,
    measured_rates,
    parse_backbone,
    record_rate,
)
from core.probing.heads import HeadConfig
from core.probing.presets import HEAD_DEFAULTS, OFFLINE_DEMO, REFERENCE
from core.runs.registry import RunRegistry

CANCEL_LIMIT_S = 2.0  # issue 14: a cancelled job stops within 2 s on a CPU


def _wait_for(predicate, *, timeout_s: float, step_s: float = 0.01):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step_s)
    raise TimeoutError(f"condition not met within {timeout_s} s")


# ----------------------------------------------------------------------------------------------- progress


def test_seconds_left_is_the_remaining_work_at_the_current_rate():
    assert ProgressEvent("features", 100, 1360, rate=20.0).seconds_left == pytest.approx(1260 / 20.0)
    assert ProgressEvent("features", 1360, 1360, rate=20.0).seconds_left == 0
    assert ProgressEvent("features", 5, 10).seconds_left is None  # no rate, no estimate
    assert ProgressEvent("features", 5, 0, rate=3.0).seconds_left is None  # unknown total


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0 s"), (44.6, "45 s"), (60, "1 min 00 s"), (185, "3 min 05 s"), (3720, "1 h 02 min")]
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_cli_bar_shows_time_left():
    import io

    from core.__main__ import ConsoleProgress

    stream = io.StringIO()
    ConsoleProgress(stream)(ProgressEvent("features", 100, 1000, rate=10.0))
    assert "1 min 30 s left" in stream.getvalue()  # 900 images at 10 images/s


# ----------------------------------------------------------------------------------------------- the job runner


def test_cancel_marks_a_running_job_cancelling_at_once_then_cancelled():
    runner = JobRunner()
    release = threading.Event()

    def target(context):
        while True:  # a step that reports progress until told to stop
            context.progress(ProgressEvent("features", 1, 10))
            release.wait(0.02)

    job = runner.submit("loop", target)
    _wait_for(lambda: runner.get(job.id).status == "running", timeout_s=10)
    runner.cancel(job.id)
    assert runner.get(job.id).status == "cancelling"  # before the worker noticed anything
    assert runner.get(job.id).active
    assert runner.wait(job.id, timeout_s=10).status == "cancelled"


def test_cancel_before_start_never_runs_the_job():
    runner = JobRunner()
    gate, ran = threading.Event(), []
    first = runner.submit("blocker", lambda context: gate.wait(10))
    second = runner.submit("never", lambda context: ran.append(True))
    runner.cancel(second.id)
    gate.set()
    assert runner.wait(first.id, timeout_s=10).status == "completed"
    assert runner.wait(second.id, timeout_s=10).status == "cancelled" and ran == []


def test_job_ids_do_not_repeat_across_restarts(tmp_path):
    counter = tmp_path / "workspace" / "jobs.counter"
    first = JobRunner(counter_path=counter)
    ids = [first.submit(f"job {i}", lambda context: None).id for i in range(3)]
    restarted = JobRunner(counter_path=counter)  # a new server process on the same workspace
    later = restarted.submit("after restart", lambda context: None).id
    assert ids == [1, 2, 3] and later == 4
    counter.write_text("not a number")  # edited by hand: ids start again rather than the server failing
    assert JobRunner(counter_path=counter).submit("x", lambda context: None).id == 1


def test_cancel_stops_a_real_extraction_within_two_seconds(tiny_workspace):
    """A real comparison in the JobRunner: cancelled while extracting, it stops within 2 s, its group cancelled."""
    runner = JobRunner()
    job = runner.submit(
        "cancel me",
        comparison_job(
            dataset="synthetic",
            backbones=["resnet50@random"],
            head=HeadConfig(epochs=1),
            device="cpu",
            workspace=tiny_workspace,
        ),
    )

    def extracting():
        stage = runner.get(job.id).stage
        return stage is not None and stage.stage == "features" and stage.done < stage.total  # the backbone is running

    _wait_for(extracting, timeout_s=180)
    asked = time.monotonic()
    runner.cancel(job.id)
    assert runner.get(job.id).status == "cancelling"
    finished = runner.wait(job.id, timeout_s=60)
    stopped_after = time.monotonic() - asked
    assert finished.status == "cancelled", finished.error
    assert stopped_after < CANCEL_LIMIT_S, f"the job stopped {stopped_after:.2f} s after the cancel"
    registry = RunRegistry(tiny_workspace.registry_path)
    # A comparison is a suite: no half run is recorded, and its group says it was cancelled before any run finished.
    assert registry.list_runs() == []
    [group] = registry.list_groups()
    assert (group["kind"], group["status"], group["recorded"], group["planned"]) == ("compare", "cancelled", 0, 1)
    assert group["config"]["backbones"] == ["resnet50@random"]


# ------------------------------------------------------------------------------------------ one backbone, two weights


def test_backbone_specs_name_the_weights():
    assert parse_backbone("resnet50") == BackboneChoice("resnet50", "pretrained")
    assert parse_backbone("resnet50@random") == BackboneChoice("resnet50", "random")
    assert parse_backbone("resnet50@/w/r50@v2.pth") == BackboneChoice(
        "resnet50", "/w/r50@v2.pth"
    )  # a path may hold "@"
    for bad in ("", "@random", "resnet50@"):
        with pytest.raises(FlowerProbeError, match="NAME@random"):
            parse_backbone(bad)


def test_backbone_choices_keep_the_older_spelling_and_refuse_repeats():
    old = backbone_choices(["efficientnet_lite0", "resnet50"], ("resnet50",))
    assert [(c.backbone, c.weights) for c in old] == [("efficientnet_lite0", "pretrained"), ("resnet50", "random")]
    twice = backbone_choices(["efficientnet_lite0", "efficientnet_lite0@random"])
    assert [c.label for c in twice] == ["efficientnet_lite0", "efficientnet_lite0 (random weights)"]
    assert [c.spec for c in twice] == ["efficientnet_lite0", "efficientnet_lite0@random"]
    with pytest.raises(FlowerProbeError, match="twice with the same weights"):
        backbone_choices(["resnet50@random", "resnet50"], ("resnet50",))
    with pytest.raises(FlowerProbeError, match="not among the backbones"):
        backbone_choices(["resnet50@random"], ("resnet50",))
    with pytest.raises(FlowerProbeError, match="at least one"):
        backbone_choices([])


# heavy for -m "not slow" (under 3 min on 2 cores): two extractions through the CLI
@pytest.mark.slow
def test_cli_runs_one_backbone_pretrained_and_random(tiny_workspace, capsys):
    args = [
        "compare",
        "--dataset",
        "synthetic",
        "--backbones",
        "efficientnet_lite0",
        "efficientnet_lite0@random",
        "--epochs",
        "1",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "=== efficientnet_lite0 on synthetic, split 1" in out
    assert "=== efficientnet_lite0 (random weights) on synthetic, split 1" in out
    table = out[out.index("backbone ") :].splitlines()
    assert [line.split("  ")[0] for line in table[1:3]] == ["efficientnet_lite0", "efficientnet_lite0 (random weights)"]
    runs = RunRegistry(tiny_workspace.registry_path).list_runs()
    assert sorted((r["backbone"], r["weights"], r["status"]) for r in runs) == [
        ("efficientnet_lite0", "pretrained", "completed"),
        ("efficientnet_lite0", "random", "completed"),
    ]
    assert len({r["weights_tag"] for r in runs}) == 2  # two feature sets, not one cache entry reused
    rates = measured_rates(tiny_workspace)
    assert set(rates) == {"efficientnet_lite0"} and all(rate > 0 for rate in rates["efficientnet_lite0"].values())


def test_cli_refuses_an_unknown_backbone_spec(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["compare", "--backbones", "nonsense@random"])
    assert "nonsense" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- presets and estimates


def test_presets_are_what_the_cli_defaults_to():
    args = build_parser().parse_args(["compare"])
    assert (
        args.backbones == list(REFERENCE.backbones)
        and args.dataset == REFERENCE.dataset
        and args.split == REFERENCE.split
    )
    assert (args.head_architecture, args.epochs, args.lr, args.head_batch_size, args.seed) == (
        HEAD_DEFAULTS.architecture,
        HEAD_DEFAULTS.epochs,
        HEAD_DEFAULTS.lr,
        HEAD_DEFAULTS.batch_size,
        HEAD_DEFAULTS.seed,
    )
    demo = backbone_choices(list(OFFLINE_DEMO.backbones))
    assert {c.backbone for c in demo} == {"efficientnet_lite0"} and {c.weights for c in demo} == {
        "pretrained",
        "random",
    }


def test_estimate_uses_measured_rates_and_labels_constants_as_estimates(workspace):
    choices = backbone_choices(["efficientnet_lite0", "efficientnet_lite0@random", "resnet50@random"])
    record_rate(workspace, what="efficientnet_lite0", device="cpu-x", images_per_s=40.0)
    record_rate(workspace, what=GENERATE_KEY, device="cpu", images_per_s=68.0)
    rates = measured_rates(workspace)
    estimate = estimate_comparison(
        choices=choices,
        n_images=1360,
        runs_per_backbone=1,
        cached={("efficientnet_lite0", "pretrained")},
        generate=True,
        device="cpu-x",
        rates=rates,
    )
    steps = {what.split(":")[0]: (seconds, basis) for what, seconds, basis in estimate.steps}
    assert steps["generating the images"] == (pytest.approx(1360 / 68.0), "measured")
    assert steps["efficientnet_lite0"] == (0.0, "cached")
    assert steps["efficientnet_lite0 (random weights)"] == (
        pytest.approx(1360 / 40.0),
        "measured",
    )  # same architecture, same rate
    assert steps["resnet50 (random weights)"] == (
        pytest.approx(1360 / ESTIMATED_CPU_IMAGES_PER_S["resnet50"]),
        "estimate",
    )
    assert not estimate.measured
    assert estimate.seconds == pytest.approx(sum(seconds for _, seconds, _ in estimate.steps))
    on_other_device = estimate_comparison(
        choices=choices[:1], n_images=100, runs_per_backbone=1, cached=set(), generate=False, device="cuda", rates=rates
    )
    assert [basis for _, _, basis in on_other_device.steps][0] == "estimate"  # a CPU rate says nothing about a GPU
