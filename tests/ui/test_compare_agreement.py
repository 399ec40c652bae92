"""The Compare page's Agreement part: its pure parts on hand-made predictions, and the page under AppTest on the
populated workspace's two runs (efficientnet_lite0 pretrained, resnet50 random)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score
from streamlit.testing.v1 import AppTest

from ui.compare_agreement import disagreement_frames, errors_text, matched_predictions

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 120  # the shared 2-core CPU


def frame(files, truth, predicted, confidence) -> pd.DataFrame:
    """A predictions frame as ``ui.compare.predictions_frame`` makes it (the columns this part reads)."""
    return pd.DataFrame(
        {
            "file": files,
            "true class": truth,
            "predicted class": predicted,
            "confidence": confidence,
            "correct": [t == p for t, p in zip(truth, predicted)],
        }
    )


@pytest.fixture
def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    a = frame(
        ["p1", "p2", "p3", "p4", "p5", "p6"],
        ["rose", "rose", "tulip", "tulip", "daisy", "daisy"],
        ["rose", "rose", "tulip", "rose", "daisy", "tulip"],
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
    )
    # B in another order, with one photo A did not score (p9) and without p6.
    b = frame(
        ["p5", "p9", "p4", "p3", "p2", "p1"],
        ["daisy", "rose", "tulip", "tulip", "rose", "rose"],
        ["rose", "rose", "tulip", "daisy", "rose", "tulip"],
        [0.95, 0.5, 0.6, 0.85, 0.7, 0.55],
    )
    return a, b


def test_matched_predictions_pair_photos_by_file(frames):
    a, b, only_a, only_b = matched_predictions(*frames)
    assert list(a["file"]) == list(b["file"]) == ["p1", "p2", "p3", "p4", "p5"]
    assert (only_a, only_b) == (1, 1)


def test_errors_text_is_kappa_on_the_shared_photos(frames):
    consistency, text = errors_text(*frames)
    # Shared p1..p5: A right on p1 p2 p3 p5, B right on p2 p4.
    right_a, right_b = np.array([1, 1, 1, 0, 1], bool), np.array([0, 1, 0, 1, 0], bool)
    assert consistency.n_images == 5
    assert consistency.kappa == pytest.approx(cohen_kappa_score(right_a, right_b))
    assert "Only the 5 test photos both runs scored count (1 only A scored, 1 only B" in text
    none, reason = errors_text(frames[0], frames[1].assign(file=["x1", "x2", "x3", "x4", "x5", "x6"]))
    assert none is None and "share no test photo" in reason


def test_disagreement_frames_hold_each_runs_wins_most_confident_mistake_first(frames):
    only_a, only_b = disagreement_frames(*frames)
    assert list(only_a["file"]) == ["p5", "p3", "p1"]  # B's wrong confidence 0.95, 0.85, 0.55
    assert list(only_a["b_predicted"]) == ["rose", "daisy", "tulip"]
    assert list(only_b["file"]) == ["p4"] and list(only_b["a_predicted"]) == ["rose"]


def test_the_agreement_part_on_the_compare_page(populated_workspace):
    from ui.compare import VIEWS_KEY

    at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=TIMEOUT_S).run()
    at.switch_page("pages/compare.py").run()
    at.button_group(key=VIEWS_KEY).set_value(["Agreement"]).run()
    assert not at.exception, [e.message for e in at.exception]
    assert [s.value for s in at.subheader] == ["Agreement"]
    text = "\n".join(m.value for m in at.markdown).replace("\\", "")
    assert "Their neighbourhoods agree on" in text and "of neighbours" in text
    assert "CKA " in text and "kappa" in text and "McNemar" in text
    captions = "\n".join(c.value for c in at.caption).replace("\\", "")  # Markdown escapes (run names, _)
    assert "efficientnet_lite0 · pretrained · gap features" in captions
    assert "resnet50 · random weights · gap features" in captions
    galleries = [h for h in at.get("html") if 'data-testid="photo-grid"' in h.proto.body]
    plain = [m.value.replace("\\", "") for m in at.markdown]
    headings = [value for value in plain if value.startswith(("**A right, B wrong", "**B right, A wrong"))]
    counts = [int(heading.rsplit("(", 1)[1].rstrip(")").replace(",", "")) for heading in headings]
    assert len(headings) == 2 and sum(counts) > 0  # a pretrained and a random-weight backbone part somewhere
    assert len(galleries) == sum(count > 0 for count in counts)

    at.number_input(key="agreement_k").set_value(200).run()  # more than the 136 images allow
    assert not at.exception
    assert any("k must be an integer from 1 to 135" in c.value.replace("\\", "") for c in at.caption)
    at.selectbox(key="agreement_b").set_value(at.selectbox(key="agreement_a").value).run()
    assert any("Choose two different runs" in i.value for i in at.info)
