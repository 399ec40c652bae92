"""The Dataset page's full gallery: every photo, page by page, filtered by split part and class, click to enlarge.

The sample grid above it shows a few photos per class; this one shows them all (1,360 for Synthetic Flowers), a page
of ``PER_PAGE`` at a time so a page stays quick. ``gallery_rows`` (pure, tested without a page) picks the rows; the
enlarged photo opens in a dialog at up to ``ENLARGED_PX`` through the one image loader.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from core.base.errors import BadImageError
from core.base.text import markdown_text
from core.data.datasets import SPLIT_PARTS, Dataset
from core.data.images import load_image
from ui.state import thumbnail

PER_PAGE = 48
PER_ROW = 8
THUMB_PX = 120
ENLARGED_PX = 900
ALL = "all"
_ENLARGE_KEY = "gallery_enlarge"


def gallery_rows(dataset: Dataset, *, split: str, part: str, label: int | None) -> np.ndarray:
    """Dataset rows in ``part`` (``'train'``, ``'val'``, ``'test'`` of ``split``, or ``'all'``) and class ``label``
    (None: every class), ascending."""
    rows = np.arange(len(dataset.image_paths)) if part == ALL else np.sort(dataset.split(split)[part])
    if label is not None:
        rows = rows[dataset.labels[rows] == label]
    return rows


def part_of(dataset: Dataset, split: str) -> np.ndarray:
    """The part name ('train', 'val', 'test', or '' for none) of every row in ``split``."""
    parts = np.full(len(dataset.image_paths), "", dtype=object)
    for name in SPLIT_PARTS:
        parts[dataset.split(split)[name]] = name
    return parts


@st.dialog("Photo", width="large")
def _enlarged(dataset: Dataset, row: int, part: str) -> None:
    path = dataset.image_paths[row]
    try:
        image = load_image(path, draft_size=ENLARGED_PX)
    except BadImageError as exc:
        st.error(markdown_text(str(exc)), icon=":material/broken_image:")
        return
    image.thumbnail((ENLARGED_PX, ENLARGED_PX))
    st.image(image, caption=markdown_text(f"{path.name} · {dataset.class_names[dataset.labels[row]]} · {part}"))
    st.caption(markdown_text(f"{image.width} x {image.height} px shown · {path}"))


def full_gallery(dataset: Dataset) -> None:
    """Every photo of ``dataset``, filtered by split part and class, ``PER_PAGE`` a page; a button enlarges one."""
    st.subheader("All photos")
    columns = st.columns([1, 1, 2, 1])
    splits = sorted(dataset.splits)
    split = columns[0].selectbox("Split", splits, key="gallery_split") if len(splits) > 1 else splits[0]
    part = columns[1].selectbox(
        "Part", [ALL, *SPLIT_PARTS], key="gallery_part", format_func=lambda p: {"val": "validation"}.get(p, p)
    )
    label = columns[2].selectbox(
        "Class",
        [None, *range(dataset.num_classes)],
        key="gallery_class",
        format_func=lambda i: "every class" if i is None else dataset.class_names[i],
    )
    rows = gallery_rows(dataset, split=split, part=part, label=label)
    pages = max(1, -(-len(rows) // PER_PAGE))
    page = columns[3].number_input("Page", min_value=1, max_value=pages, value=1, step=1, key="gallery_page")
    page = min(int(page), pages)
    shown = rows[(page - 1) * PER_PAGE : page * PER_PAGE]
    st.caption(
        f"{len(rows)} photo(s); page {page} of {pages}, photos {(page - 1) * PER_PAGE + 1 if len(rows) else 0}-"
        f"{(page - 1) * PER_PAGE + len(shown)}. Enlarge under a photo shows it larger."
    )
    parts = part_of(dataset, split)
    for start in range(0, len(shown), PER_ROW):
        for column, row in zip(st.columns(PER_ROW), shown[start : start + PER_ROW]):
            row = int(row)
            data, ok = thumbnail(dataset.image_paths[row], size=THUMB_PX)
            column.image(data, width=THUMB_PX)
            column.caption(
                markdown_text(
                    f"{dataset.image_paths[row].name}" + ("" if ok else " (unreadable)") + "  \n"
                    f"{dataset.class_names[dataset.labels[row]]} · {parts[row] or 'no part'}"
                )
            )
            if column.button("Enlarge", icon=":material/zoom_in:", key=f"gallery-enlarge-{row}"):
                st.session_state[_ENLARGE_KEY] = row
    chosen = st.session_state.pop(_ENLARGE_KEY, None)
    if chosen is not None:
        _enlarged(dataset, chosen, parts[chosen] or "no part")
