"""The Health page under Streamlit's AppTest (through dashboard.py), and ui.health's pure helpers."""

from __future__ import annotations

import csv
import io
from dataclasses import replace
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.data.exclusions import excluded_images
from core.health.checks import CSV_COLUMNS, HealthConfig, HealthReport, dataset_health

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 120  # the shared 2-core CPU


def open_health(**query: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=TIMEOUT_S)
    at.query_params.update(query)
    at.run()
    at.switch_page("pages/health.py").run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def texts(at: AppTest, *kinds: str) -> list[str]:
    return [str(element.value) for kind in kinds for element in at.get(kind)]


def _report(**changes) -> HealthReport:
    """A hand-made report: 4 images, class names that look like spreadsheet formulas."""
    base = HealthReport(
        dataset_key="folder:x",
        dataset_name="x",
        fingerprint="f",
        backbone="efficientnet_lite0",
        weights="random",
        weights_tag="random",
        precision="fp32",
        variant="gap",
        features_file="",
        config={"split": "1", "folds": 2, "outlier_k": 1},
        class_names=["=HYPERLINK(1)", "tulip"],
        paths=["train/a.jpg", "train/b.jpg", "test/c.jpg", "val/d.jpg"],
        parts=["train", "train", "test", "val"],
        labels=[0, 1, 1, 0],
        label_issues=[
            {"image": 1, "given": 1, "suggested": 0, "score": 0.1, "flagged": True},
            {"image": 3, "given": 0, "suggested": 0, "score": 0.9, "flagged": False},
        ],
        pairs=[
            {"a": 0, "b": 2, "similarity": 0.99, "exact": False, "photo": 0.97},
            {"a": 1, "b": 3, "similarity": 0.5, "exact": True, "photo": 1.0},
            {"a": 0, "b": 1, "similarity": 0.7, "exact": False, "photo": 0.3},
        ],
        duplicate_threshold=0.95,
        threshold_source="given",
        outliers=[{"image": 2, "score": 0.8, "flagged": True}, {"image": 0, "score": 0.2, "flagged": False}],
        outlier_cutoff=0.5,
        skipped=[],
        timings={"total_s": 1.0},
        created_at=0.0,
    )
    return replace(base, **changes)


def test_gallery_and_pair_items_follow_the_report():
    from ui.health import gallery_items, pair_items

    report = _report()
    labels = gallery_items(report, "label", limit=10)
    assert [i["path"] for i in labels] == ["train/b.jpg", "val/d.jpg"]
    assert "given tulip → suggested =HYPERLINK(1)" in labels[0]["caption"]
    assert [i["path"] for i in gallery_items(report, "label", limit=10, flagged_only=True)] == ["train/b.jpg"]
    assert [i["path"] for i in gallery_items(report, "outlier", limit=1)] == ["test/c.jpg"]
    pairs = pair_items(report, threshold=0.95, limit=10)
    assert [(p["paths"], p["exact"], p["leakage"]) for p in pairs] == [
        (["train/b.jpg", "val/d.jpg"], True, True),
        (["train/a.jpg", "test/c.jpg"], False, True),
    ]
    assert len(pair_items(report, threshold=0.6, limit=10)) == 3  # the slider lowers the threshold
    # Close in features, photos differ (SSIM 0.3): a near neighbour, not a copy, never leakage.
    near = pair_items(report, threshold=0.6, limit=10)[-1]
    assert near["paths"] == ["train/a.jpg", "train/b.jpg"] and not near["copy"] and not near["leakage"]
    # The same feature-close pair whose photos differ is not leakage even across parts.
    differ = replace(report, pairs=[{"a": 0, "b": 2, "similarity": 0.99, "exact": False, "photo": 0.4}])
    assert [(p["copy"], p["leakage"]) for p in pair_items(differ, threshold=0.95, limit=10)] == [(False, False)]
    with pytest.raises(Exception, match="issue must be"):
        gallery_items(report, "duplicate", limit=1)


