"""Classify's map matches its list: stars carry the list's numbers, a photo like no training image is drawn apart,
and a tiny photo's preview is big enough to see."""

from __future__ import annotations

import numpy as np
from PIL import Image

from core.predict.classify import _MIN_PREVIEW_PX, _preview
from ui.charts import placed_map_figure


def test_stars_carry_the_list_numbers_and_unfamiliar_photos_sit_apart():
    rng = np.random.default_rng(0)
    embedding = rng.normal(size=(30, 2))
    figure = placed_map_figure(
        embedding=embedding,
        labels=np.arange(30) % 3,
        class_names=["a", "b", "c"],
        file_names=[f"{i}.jpg" for i in range(30)],
        placed=np.zeros((3, 2)),  # where a weighted mean of neighbours put them: inside the map
        placed_names=["one.jpg", "three.jpg", "four.jpg"],
        placed_numbers=[1, 3, 4],  # photo 2 of the list was unreadable
        unfamiliar=[False, True, False],
        title="t",
    )
    stars = [t for t in figure.data if t.name and t.name.startswith("your images")]
    familiar = next(t for t in stars if t.name == "your images")
    apart = next(t for t in stars if "look like no training image" in t.name)
    assert list(familiar.text) == ["1", "4"] and list(apart.text) == ["3"]
    assert apart.x[0] > embedding[:, 0].max()  # right of every training image
    assert embedding[:, 1].min() <= apart.y[0] <= embedding[:, 1].max()


def test_a_tiny_photo_is_previewed_visibly():
    preview = _preview(Image.new("RGB", (1, 1), (200, 30, 30)))
    assert max(preview.size) == _MIN_PREVIEW_PX and preview.getpixel((5, 5)) == (200, 30, 30)
    wide = _preview(Image.new("RGB", (4, 2)))
    assert wide.size == (_MIN_PREVIEW_PX, _MIN_PREVIEW_PX // 2)
    big = _preview(Image.new("RGB", (2000, 1000)))
    assert max(big.size) == 512  # large photos are still only shrunk
