"""The Compare page's Agreement part: for two chosen runs, how much their feature spaces agree and whether they make
the same mistakes, in one sentence per measure, and the test photos each run gets right and the other gets wrong.

The measures are ``core.agreement.measures``'; the features are those the two runs were trained on
(``core.agreement.pairs.run_feature_pair``), matched image by image. They are computed in the page's thread, cached
per pair of runs and k (``st.cache_data``: a completed run never changes): for Oxford 17's 1,360 images the whole
feature part takes a fraction of a second (``python -m bench --only agreement``); kappa needs only the runs' stored
test predictions. The part's text is built by pure functions (tested without a page).
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.agreement.measures import (
    DEFAULT_K,
    ErrorConsistency,
    cka_sentence,
    error_consistency,
    feature_agreement,
    kappa_sentence,
    neighbour_sentence,
)
from core.agreement.pairs import paired_correct, run_feature_pair
from core.base.errors import FlowerProbeError
from core.base.text import markdown_text
from core.runs.naming import run_name
from ui.compare import GALLERY_LIMIT, paired_text
from ui.state import workspace
from ui.widgets import photo_grid

THUMB_PX = 104  # two galleries side by side: four photos a row each on a 1,400 px page
KEYS = ("agreement_a", "agreement_b", "agreement_k")


@st.cache_data(show_spinner=False, max_entries=32)
def _feature_measures(
    root: str, id_a: int, created_a: float, id_b: int, created_b: float, k: int, _run_a: dict, _run_b: dict
) -> tuple[list[str], str, str, str] | str:
    """(the measures' sentences, A's features, B's features, note on left-out images), or the reason there are none;
    all plain text.

    Keyed by the workspace, the two runs (id and creation time: a completed run's features never change) and k."""
    try:
        pair = run_feature_pair(_run_a, _run_b, workspace=workspace())
        measures = feature_agreement(pair.features_a, pair.features_b, k=k)
    except FlowerProbeError as exc:
        return str(exc)
    sentences = [neighbour_sentence(measures), cka_sentence(measures)]
    return sentences, pair.source_a.describe(), pair.source_b.describe(), pair.note


def feature_measures(run_a: dict, run_b: dict, *, k: int) -> tuple[list[str], str, str, str] | str:
    """``_feature_measures`` of two runs (cached)."""
    return _feature_measures(
        str(workspace().root), run_a["id"], run_a["created_at"], run_b["id"], run_b["created_at"], k, run_a, run_b
    )


def matched_predictions(frame_a: pd.DataFrame, frame_b: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, int, int]:
    """The two runs' predictions frames (``ui.compare.predictions_frame``) on the test photos both scored, matched by
    file, in A's order; and how many only A or only B scored."""
    index_a, index_b = [], []
    position_b = {file: i for i, file in enumerate(frame_b["file"])}
    for i, file in enumerate(frame_a["file"]):
        if file in position_b:
            index_a.append(i)
            index_b.append(position_b[file])
    a = frame_a.iloc[index_a].reset_index(drop=True)
    b = frame_b.iloc[index_b].reset_index(drop=True)
    return a, b, len(frame_a) - len(a), len(frame_b) - len(b)


def errors_text(frame_a: pd.DataFrame, frame_b: pd.DataFrame) -> tuple[ErrorConsistency | None, str]:
    """Error consistency of two runs' test predictions and its sentence, or None and why there is none."""
    try:
        a, b, only_a, only_b = paired_correct(
            list(frame_a["file"]), frame_a["correct"].to_numpy(), list(frame_b["file"]), frame_b["correct"].to_numpy()
        )
    except FlowerProbeError:
        return None, "The two runs share no test photo (other splits), so their mistakes cannot be compared."
    consistency = error_consistency(a, b)
    text = kappa_sentence(consistency)
    if only_a or only_b:
        text += (
            f" Only the {len(a):,} test photos both runs scored count ({only_a:,} only A scored, {only_b:,} only B: "
            "another split or other exclusions)."
        )
    return consistency, text


def disagreement_frames(frame_a: pd.DataFrame, frame_b: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The matched test photos only A gets right, and those only B gets right; each with B's (or A's) wrong class
    and confidence beside, the other run's most confident mistakes first."""
    a, b, _, _ = matched_predictions(frame_a, frame_b)
    both = a[["file", "true class"]].assign(
        a_right=a["correct"].to_numpy(),
        b_right=b["correct"].to_numpy(),
        a_predicted=a["predicted class"].to_numpy(),
        b_predicted=b["predicted class"].to_numpy(),
        a_confidence=a["confidence"].to_numpy(),
        b_confidence=b["confidence"].to_numpy(),
    )
    only_a = both[both["a_right"] & ~both["b_right"]].sort_values("b_confidence", ascending=False)
    only_b = both[~both["a_right"] & both["b_right"]].sort_values("a_confidence", ascending=False)
    return only_a, only_b


def _captions(frame: pd.DataFrame, wrong: str) -> list[str]:
    """``tulip\\nB: daisy (82 %)``: the true class, then what the run that got it wrong said."""
    return [
        f"{true}\n{wrong.upper()}: {predicted} ({confidence:.0%})"
        for true, predicted, confidence in zip(
            frame["true class"], frame[f"{wrong}_predicted"], frame[f"{wrong}_confidence"]
        )
    ]


def _gallery(container, frame: pd.DataFrame, *, wrong: str, title: str) -> None:
    container.markdown(f"**{markdown_text(title)}** ({len(frame):,})")
    if frame.empty:
        container.caption("None.")
        return
    shown = frame.head(GALLERY_LIMIT)
    photo_grid(list(shown["file"]), _captions(shown, wrong), size=THUMB_PX, container=container)
    if len(frame) > GALLERY_LIMIT:
        container.caption(f"Showing {GALLERY_LIMIT} of {len(frame):,}, the other run's most confident mistakes first.")


def show_agreement(runs: list[dict], predictions: dict[int, pd.DataFrame]) -> None:
    """The Agreement part: two run pickers, k, the sentences, and the two galleries."""
    st.subheader("Agreement")
    if len(runs) < 2:
        st.caption(
            "Choose two runs above to see how much their features agree and whether they make the same mistakes."
        )
        return
    by_id = {run["id"]: run for run in runs}
    ids = list(by_id)
    columns = st.columns([5, 5, 2])
    id_a = columns[0].selectbox("Run A", ids, index=0, format_func=lambda i: run_name(by_id[i]), key=KEYS[0])
    id_b = columns[1].selectbox("Run B", ids, index=1, format_func=lambda i: run_name(by_id[i]), key=KEYS[1])
    k = columns[2].number_input(  # an int: its bounds and start are ints
        "Neighbours (k)",
        min_value=1,
        max_value=200,
        value=DEFAULT_K,
        key=KEYS[2],
        help="Each image's k nearest other images by cosine similarity, in each run's feature space.",
    )
    if id_a == id_b:
        st.info("Choose two different runs.", icon=":material/info:")
        return
    run_a, run_b = by_id[id_a], by_id[id_b]
    frame_a, frame_b = predictions[id_a], predictions[id_b]

    st.markdown("**Their features**")
    measured = feature_measures(run_a, run_b, k=k)
    if isinstance(measured, str):
        st.caption(markdown_text(measured))
    else:
        sentences, source_a, source_b, note = measured
        st.markdown("\n".join(f"- {markdown_text(sentence)}" for sentence in sentences))
        st.caption(
            markdown_text(
                f"A: {source_a} (run #{id_a}); B: {source_b} (run #{id_b}); every image of "
                f"{run_a['dataset_name']} whose features both runs were trained on, not only the test part."
                + (f" {note}" if note else "")
            )
        )

    st.markdown("**Their mistakes**")
    consistency, text = errors_text(frame_a, frame_b)
    st.markdown(f"- {markdown_text(text)}\n- {markdown_text(paired_text(run_a, run_b, frame_a, frame_b))}")
    st.caption(
        "Error consistency (Cohen's kappa on right/wrong per test photo, Geirhos et al. 2020): 0 is what two runs with "
        "these accuracies would share by chance, 1 the very same mistakes; 95 % paired-bootstrap interval over test "
        "photos. Beside it, McNemar's exact test on the photos only one of them gets right."
    )
    if consistency is None:
        return
    only_a, only_b = disagreement_frames(frame_a, frame_b)
    left, right = st.columns(2)
    _gallery(left, only_a, wrong="b", title=f"A right, B wrong: #{id_a} gets these, #{id_b} does not")
    _gallery(right, only_b, wrong="a", title=f"B right, A wrong: #{id_b} gets these, #{id_a} does not")
