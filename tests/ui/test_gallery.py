"""The Dataset page's full gallery: rows by split part and class (against the dataset's own arrays), pages, and a
photo enlarged on click."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest

from core.data.datasets import load_dataset

ENTRY = Path(__file__).resolve().parents[2] / "dashboard.py"


def test_gallery_rows_follow_the_split_and_class(tiny_workspace):
    from ui.gallery import gallery_rows, part_of

    dataset = load_dataset("synthetic", tiny_workspace)
    everything = gallery_rows(dataset, split="1", part="all", label=None)
    np.testing.assert_array_equal(everything, np.arange(len(dataset.image_paths)))
    test_rows = gallery_rows(dataset, split="1", part="test", label=3)
    np.testing.assert_array_equal(test_rows, np.sort([r for r in dataset.split("1")["test"] if dataset.labels[r] == 3]))
    assert set(part_of(dataset, "1")[test_rows]) == {"test"}


def test_the_gallery_pages_and_enlarges(tiny_workspace):
    from ui.gallery import PER_PAGE

    at = AppTest.from_file(str(ENTRY), default_timeout=120)
    at.run()
    at.switch_page("pages/dataset.py").run()
    assert not at.exception, at.exception
    dataset = load_dataset("synthetic", tiny_workspace)
    pages = -(-len(dataset.image_paths) // PER_PAGE)
    assert at.number_input(key="gallery_page").max == pages
    at.selectbox(key="gallery_part").set_value("val").run()
    val_rows = sorted(int(r) for r in dataset.split("1")["val"])
    buttons = [b for b in at.button if b.key and b.key.startswith("gallery-enlarge-")]
    assert [int(b.key.rsplit("-", 1)[1]) for b in buttons] == val_rows[:PER_PAGE]
    buttons[0].click().run()
    assert not at.exception, at.exception
    # The dialog: the photo at its own size (up to 900 px) and its file.
    enlarged = [c.value.replace("\\", "") for c in at.caption if "px shown" in c.value]
    assert len(enlarged) == 1 and dataset.image_paths[val_rows[0]].name in enlarged[0]
