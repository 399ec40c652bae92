"""The job card (``ui.jobs.job_card``): live training curves only while a head trains.

A job's card is redrawn at every refresh while the job runs. Its per-epoch chart loads plotly.js in the browser and is
redrawn each time, so it shows while a head trains (its curves move) and once the job has ended (in an expander), not
through the extraction that follows a head, when it would only take CPU from the job (bench/README.md, session 8).
"""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from core.base.text import markdown_text

TIMEOUT_S = 60


def _card(stage: str, status: str) -> None:
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
    job_card(job)


def _render(stage: str, status: str) -> AppTest:
    at = AppTest.from_function(_card, args=(stage, status), default_timeout=TIMEOUT_S).run()
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
