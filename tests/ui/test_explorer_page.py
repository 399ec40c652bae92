"""The Explorer page under Streamlit's AppTest: guidance on an empty workspace, one or two maps, the
payload sent to the hover component, and what a click or selection coming back from it shows.

AppTest cannot run the component's JavaScript, so a click is simulated by setting the component's
value (what the browser would send); tests/browser/test_explorer_browser.py does it for real.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from streamlit.testing.v1 import AppTest

from core.base.workspace import Workspace
from core.data.datasets import load_dataset
from core.runs.registry import RunRegistry
from tests.helpers.explorer_page import MAP_KEY, assert_no_exception, open_explorer, settle, spec_of, subheaders
from tests.helpers.photo_grids import photo_grids


@pytest.fixture(autouse=True)
def _no_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOWER_PROBE_PASSWORD", raising=False)


def click(at: AppTest, row: int, *, seq: int) -> None:
    """What the component sends when the user clicks the point of dataset row ``row``."""
    at.session_state[MAP_KEY] = {"event": "click", "rows": [row], "seq": seq}
    at.run()
    assert_no_exception(at)


def galleries(at: AppTest) -> list[list[str]]:
    """The page's photo galleries, each as its captions as shown (``tests.helpers.photo_grids``)."""
    return photo_grids(at)


def test_empty_workspace_explains_and_links_to_train(workspace):
    at = open_explorer()
    info = " ".join(str(element.value) for element in at.info)
    assert "Train" in info and "features" in info
    links = [element.proto.page for element in at.get("page_link")]
    assert "train" in links, links
    assert not at.get("component_instance")


def test_two_runs_side_by_side_with_one_colour_per_class(populated_workspace):
    dataset = load_dataset("synthetic", populated_workspace)
    runs = RunRegistry(populated_workspace.registry_path).list_runs(status="completed")
    at = open_explorer()
    spec = spec_of(at)

    assert len(spec["panels"]) == 2
    titles = " ".join(panel["title"] for panel in spec["panels"])
    assert {run["backbone"] for run in runs} == {"efficientnet_lite0", "resnet50"}
    assert "efficientnet_lite0" in titles and "resnet50" in titles
    colours = [{trace["name"]: trace["colour"] for trace in panel["traces"]} for panel in spec["panels"]]
    assert colours[0] == colours[1], "a class must have the same colour in both maps"
    assert set(colours[0]) == set(dataset.class_names)
    assert len(set(colours[0].values())) == dataset.num_classes, "two classes share a colour"

    # Default part "all images": every readable dataset row, in both maps, each under its true class.
    for panel in spec["panels"]:
        rows = [row for trace in panel["traces"] for row in trace["rows"]]
        assert sorted(rows) == list(range(len(dataset.image_paths)))
        for trace in panel["traces"]:
            assert {dataset.class_names[dataset.labels[row]] for row in trace["rows"]} == {trace["name"]}
    # Tooltip texts are indexed by the same global row ids.
    text = spec["text"]
    assert [text["strings"][index] for index in text["cls"]] == [dataset.class_names[label] for label in dataset.labels]
    assert text["file"] == [path.name for path in dataset.image_paths]


def test_payload_is_bounded_and_carries_no_inline_photos(populated_workspace):
    at = open_explorer()
    components = at.get("component_instance")
    payload = components[0].proto.json_args
    spec = json.loads(payload)["spec"]
    n_rows = len(spec["text"]["cls"])
    assert "data:image" not in payload, "photos must come from sprite sheet files, not inline"
    assert spec["thumbs"]["sheets"] and spec["thumbs"]["n"] == n_rows
    # ~75 bytes a point for two panels (ui.hover_scatter); generous room for file names and titles.
    assert len(payload) < 200 * n_rows + 5_000, f"{len(payload)} bytes for {n_rows} rows"


def test_one_run_gives_one_map(populated_workspace):
    at = open_explorer()
    runs = at.multiselect[0]
    assert len(runs.value) == 2
    runs.set_value(runs.value[:1]).run()
    settle(at)
    assert len(spec_of(at)["panels"]) == 1


def test_click_shows_the_photo_and_its_nearest_neighbours_per_backbone(populated_workspace):
    dataset = load_dataset("synthetic", populated_workspace)
    at = open_explorer()
    k = int(at.number_input(key="explorer_k").value)
    row = 5
    click(at, row, seq=1)

    assert "Selected photos (1)" in subheaders(at) and "Nearest neighbours" in subheaders(at)
    images = galleries(at)
    assert len(images) == 3, "the clicked photo, then one neighbour gallery per map"
    clicked, *neighbours = images
    assert clicked == [f"{dataset.class_names[dataset.labels[row]]}\n{dataset.image_paths[row].name}"]
    for gallery in neighbours:
        assert len(gallery) == k
        captions = gallery
        distances = [float(caption.split(" · ")[0]) for caption in captions]
        assert distances == sorted(distances) and all(0 <= d <= 2 for d in distances)
        assert not any(caption.endswith("\n" + dataset.image_paths[row].name) for caption in captions), (
            "the clicked photo is not its own neighbour"
        )


