"""The job card (``ui.jobs.job_card``): live training curves only while a head trains.

A job's card is redrawn at every refresh while the job runs. Its per-epoch chart loads plotly.js in the browser and is
redrawn each time, so it shows while a head trains (its curves move) and once the job has ended (in an expander), not
through the extraction that follows a head, when it would only take CPU from the job (bench/README.md, session 8).
"""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from core.base.text import markdown_text

TIMEOUT_S = 60


def _card(stage: str, status: str, run_ids: tuple[int, ...] = ()) -> None:
    import time

    from core.base.progress import ProgressEvent
    from core.jobs.runner import Job
    from ui.jobs import job_card

    epochs = [
        {"run": "efficientnet_lite0", "epoch": e, "train_loss": 1.0 / e, "train_acc": 50.0 + e, "valid_loss": 1.2 / e}
        | {"valid_acc": 40.0 + e, "saved_best": True}
        for e in (1, 2, 3)
    ]
    event = ProgressEvent(stage=stage, done=3 if stage == "train" else 200, total=5 if stage == "train" else 1360)
    job = Job(id=7, title="Demo", kind="comparison", status=status, started_at=time.time(), stage=event, epochs=epochs)
    job.run_ids.extend(run_ids)
    job_card(job)


def _render(stage: str, status: str, run_ids: tuple[int, ...] = ()) -> AppTest:
    at = AppTest.from_function(_card, args=(stage, status, run_ids), default_timeout=TIMEOUT_S).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def test_the_curves_are_live_while_a_head_trains(workspace):
    at = _render("train", "running")
    assert len(at.get("plotly_chart")) == 1 and len(at.dataframe) == 1
    assert at.get("progress")[0].proto.text == markdown_text("Training: epoch 3/5")


def test_the_curves_are_not_redrawn_through_the_next_extraction(workspace):
    at = _render("features", "running")
    assert not at.get("plotly_chart") and not at.dataframe
    assert [c.value for c in at.caption if "epochs so far" in c.value] == [
        "3 epochs so far: their curves show while a head trains and at the end."
    ]


def test_a_finished_job_keeps_its_epochs_in_an_expander(workspace):
    at = _render("features", "completed")
    assert not at.get("plotly_chart")
    assert [e.label for e in at.expander] == ["Per-epoch metrics (3 epochs)"] and len(at.dataframe) == 1


def test_runs_recorded_so_far_can_be_compared_while_the_job_runs(workspace):
    assert not [c for c in _render("features", "running").caption if c.value.startswith("Recorded so far")]
    at = _render("probe", "running", run_ids=(4, 5))
    assert [c.value for c in at.caption if c.value.startswith("Recorded so far")] == ["Recorded so far: #4, #5"]
    links = [e.proto for e in at.get("link_button")]
    assert [(link.label, link.url) for link in links] == [("Compare the runs so far", "/compare?runs=4,5")]
