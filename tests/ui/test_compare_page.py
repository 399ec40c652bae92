"""The Compare page with probe runs: its parts (ui.compare) unit-tested, and the new sections under AppTest:
the protocols table, the few-shot curves, the paired comparison in words, the gallery scroll, the CSVs."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.base.workspace import Workspace
from core.probing.suite import run_probe_suite
from core.probing.summary import summarise_runs
from core.runs.registry import RunRegistry
from tests.helpers.workspaces import use_workspace

ROOT = Path(__file__).resolve().parents[2]
PAGE = "pages/compare.py"
TIMEOUT_S = 120  # the shared 2-core CPU


@pytest.fixture(scope="module")
def probe_root(populated_root, tmp_path_factory) -> Path:
    """The populated workspace (efficientnet_lite0 and random resnet50, features cached) plus a small probe suite
    (the cheap protocols: logreg's 15 fits per run are tested in test_probes)."""
    root = tmp_path_factory.mktemp("probed") / "workspace"
    shutil.copytree(populated_root, root)
    run_probe_suite(
        dataset="synthetic",
        backbones=["efficientnet_lite0", "resnet50@random"],
        protocols=["mlp", "knn", "ncm"],
        shots=[1, 2, None],
        seeds=2,
        workspace=Workspace(root=root, data_root=root / "datasets"),
    )
    return root


@pytest.fixture
def probed(probe_root, monkeypatch) -> Workspace:
    return use_workspace(monkeypatch, probe_root)


def open_compare(views=None, runs: list[int] | None = None) -> AppTest:
    """The Compare page, showing ``views`` (default: what it opens on, ``ui.compare.DEFAULT_VIEWS``); ``runs`` opens
    it on those runs, as a shared link (``?dataset=synthetic&runs=...``) does."""
    at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=TIMEOUT_S)
    if runs:
        at.query_params.update({"dataset": "synthetic", "runs": ",".join(map(str, runs))})
    at.run()
    at.switch_page(PAGE).run()
    if views is not None:
        show_views(at, views)
    assert not at.exception, [e.message for e in at.exception]
    return at


def show_views(at: AppTest, views) -> AppTest:
    """Pick ``views`` in the page's view control, as a user's clicks do, and rerun."""
    from ui.compare import VIEWS_KEY

    at.button_group(key=VIEWS_KEY).set_value(list(views)).run()
    return at


def full_runs(workspace: Workspace) -> list[dict]:
    return RunRegistry(workspace.registry_path).list_runs(status="completed", few_shot=False)


# ----------------------------------------------------------------------------------------------- ui.compare, no page


def test_run_names_keep_weights_protocols_and_checkpoints_apart(probed):
    from core.runs.naming import run_name, weights_name

    names = [run_name(run) for run in full_runs(probed)]
    assert len(set(names)) == len(names)
    assert any(
        re.fullmatch(r"#\d+ resnet50 · random weights · gap · reference MLP · all shots · split 1 · \d+\.\d % test", n)
        for n in names
    ), names
    assert any(" · k-NN · " in n and "efficientnet_lite0 · pretrained" in n for n in names), names
    assert weights_name("/a/one.pth") != weights_name("/b/two.pth")


def test_runs_table_csv_is_formula_safe_with_iso_times(probed):
    from core.base.csv_export import csv_text
    from ui.compare import runs_table

    runs = full_runs(probed)
    rows = list(csv.DictReader(io.StringIO(csv_text(runs_table(runs)))))
    assert len(rows) == len(runs)
    for row in rows:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", row["finished"]), row["finished"]
        assert "ago" not in row["finished"] and "None" not in row.values()
        if row["protocol"] != "mlp" or row["run"] in {str(r["id"]) for r in runs if r["metrics"]}:
            # Two numeric columns: float() of each cell, no text to split.
            low, high = float(row["95 % CI low"]), float(row["95 % CI high"])
            assert low <= float(row["test acc %"]) <= high
        # A sensible precision: no float32 noise such as 97.64705657958984.
        assert len(row["test acc %"].split(".")[-1]) <= 2, row["test acc %"]


def test_the_page_summary_groups_as_the_cli_does(probed):
    """One grouping (core.probing.summary) for Compare and the CLI: head type and standardisation keep runs apart."""
    from core.__main__ import comparison_table
    from ui.compare import split_summary

    runs = [r for r in full_runs(probed) if r["protocol"] == "mlp"]
    mlp, other = (
        runs[0],
        {
            **runs[0],
            "id": 999,
            "config": {**runs[0]["config"], "head": {**runs[0]["config"]["head"], "standardise": True}},
        },
    )
    assert len(summarise_runs([mlp, other])) == 2
    assert len(split_summary([mlp, other])) == 2
    assert len(comparison_table([mlp, other]).splitlines()) == 1 + 2


