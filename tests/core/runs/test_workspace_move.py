"""A workspace copied to another folder (``cp -r``) and opened there: every page finds its runs' files.

Runs record their features and heads relative to the workspace and their test photos relative to the
dataset's folder (``core.runs.files``); runs recorded before that hold absolute paths, and must still be
read. The moved copy here holds one run of each kind, and the folder it was copied from is deleted
before any page opens, so a photo, a feature file or a head can only come from the new location.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.base.workspace import Workspace
from core.data.datasets import dataset_folder
from core.predict.classify import Predictor
from core.runs.files import RunFiles, stored_path
from core.runs.registry import RunRegistry
from tests.helpers.photo_grids import photo_grids
from ui.navigation import PAGES as MENU

ENTRY = Path(__file__).resolve().parents[3] / "dashboard.py"
PAGES = [entry.script for entry in MENU]  # the dashboard's menu (dashboard.py draws ui.navigation.PAGES)
RENDER_TIMEOUT_S = 120  # cold caches: t-SNE and thumbnails of the moved copy, on a shared 2-core CPU
UNREADABLE = "(unreadable)"  # what the galleries add to the caption of a photo they could not open


def _make_legacy(root: Path, run: dict) -> None:
    """Rewrite ``run`` in the registry at ``root`` as code before ``core.runs.files`` recorded it: absolute paths."""
    ws = Workspace(root=root, data_root=root / "datasets")
    images = dataset_folder(run["dataset_key"], ws)
    with sqlite3.connect(root / "runs.sqlite") as conn:
        conn.execute(
            "UPDATE runs SET features_path=?, head_path=? WHERE id=?",
            (str(root / run["features_path"]), str(root / run["head_path"]), run["id"]),
        )
        conn.execute("UPDATE predictions SET path=? || '/' || path WHERE run_id=?", (str(images), run["id"]))


@pytest.fixture
def moved(populated_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Workspace, int, int]:
    """The populated workspace as it was at ``<tmp>/original`` (one run rewritten as an old absolute record),
    copied to ``<tmp>/elsewhere/workspace``; the original is deleted. Returns (workspace, new run id, old run id)."""
    original = tmp_path / "original"
    shutil.copytree(populated_root, original, ignore=shutil.ignore_patterns("thumbnails"))
    runs = RunRegistry(original / "runs.sqlite").list_runs(status="completed")
    assert len(runs) == 2
    relative, legacy = runs
    _make_legacy(original, legacy)

    root = tmp_path / "elsewhere" / "workspace"
    shutil.copytree(original, root)  # what ``cp -r`` does
    shutil.rmtree(original)
    monkeypatch.setenv("FLOWER_PROBE_WORKSPACE", str(root))
    monkeypatch.delenv("FLOWER_PROBE_DATA_ROOT", raising=False)
    monkeypatch.delenv("FLOWER_PROBE_PASSWORD", raising=False)
    return Workspace.from_env(), relative["id"], legacy["id"]


def test_new_runs_record_paths_relative_to_the_workspace_and_the_dataset(populated_workspace):
    registry = RunRegistry(populated_workspace.registry_path)
    images = dataset_folder("synthetic", populated_workspace)
    for run in registry.list_runs(status="completed"):
        assert run["features_path"].startswith("features/") and run["head_path"] == f"heads/run-{run['id']}.safetensors"
        stored = [p["path"] for p in registry.predictions(run["id"])]
        assert stored and all(not Path(p).is_absolute() and (images / p).is_file() for p in stored)
        files = RunFiles(run, populated_workspace)
        assert files.features == populated_workspace.root / run["features_path"] and files.features.exists()
        assert files.images(stored) == [images / p for p in stored]


def test_stored_path_is_relative_inside_its_base_and_absolute_outside(tmp_path):
    head = tmp_path / "ws" / "heads" / "run-1.safetensors"
    assert stored_path(head, base=tmp_path / "ws") == "heads/run-1.safetensors"
    assert stored_path(tmp_path / "elsewhere.npz", base=tmp_path / "ws") == str(tmp_path / "elsewhere.npz")


def test_run_files_are_found_in_the_moved_copy_for_new_and_old_records(moved):
    ws, relative_id, legacy_id = moved
    registry = RunRegistry(ws.registry_path)
    legacy = registry.get_run(legacy_id)
    old_head = Path(legacy["head_path"])
    assert old_head.is_absolute() and not old_head.exists()  # really an old record, its place gone
    for run_id in (relative_id, legacy_id):
        run = registry.get_run(run_id)
        files = RunFiles(run, ws)
        assert files.features.is_relative_to(ws.root) and files.features.exists()
        assert files.head == ws.heads_dir / f"run-{run_id}.safetensors"
        photos = files.images([p["path"] for p in registry.predictions(run_id)])
        assert all(p.is_relative_to(ws.data_root) and p.is_file() for p in photos)
        # Classify's path: the head and the training features from the moved copy.
        predictor = Predictor.from_run(run_id, workspace=ws)
        assert all(p.is_relative_to(ws.root) for p in predictor.reference_paths())


def _open(at: AppTest, page: str) -> AppTest:
    at.switch_page(page).run()
    if page.endswith("compare.py"):  # every view: its galleries too
        from ui.compare import VIEWS, VIEWS_KEY

        at.button_group(key=VIEWS_KEY).set_value(list(VIEWS)).run()
    assert not at.exception, f"{page}: {[e.message for e in at.exception]}"
    return at


def _captions(at: AppTest) -> list[str]:
    """Gallery captions as the reader sees them (tests.helpers.photo_grids)."""
    return [caption for grid in photo_grids(at) for caption in grid]


def test_every_page_shows_the_photos_from_the_moved_copy(moved):
    ws, relative_id, legacy_id = moved
    assert set(PAGES) >= {"pages/dataset.py", "pages/compare.py", "pages/explorer.py", "pages/classify.py"}
    at = AppTest.from_file(str(ENTRY), default_timeout=RENDER_TIMEOUT_S)
    at.run()
    for page in PAGES:
        _open(at, page)
        if page == "pages/dataset.py":
            assert len(photo_grids(at)) == 17 and not any(UNREADABLE in c for c in _captions(at))
        elif page == "pages/compare.py":
            assert {int(r) for r in at.dataframe[0].value["run"]} == {relative_id, legacy_id}
            # The cell gallery and one misclassified gallery per run (tabs all render): photos, none unreadable.
            assert len(photo_grids(at)) >= 2, "the galleries show no photos"
            assert not any(UNREADABLE in c for c in _captions(at)), _captions(at)
            files = [f for frame in at.dataframe if "file" in frame.value.columns for f in frame.value["file"]]
            assert files and all(Path(f).is_relative_to(ws.data_root) for f in files), files[:3]
        elif page == "pages/explorer.py":
            from ui.state import job_runner

            for job in [job for job in job_runner().jobs() if job.active]:  # the maps are made by jobs
                assert job_runner().wait(job.id, timeout_s=RENDER_TIMEOUT_S).status == "completed", job.title
            at.run()
            components = at.get("component_instance")
            assert len(components) == 1, "no map: the runs' features were not found"
            spec = json.loads(components[0].proto.json_args)["spec"]
            assert len(spec["panels"]) == 2, "a run's features were not found"
            at.session_state["explorer-map"] = {"event": "click", "rows": [0], "seq": 1}  # the component's plain event
            at.run()
            assert not at.exception and photo_grids(at), "a click shows no photo"
            assert not any(UNREADABLE in c for c in _captions(at)), _captions(at)
            manifests = [json.loads(m.read_text()) for m in ws.thumbnails_dir.rglob("manifest.json")]
            assert manifests and all(m["n_placeholders"] == 0 for m in manifests), "hover photos are placeholders"
        elif page == "pages/classify.py":
            samples = next(m for m in at.multiselect if m.options)
            samples.set_value([samples.options[0]]).run()
            assert not at.exception and not at.error, [e.value for e in at.error]
            assert photo_grids(at), "no photo or neighbour shown"