def test_an_old_event_is_not_handled_again_after_the_view_changes(populated_workspace):
    dataset = load_dataset("synthetic", populated_workspace)
    first, second = (int(row) for row in dataset.split("1")["test"][:2])
    at = open_explorer()
    click(at, first, seq=1)  # a test image, so it is on the next view's map too
    assert "Nearest neighbours" in subheaders(at)

    # Only the test images: the selection is cleared, and the component's unchanged value (same
    # seq, repeated on every rerun) must not bring it back.
    settle(at.selectbox(key="explorer_part").set_value("test").run())
    assert not any(header.startswith("Selected photos") for header in subheaders(at))

    click(at, second, seq=2)
    assert "Selected photos (1)" in subheaders(at)
    assert galleries(at)[0][0].endswith(dataset.image_paths[second].name)


def test_a_box_selection_shows_a_gallery_without_neighbours(populated_workspace):
    at = open_explorer()
    at.session_state[MAP_KEY] = {"event": "select", "rows": [3, 4, 9], "seq": 7}
    at.run()
    assert_no_exception(at)
    assert "Selected photos (3)" in subheaders(at)
    assert "Nearest neighbours" not in subheaders(at)
    assert len(galleries(at)[0]) == 3


def test_colour_by_correct_or_incorrect_on_test_images(populated_workspace):
    at = open_explorer()
    settle(at.selectbox(key="explorer_part").set_value("test").run())
    at.selectbox(key="explorer_colour").set_value("correct").run()
    assert_no_exception(at)
    spec = spec_of(at)
    for panel in spec["panels"]:
        names = {trace["name"] for trace in panel["traces"]}
        assert names <= {"correct", "incorrect"} and names
        for trace in panel["traces"]:
            assert set(trace["correct"]) == {1 if trace["name"] == "correct" else 0}
    assert spec["text"]["pred"] is not None


def test_colour_modes_that_need_predictions_are_offered_only_with_test_images(populated_workspace):
    at = open_explorer()
    settle(at.selectbox(key="explorer_part").set_value("train").run())
    options = at.selectbox(key="explorer_colour").options
    # The rest need no predictions: the two maps' neighbour agreement, the data-health scores.
    assert options[0] == "true class" and all(
        option.startswith(("neighbour agreement", "data health")) for option in options[1:]
    ), options