def test_protocols_frame_and_fewshot_points(probed):
    from ui.compare import fewshot_plot_points, protocols_frame

    full = full_runs(probed)
    frame = protocols_frame(full)
    assert list(frame.columns) == ["backbone", "weights", "features", "mlp", "knn", "ncm"]
    assert set(zip(frame["backbone"], frame["weights"])) == {
        ("efficientnet_lite0", "pretrained"),
        ("resnet50", "random weights"),
    }
    knn = [r for r in full if r["protocol"] == "knn" and r["backbone"] == "resnet50"][0]
    low, high = knn["metrics"]["test_acc_ci"]
    assert frame[frame["backbone"] == "resnet50"]["knn"].item() == f"{knn['test_acc']:.1f} ({low:.1f} to {high:.1f})"
    # The reference mlp cell holds two runs (the populated workspace's own and the suite's): mean ± std.
    assert "(2 runs)" in frame[frame["backbone"] == "resnet50"]["mlp"].item()

    few = RunRegistry(probed.registry_path).list_runs(status="completed", few_shot=True)
    points = fewshot_plot_points(few, full)
    lines = {p["label"] for p in points}
    assert len(lines) == 2 * 3
    for label in lines:
        xs = sorted(p["x"] for p in points if p["label"] == label)
        assert xs[:2] == [1, 2] and xs[2] == pytest.approx(
            4.0
        )  # the whole training part: 4 images a class in the tiny set


def test_paired_text_needs_the_same_test_images(probed):
    from ui.compare import paired_text, predictions_frame
    from ui.state import run_predictions

    runs = [r for r in full_runs(probed) if r["protocol"] == "knn"]
    frames = [predictions_frame(r, run_predictions(r)) for r in runs]
    sentence = paired_text(runs[0], runs[1], frames[0], frames[1])
    assert re.search(r"(beats .* by \d+\.\d points|tie), 95 % CI -?\d+\.\d to -?\d+\.\d, McNemar p", sentence), sentence
    assert "cannot be paired" in paired_text(runs[0], runs[1], frames[0], frames[1].iloc[:-1])
    assert paired_text(runs[0], runs[0], frames[0], frames[0]) == "Choose two different runs."


# ----------------------------------------------------------------------------------------------- the page


def test_compare_opens_on_its_overview_and_shows_each_view_picked(probed):
    from ui.compare import DEFAULT_VIEWS, VIEWS

    at = open_compare()
    assert at.button_group(key="compare_views").value == list(DEFAULT_VIEWS)
    assert not at.get("plotly_chart"), "the overview draws no chart"
    show_views(at, ["Confusion matrices"])
    assert [s.value for s in at.subheader] == ["Confusion matrices"] and len(at.get("plotly_chart")) == 2
    show_views(at, [])
    assert not at.subheader and any("Choose above what to show" in c.value for c in at.caption)
    show_views(at, VIEWS)
    assert not at.exception and len(at.subheader) >= len(VIEWS)


def test_compare_shows_protocols_fewshot_curves_and_the_paired_comparison(probed):
    from ui.compare import VIEWS

    at = open_compare(VIEWS)
    assert "Protocols" in [s.value for s in at.subheader]
    protocols = next(frame.value for frame in at.dataframe if "knn" in frame.value.columns)
    assert len(protocols) == 2
    charts = [json.loads(element.proto.spec) for element in at.get("plotly_chart")]
    # The few-shot chart is the first with a log x axis ("Labels needed", under it, plots a fitted curve on one too).
    fewshot = [c for c in charts if c["layout"].get("xaxis", {}).get("type") == "log"][:1]
    assert len(fewshot) == 1
    lines = [trace for trace in fewshot[0]["data"] if trace.get("mode") == "lines+markers"]
    names = {trace.get("name") for trace in lines}
    assert "resnet50 · random weights · gap · k-NN" in names and len(names) == 2 * 3
    # Colour by backbone and weights, line style by protocol: two colours, three dashes.
    assert len({t["line"]["color"] for t in lines}) == 2 and len({t["line"].get("dash") for t in lines}) == 3
    # Default runs: core.runs.sanity's rule, the best on validation of each backbone, weights and split.
    from core.runs.sanity import default_runs

    expected = default_runs(full_runs(probed), per_split=True)
    assert sorted(at.dataframe[0].value["run"]) == sorted(r["id"] for r in expected)
    # The overview's paired comparison, and the same sentence beside kappa in the Agreement part.
    paired = [m.value for m in at.markdown if "McNemar" in m.value]
    assert len(paired) == 1 + ("Agreement" in VIEWS) and all(re.search(r"beats|tie", p) for p in paired)
    assert len(at.get("download_button")) == 2


