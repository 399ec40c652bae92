"""ui/home.py and ui/train.py without a page, and both pages under AppTest: presets, backbone specs, durations.

The helpers are plain functions of their inputs; the page tests check what a new user meets: the offline
demo offered with its expected duration before the click (measured once the workspace has timed a backbone,
an estimate before), and the Train form defaulting to one architecture pretrained and random.
"""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from core.backbones.registry import list_backbones
from core.data.datasets import OXFORD17_KEY, SYNTHETIC_KEY, DatasetEntry
from core.probing.experiment import GENERATE_KEY, DurationEstimate, parse_backbone, record_rate
from core.probing.presets import OFFLINE_DEMO, REFERENCE
from ui.home import recent_runs_frame
from ui.launch import duration_text
from ui.state import device_label
from ui.train import TrainForm, backbone_options, default_backbones, default_dataset

ROOT = Path(__file__).resolve().parents[2]


def test_every_backbone_is_offered_pretrained_and_random():
    options = backbone_options()
    assert len(options) == 2 * len(list_backbones())
    assert {parse_backbone(o).backbone for o in options} == set(list_backbones())
    assert {parse_backbone(o).weights for o in options} == {"pretrained", "random"}
    assert set(OFFLINE_DEMO.backbones) <= set(options) and set(REFERENCE.backbones) <= set(options)


def test_defaults_follow_what_is_on_disk():
    assert default_backbones(reference_ready=True) == list(REFERENCE.backbones)
    assert default_backbones(reference_ready=False) == list(OFFLINE_DEMO.backbones)
    entries = {
        OXFORD17_KEY: DatasetEntry(OXFORD17_KEY, "Oxford", False),
        SYNTHETIC_KEY: DatasetEntry(SYNTHETIC_KEY, "Synthetic", False),
    }
    assert default_dataset(entries, reference_ready=False) == SYNTHETIC_KEY  # no download needed
    assert default_dataset(entries, reference_ready=True) == OXFORD17_KEY


def test_train_form_title_names_each_backbone_with_its_weights():
    form = TrainForm(
        dataset="synthetic",
        dataset_name="Synthetic Flowers",
        split="1",
        backbones=["efficientnet_lite0", "efficientnet_lite0@random"],
        head={},
        device="auto",
        precision="auto",
    )
    assert form.title == "efficientnet_lite0, efficientnet_lite0 (random weights) on Synthetic Flowers, split 1"


def test_recent_runs_frame_labels_weights_and_synthetic_data():
    from core.runs.naming import run_name

    run = {
        "id": 7,
        "backbone": "resnet50",
        "weights": "random",
        "dataset_name": "Synthetic Flowers",
        "synthetic": True,
        "split": "1",
        "test_acc": 12.5,
        "finished_at": None,
        "status": "completed",
        "config": {"head": {"head": "mlp"}},
        "features": "gap",
        "protocol": "mlp",
        "shots": None,
    }
    runs = [run, {**run, "id": 8, "weights": "pretrained", "dataset_name": "mine", "synthetic": True}]
    frame = recent_runs_frame(runs)
    # The one name of a run (core.runs.naming), weights and all.
    assert frame["run"].tolist() == [run_name(r) for r in runs]
    assert " · random weights · " in frame["run"][0] and " · pretrained · " in frame["run"][1]
    assert frame["dataset"].tolist() == ["Synthetic Flowers", "mine (synthetic)"]


def test_duration_text_says_whether_it_was_measured():
    measured = DurationEstimate(
        seconds=95, steps=(("a", 60.0, "measured"), ("b", 0.0, "cached"), ("c", 35.0, "overhead"))
    )
    guessed = DurationEstimate(seconds=300, steps=(("a", 300.0, "estimate"),))
    assert duration_text(measured) == (
        "Expected duration: about 1 min 35 s here (from extraction rates measured in this workspace; "
        "reuses 1 cached feature set(s))."
    )
    assert "an estimate" in duration_text(guessed) and "5 min 00 s" in duration_text(guessed)
    assert duration_text(None) == ""