def test_an_unreadable_photo_shows_a_placeholder(populated_workspace, tmp_path, monkeypatch):
    # A copy whose first image turns to garbage of the same size and date after the server hashed the
    # dataset (a file damaged on disk): the dataset still matches the runs' fingerprint, as the
    # server remembers it, but the photo cannot be decoded.
    root = tmp_path / "workspace"
    shutil.copytree(populated_workspace.root, root, ignore=shutil.ignore_patterns("thumbnails"))
    monkeypatch.setenv("FLOWER_PROBE_WORKSPACE", str(root))
    dataset = load_dataset("synthetic", Workspace.from_env())
    assert dataset.fingerprint  # hashed now, before the damage
    damaged = dataset.image_paths[0]
    stat = damaged.stat()
    damaged.write_bytes(b"\0" * stat.st_size)
    os.utime(damaged, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    at = open_explorer()
    click(at, 0, seq=1)
    captions = galleries(at)[0]
    assert len(captions) == 1 and captions[0].endswith("(unreadable)")


def test_pca_map_keeps_the_class_colours_and_is_the_features_pca(populated_workspace):
    import numpy as np
    from sklearn.decomposition import PCA

    from core.features.extract import read_features
    from core.runs.files import RunFiles

    at = open_explorer()
    tsne = spec_of(at)
    settle(at.radio(key="explorer_method").set_value("pca").run())
    pca = spec_of(at)
    assert all("PCA" in panel["title"] for panel in pca["panels"])
    for before, after in zip(tsne["panels"], pca["panels"]):
        assert {t["name"]: t["colour"] for t in before["traces"]} == {t["name"]: t["colour"] for t in after["traces"]}
    # The first panel is the first chosen run: its positions are scikit-learn's PCA of its features.
    run = RunRegistry(populated_workspace.registry_path).get_run(at.multiselect[0].value[0])
    features = read_features(RunFiles(run, populated_workspace).features)
    expected = PCA(n_components=2, random_state=0).fit_transform(features.features)
    position = {
        row: (x, y) for trace in pca["panels"][0]["traces"] for row, x, y in zip(trace["rows"], trace["x"], trace["y"])
    }
    got = np.array([position[int(row)] for row in features.rows])
    np.testing.assert_allclose(np.abs(got), np.abs(expected), atol=0.01)


def test_colour_by_a_runs_confidence_draws_a_colour_bar(populated_workspace):
    at = open_explorer()
    settle(at.selectbox(key="explorer_part").set_value("test").run())
    other = at.multiselect[0].value[1]  # colour both maps by the second run's predictions
    at.selectbox(key="explorer_colour_run").set_value(other).run()
    at.selectbox(key="explorer_colour").set_value(f"score:confidence:{other}").run()
    assert_no_exception(at)
    expected = {p["row"]: p["confidence"] for p in RunRegistry(populated_workspace.registry_path).predictions(other)}
    for panel in spec_of(at)["panels"]:  # both maps coloured by the chosen run's confidence
        assert panel["colourBar"]["title"] == f"confidence of run #{other}"
        assert panel["colourBar"]["low"] == pytest.approx(min(expected.values()))
        assert panel["colourBar"]["high"] == pytest.approx(max(expected.values()))
        (scored,) = [trace for trace in panel["traces"] if trace["values"] is not None]
        assert scored["values"] == [round(expected[row], 4) for row in scored["rows"]]


def test_colour_by_data_health_scores_of_the_first_maps_features(populated_workspace, tmp_path, monkeypatch):
    import math

    from core.health.checks import HealthConfig, dataset_health

    root = tmp_path / "workspace"  # core.health.checks writes its report into the workspace: use a copy
    shutil.copytree(populated_workspace.root, root)
    monkeypatch.setenv("FLOWER_PROBE_WORKSPACE", str(root))
    at = open_explorer()
    first = RunRegistry(root / "runs.sqlite").get_run(at.multiselect[0].value[0])
    at.selectbox(key="explorer_colour").set_value("health").run()
    assert_no_exception(at)
    from ui.state import job_runner

    (job,) = [job for job in job_runner().jobs() if job.active]  # the checks run as a job, not on the page's thread
    assert job.title.startswith("Data health of ")
    assert at.selectbox(key="explorer_colour").value == "health", "the mode stays chosen while its job runs"
    settle(at)
    report = dataset_health(
        "synthetic",
        first["backbone"],
        workspace=Workspace.from_env(),
        weights=first["weights"],
        config=HealthConfig(split=first["split"]),
    )
    assert report.from_cache, "the page computed and cached the same report"
    chosen = at.selectbox(key="explorer_colour").value
    assert chosen.startswith("score:health:label")
    dataset = load_dataset("synthetic", Workspace.from_env())
    expected = {
        dataset.image_paths.index(dataset.root / report.paths[issue["image"]]): issue["score"]
        for issue in report.label_issues
    }
    panel = spec_of(at)["panels"][0]
    assert panel["colourBar"]["title"].startswith("label quality")
    (scored,) = [trace for trace in panel["traces"] if trace["values"] is not None]
    assert {row: value for row, value in zip(scored["rows"], scored["values"])} == {
        row: round(score, 4) for row, score in expected.items() if not math.isnan(score)
    }


def test_a_map_not_made_yet_is_computed_by_a_job_with_a_progress_bar(populated_workspace, tmp_path, monkeypatch):
    from core.maps import projection
    from ui.state import job_runner

    root = tmp_path / "workspace"  # a copy without the maps the other tests made
    shutil.copytree(populated_workspace.root, root, ignore=shutil.ignore_patterns("maps"))
    monkeypatch.setenv("FLOWER_PROBE_WORKSPACE", str(root))
    monkeypatch.setattr(projection, "_memory", projection.OrderedDict())  # nor any map this process holds
    before = {job.id for job in job_runner().jobs()}

    def new_jobs() -> list:
        return [job for job in job_runner().jobs() if job.id not in before]

    at = open_explorer(wait_for_jobs=False)
    assert not at.get("component_instance"), "no map before its job made it"
    assert len(new_jobs()) == 2 and all(job.title.startswith("t-SNE map of ") for job in new_jobs())
    assert at.get("progress"), "the page shows the jobs' progress"
    at.run()  # a rerun while they run (or after) queues nothing twice
    assert len(new_jobs()) == 2
    settle(at)
    assert len(spec_of(at)["panels"]) == 2
    assert len(new_jobs()) == 2 and all(job.status == "completed" for job in new_jobs())
    assert sorted(p.name for p in (root / "features" / "maps").glob("*.npz")), "the job wrote the maps to disk"