def test_compare_shows_calibration_and_offers_to_measure_cost(probed):
    # The reference (mlp) runs, opened by link: each has a fitted temperature.
    newest_mlp = {}
    for run in full_runs(probed):  # newest first
        if run["protocol"] == "mlp":
            newest_mlp.setdefault((run["backbone"], run["weights"]), run["id"])
    at = open_compare(["Accuracy vs cost", "Calibration"], runs=sorted(newest_mlp.values()))
    assert [s.value for s in at.subheader] == ["Accuracy vs cost", "Calibration"]
    table = next(frame.value for frame in at.dataframe if "ECE % scaled" in frame.value.columns)
    # The default runs are reference (mlp) heads: each has a fitted temperature and a reliability diagram.
    assert len(table) == 2 and table["temperature"].notna().all() and (table["ECE %"] >= 0).all()
    charts = [json.loads(element.proto.spec) for element in at.get("plotly_chart")]
    assert len(charts) == 2 and all(c["layout"]["xaxis"]["title"]["text"].startswith("confidence") for c in charts)
    # No cost measured in this workspace: the view says so and offers the measurement as a job.
    assert any("Cost not measured yet" in c.value for c in at.caption)
    assert any(b.label.startswith("Measure the cost of 2 backbone") for b in at.button)


def test_the_cell_gallery_scrolls_into_view_after_a_click(probed):
    at = open_compare(["Confusion matrices"])
    scripts = [e for e in at.get("html") if "scrollIntoView" in str(e.proto)]
    assert not scripts  # a plain visit does not jump
    at.session_state["cell_scroll"] = True  # what a click on a matrix cell sets (ui.compare.select_cell)
    at.run()
    scripts = [e for e in at.get("html") if "scrollIntoView" in str(e.proto)]
    assert len(scripts) == 1
    at.run()
    assert not [e for e in at.get("html") if "scrollIntoView" in str(e.proto)]  # once per click


def test_the_train_page_launches_a_probe_suite_through_the_job_runner(probe_root, tmp_path, monkeypatch):
    from ui.state import job_runner

    root = tmp_path / "workspace"
    shutil.copytree(probe_root, root)
    use_workspace(monkeypatch, root)
    before = len(RunRegistry(root / "runs.sqlite").list_runs()) if (root / "runs.sqlite").exists() else None
    at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=TIMEOUT_S).run()
    at.switch_page("pages/train.py").run()
    at.selectbox(key="train_dataset").set_value("synthetic").run()
    at.multiselect(key="train_backbones").set_value(["resnet50@random"]).run()  # its features are cached in the copy
    at.multiselect(key="train_protocols").set_value(["knn", "ncm"])
    at.multiselect(key="train_shots").set_value(["1", "all"]).run()  # a few-shot level: draws per level enabled
    assert at.number_input(key="train_draws").disabled is False
    assert "train_epochs" not in [n.key for n in at.number_input]  # the MLP's settings only while it is chosen
    at.number_input(key="train_draws").set_value(2)
    at.button(key="train_launch").click().run()
    assert not at.exception, [e.message for e in at.exception]
    queued = [s.value for s in at.success if "Queued as job" in s.value]
    assert queued and "6 runs" in queued[0], [e.value for e in at.error]
    job = job_runner().wait(int(re.search(r"job (\d+)", queued[0]).group(1)), timeout_s=300)
    assert job.status == "completed", job.error
    assert len(job.run_ids) == 2 * (2 + 1)
    registry = RunRegistry(Workspace.from_env().registry_path)
    assert before is None or len(registry.list_runs()) == before + 6


def test_the_chosen_hyperparameter_reads_one_value_or_one_per_name():
    from ui.compare import _chosen

    assert _chosen({"metrics": {"hyperparameter": {"name": "lr", "value": 0.05}}, "best_epoch": None}) == "lr 0.05"
    attentive = {"name": "lr, weight decay", "value": [0.003, 0.0005]}
    assert _chosen({"metrics": {"hyperparameter": attentive}, "best_epoch": None}) == "lr, weight decay 0.003, 0.0005"
    assert _chosen({"metrics": {}, "best_epoch": 5}) == "epoch 5"