def _home(workspace) -> AppTest:
    at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=120).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def _duration_captions(at: AppTest) -> list[str]:
    return [str(c.value) for c in at.caption if str(c.value).startswith("Expected duration")]


def test_home_states_the_offline_demos_duration_before_the_click(workspace):
    at = _home(workspace)
    assert "Run the offline demo" in [b.label for b in at.button]
    before = _duration_captions(at)
    assert len(before) == 1 and "an estimate" in before[0], before
    # Once this workspace has timed the backbone and the generator, the same caption is a measurement.
    record_rate(workspace, what="efficientnet_lite0", device=device_label(), images_per_s=1360 / 40)
    record_rate(workspace, what=GENERATE_KEY, device="cpu", images_per_s=1360 / 20)
    after = _duration_captions(at.run())
    # 20 s drawing + 2 x 40 s of features + 2 runs' overhead (core.probing.experiment.ESTIMATED_RUN_OVERHEAD_S = 5 s
    # each).
    assert after == ["Expected duration: about 1 min 50 s here (from extraction rates measured in this workspace)."], (
        after
    )


def test_home_offers_the_random_resnet_as_an_option(workspace):
    at = _home(workspace)
    plain = _duration_captions(at)[0]
    at.checkbox(key="home_demo_resnet").check().run()
    assert not at.exception
    assert _duration_captions(at)[0] != plain  # one more backbone to extract


def test_train_defaults_to_one_architecture_pretrained_and_random(workspace):
    at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=120).run()
    at.switch_page("pages/train.py").run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.multiselect(key="train_backbones").value == list(OFFLINE_DEMO.backbones)
    # One evaluation form: the reference MLP preselected on the whole training part, its settings in view.
    assert at.multiselect(key="train_protocols").value == ["mlp"]
    assert at.multiselect(key="train_shots").value == ["all"]
    assert at.number_input(key="train_draws").disabled  # nothing to draw on the whole training part
    assert at.number_input(key="train_epochs").value == REFERENCE.head.epochs
    assert at.toggle(key="train_standardise").value is REFERENCE.head.standardise
    assert [b.label for b in at.button if b.key == "train_launch"] == ["Launch"]  # the one Launch button
    assert len(_duration_captions(at)) == 1
    # Without the MLP protocol its settings leave the form.
    at.multiselect(key="train_protocols").set_value(["knn"]).run()
    assert not at.exception, [e.message for e in at.exception]
    assert "train_epochs" not in [n.key for n in at.number_input]


def test_evaluation_is_a_comparison_only_for_the_reference_mlp_alone_on_every_image():
    from ui.probe_form import Evaluation

    assert Evaluation().is_comparison and Evaluation().seeds == [REFERENCE.head.seed]
    assert not Evaluation(protocols=("mlp", "knn")).is_comparison
    assert not Evaluation(shots=("4", "all")).is_comparison
    assert not Evaluation(features=("gap",)).is_comparison
    # Few-shot levels draw `draws` seeds from the first; the whole training part alone runs once.
    assert Evaluation(shots=("4", "all"), seed=3, draws=2).seeds == [3, 4]
    assert Evaluation(shots=("all",), seed=3, draws=2).seeds == [3]


def test_feature_cache_entries_count_sharded_folders_and_older_files(tmp_path):
    from ui.home import feature_cache_entries

    (tmp_path / "a-sharded").mkdir()
    (tmp_path / "a-sharded" / "manifest.json").write_text("{}")
    (tmp_path / "b-unfinished").mkdir()  # no manifest yet: an extraction in progress
    (tmp_path / "c-old.npz").write_bytes(b"x")
    (tmp_path / "c-old.lock").write_bytes(b"")
    assert [p.name for p in feature_cache_entries(tmp_path)] == ["a-sharded", "c-old.npz"]
    assert feature_cache_entries(tmp_path / "missing") == []