def test_health_csv_is_formula_safe_and_complete():
    from ui.health import health_csv

    report = _report()
    text = health_csv(report, threshold=0.95)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert text.splitlines()[0] == ",".join(CSV_COLUMNS)
    assert len(rows) == 1 + 2 * 2 + 1  # one label issue, two pairs (a row per image), one outlier
    assert {r["issue"] for r in rows} == {"label", "leakage (exact copy)", "leakage", "outlier"}
    assert all(not r["given"].startswith("=") and not r["suggested"].startswith("=") for r in rows)
    assert "'=HYPERLINK(1)" in text
    partners = {(r["path"], r["partner"]) for r in rows if r["partner"]}
    assert ("train/a.jpg", "test/c.jpg") in partners and ("test/c.jpg", "train/a.jpg") in partners


def test_empty_workspace_says_to_prepare_a_dataset(workspace):
    at = open_health()
    assert any("No dataset is prepared yet" in t for t in texts(at, "info"))


# heavy for -m "not slow" (under 3 min on 2 cores): an extraction and a health report in AppTest
@pytest.mark.slow
def test_extract_then_check_then_exclude_and_undo(tiny_workspace):
    from ui.state import job_runner

    at = open_health()
    at.selectbox(key="health_dataset").set_value("synthetic").run()
    at.selectbox(key="health_backbone").set_value("efficientnet_lite0@random").run()
    assert not at.exception
    assert any("No cached features" in t for t in texts(at, "info"))
    at.button(key="health_extract").click().run()
    job = next(j for j in job_runner().jobs() if j.title.startswith("Features for health: "))
    assert job_runner().wait(job.id, timeout_s=300).status == "completed", job_runner().get(job.id).error

    at.run()
    at.button(key="health_run").click().run()
    job = next(j for j in job_runner().jobs() if j.title.startswith("Health check: "))
    finished = job_runner().wait(job.id, timeout_s=300)
    assert finished.status == "completed", finished.error
    at.run()
    assert not at.exception, [e.message for e in at.exception]

    report = dataset_health(
        "synthetic",
        "efficientnet_lite0",
        workspace=tiny_workspace,
        weights="random",
        config=HealthConfig(),
        compute=False,
    )
    assert report is not None
    counts = report.counts()
    assert [t.label for t in at.tabs] == [
        f"Label issues ({counts['label issues']})",
        f"Copies and near neighbours ({counts['copies']} + {counts['near neighbours']})",
        f"Outliers ({counts['outliers']})",
        "Compare backbones",
    ]
    assert at.slider(key="health_threshold").value == pytest.approx(report.duplicate_threshold, abs=1e-3)
    label_paths = [item for item in report.label_issues[:18]]
    first = report.paths[label_paths[0]["image"]]
    at.checkbox(key=f"label-{first}").check().run()
    at.button(key="label-exclude").click().run()
    assert not at.exception
    assert list(excluded_images(tiny_workspace, "synthetic")) == [first]
    assert any("1 image(s) are excluded" in t for t in texts(at, "caption"))
    # The report of the dataset without that image is not computed yet: the page offers the check again.
    assert at.button(key="health_run")
    at.button(key="undo-synthetic").click().run()
    assert excluded_images(tiny_workspace, "synthetic") == {}
    assert not at.exception
    assert [t.label for t in at.tabs][0].startswith("Label issues")  # the earlier report is back


def _show_hand_made_report() -> None:
    from pathlib import Path

    from tests.ui.test_health_page import _report
    from ui.health import show_report

    show_report(_report(duplicate_threshold=0.6), Path("/nonexistent"))  # missing photos show as placeholders


def test_report_renders_pairs_that_share_an_image(workspace):
    at = AppTest.from_function(_show_hand_made_report, default_timeout=TIMEOUT_S).run()
    assert not at.exception, [e.message for e in at.exception]
    # Three feature-close pairs: two whose photos agree (copies), one close in features only (a near neighbour).
    assert [t.label for t in at.tabs][:3] == ["Label issues (1)", "Copies and near neighbours (2 + 1)", "Outliers (1)"]
    pair_boxes = [c for c in at.checkbox if c.key.startswith("pair-")]
    assert len(pair_boxes) == 6  # image 0 and image 1 each sit in two pairs: one checkbox per pair side
    assert at.get("download_button")
