"""core.maps.patches: patch tokens of a random-weight ViT and EfficientNet-Lite0's last feature map, the patch PCA
(the border-is-background sign rule, the foreground threshold), the per-image cache, and the CLI's PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.__main__ import main
from core.backbones.resolved import ResolvedBackbone
from core.base.errors import FlowerProbeError
from core.maps import patches

VIT = "dinov2_vits14"  # random weights: 224 px input, 14 px patches -> 16 x 16 tokens of 384-d


def _centre_image(path, *, half: int = 56):
    """A photo whose centre square (side 2 x ``half`` of 256 px) differs from its border: an object on a background."""
    pixels = np.full((256, 256, 3), (30, 140, 40), np.uint8)
    pixels[128 - half : 128 + half, 128 - half : 128 + half] = (230, 40, 160)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("patches")  # two "photos" of one kind of object, as the DINOv2 figure compares
    return [_centre_image(folder / "a.png"), _centre_image(folder / "b.png", half=40)]


@pytest.fixture(scope="module")
def vit_grids(images, tmp_path_factory):
    from core.base.workspace import Workspace

    root = tmp_path_factory.mktemp("ws")
    ws = Workspace(root=root, data_root=root / "datasets")
    return patches.patch_grids([(p.name, p) for p in images], backbone=VIT, weights="random", workspace=ws), ws


def test_vit_patch_tokens_have_the_patch_grid_shape(vit_grids):
    grids, _ = vit_grids
    assert [g.tokens.shape for g in grids] == [(16, 16, 384)] * 2
    assert all(g.kind == "tokens" and g.crop.size == (224, 224) for g in grids)
    views, _ = patches.patch_views(grids)
    for view in views:
        assert view.heat.size == view.rgb.size == view.mask.size == (224, 224) and view.grid == (16, 16)
        assert view.foreground.shape == (16, 16)


def test_efficientnet_lite0_gives_its_last_feature_map(images, workspace):
    grids = patches.patch_grids([(images[0].name, images[0])], backbone="efficientnet_lite0", workspace=workspace)
    (grid,) = grids
    assert grid.tokens.shape == (7, 7, 1280) and grid.kind == "feature map"  # 224 px / stride 32
    views, _ = patches.patch_views(grids)
    assert views[0].heat.size == (224, 224) and views[0].kind == "feature map"


def test_patch_tokens_are_cached_per_image(vit_grids, images, monkeypatch):
    grids, ws = vit_grids

    def no_forward(*args, **kwargs):
        raise AssertionError("a cached image must not build the backbone again")

    monkeypatch.setattr(ResolvedBackbone, "build", no_forward)
    again = patches.patch_grids([(p.name, p) for p in images], backbone=VIT, weights="random", workspace=ws)
    for first, second in zip(grids, again):
        np.testing.assert_array_equal(first.tokens, second.tokens)
        assert second.kind == "tokens"
    assert len(list((ws.features_dir / "patches").glob("*.npy"))) == 2


def _centre_and_border(first: np.ndarray) -> tuple[float, float]:
    rows, cols = first.shape
    centre = first[rows // 3 : 2 * rows // 3, cols // 3 : 2 * cols // 3]
    return float(centre.mean()), float(first[patches.border_mask(rows, cols)].mean())


def test_sign_rule_makes_the_border_background_whatever_the_components_sign(vit_grids):
    grids, _ = vit_grids
    pca = patches.patch_pca(grids)
    for first in pca.first:
        centre, border = _centre_and_border(first)
        assert centre > border, "the centre (the object) must score above the border (background)"
    # Negated tokens flip the raw first component (PCA is linear): the rule must undo it exactly.
    negated = [patches.PatchGrid(name=g.name, tokens=-g.tokens, kind=g.kind, crop=g.crop) for g in grids]
    again = patches.patch_pca(negated)
    for first, second in zip(pca.first, again.first):
        np.testing.assert_allclose(first, second, atol=1e-5)
    # Independently: the raw first component from an SVD of the centred patches, and whether it needed flipping.
    matrix = np.concatenate([g.tokens.reshape(-1, 384) for g in grids]).astype(np.float64)
    centred = matrix - matrix.mean(axis=0)
    raw = centred @ np.linalg.svd(centred, full_matrices=False)[2][0]
    borders = np.concatenate([patches.border_mask(16, 16).ravel()] * 2)
    raw_low_border = raw[borders].mean() < raw[~borders].mean()
    expected = (raw - raw.min()) / np.ptp(raw) if raw_low_border else (raw.max() - raw) / np.ptp(raw)
    np.testing.assert_allclose(np.concatenate([f.ravel() for f in pca.first]), expected, atol=1e-4)
    assert "border" in patches.sign_note(pca)


def test_threshold_slider_grows_and_shrinks_the_foreground(vit_grids):
    grids, _ = vit_grids
    pca = patches.patch_pca(grids)
    counts = [
        sum(int(m.sum()) for m in patches.foreground_masks(pca, threshold=t)) for t in (0.0, 0.25, 0.5, 0.75, 1.0)
    ]
    assert counts == sorted(counts, reverse=True) and counts[-1] == 0
    assert counts[0] == sum(int((f > 0).sum()) for f in pca.first)
    low, high = (patches.foreground_masks(pca, threshold=t)[0] for t in (0.3, 0.7))
    assert (low | high == low).all(), "a higher threshold keeps a subset of the foreground"
    # At 0.5 the object (centre) is foreground and the border is not.
    mask = patches.foreground_masks(pca, threshold=0.5)[0]
    assert mask[7:9, 7:9].all() and not mask[patches.border_mask(16, 16)].any()
    views, _ = patches.patch_views(grids, threshold=0.5)
    rgb = np.asarray(views[0].rgb)
    assert (rgb[:14, :14] == 0).all(), "background patches are black in the RGB view"
    with pytest.raises(FlowerProbeError, match=r"threshold must be from 0 to 1.*1\.5"):
        patches.foreground_masks(pca, threshold=1.5)


def test_too_few_patches_and_a_model_without_a_feature_map_are_refused(vit_grids):
    grids, _ = vit_grids
    tiny = [patches.PatchGrid(name="t", tokens=np.zeros((3, 3, 4), np.float32), kind="feature map", crop=grids[0].crop)]
    with pytest.raises(FlowerProbeError, match="at least 16 patches; 1 image\\(s\\) give 9"):
        patches.patch_pca(tiny)
    with pytest.raises(FlowerProbeError, match="backbone must have patch tokens"):
        patches._last_feature_map(torch.nn.Flatten(), torch.zeros(1, 3, 8, 8))


def _is_png(path) -> bool:
    data = path.read_bytes()
    with Image.open(path) as image:
        image.verify()
    return data[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_patches_writes_one_png_per_image(images, workspace, tmp_path, capsys):
    assert (
        main(
            [
                "patches",
                "--backbone",
                "efficientnet_lite0",
                str(images[0]),
                str(images[1]),
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    written = sorted((tmp_path / "out").glob("*.png"))
    assert len(written) == 2 and all(_is_png(path) for path in written)
    with Image.open(written[0]) as sheet:
        assert sheet.size == (4 * 224, 224)  # photo, heat map, foreground, RGB
    assert "7 x 7 grid" in capsys.readouterr().out


def _map_command(method: str, out: Path, *options: str) -> list[str]:
    """``python -m core map``'s arguments: the synthetic set through efficientnet_lite0 by ``method``, to ``out``."""
    features = ["--dataset", "synthetic", "--backbone", "efficientnet_lite0"]
    return ["map", *features, "--method", method, *options, "--out", str(out)]


@pytest.mark.slow  # extracts the tiny dataset's features first (~50 s on a shared 2-core CPU)
def test_cli_map_writes_a_png_for_each_method(tiny_workspace, tmp_path):
    for method in ("pca", "tsne"):
        out = tmp_path / f"{method}.png"
        assert main(_map_command(method, out, "--perplexity", "10")) == 0 and _is_png(out)
        with Image.open(out) as image:
            assert image.size == (1600, 1000)
    # out of range: the message names the parameter, its range and the value
    assert main(_map_command("umap", tmp_path / "u.png", "--n-neighbors", "500")) == 2


def test_patches_page_computes_in_the_job_queue_and_the_slider_redraws(tiny_workspace):
    import re

    from streamlit.testing.v1 import AppTest

    from ui.navigation import PAGES

    entry = Path(__file__).resolve().parents[3] / "dashboard.py"
    page = next(page.script for page in PAGES if page.script.endswith("patches.py"))
    at = AppTest.from_file(str(entry), default_timeout=120)
    at.run()
    at.switch_page(page).run()
    assert not at.exception, at.exception
    at.selectbox(key="patches_backbone").set_value("efficientnet_lite0").run()
    at.button(key="patches_compute").click().run()
    assert not at.exception, at.exception
    from ui.state import job_runner

    _, job_id = at.session_state["patches_job"]
    assert job_runner().wait(job_id, timeout_s=120).status == "completed"
    at.run()
    assert not at.exception, at.exception
    caption = " ".join(c.value for c in at.caption)
    assert "7 x 7" in caption and "feature map" in caption and "Sign check" in caption
    galleries = list(at.get("image"))
    assert len(galleries) == 3 and all(len(g.captions) == 4 for g in galleries)  # 3 default photos, 4 pictures each
    counts = [m.value for m in at.markdown if "patches foreground" in m.value]
    # The slider starts at Otsu's threshold of the first component, and every photo keeps some foreground there
    # (0.5 gave "0 of 49 patches foreground" with EfficientNet-Lite0).
    from core.maps.patches import otsu_threshold, patch_pca

    grids = job_runner().get(job_id).result
    assert at.slider(key="patches_threshold").value == pytest.approx(round(otsu_threshold(patch_pca(grids)), 2))
    assert all(int(re.search(r"(\d+) of 49", c).group(1)) > 0 for c in counts), counts
    at.slider(key="patches_threshold").set_value(0.9).run()
    assert not at.exception, at.exception
    after = [m.value for m in at.markdown if "patches foreground" in m.value]
    fewer = [
        int(re.search(r"(\d+) of 49", a).group(1)) <= int(re.search(r"(\d+) of 49", b).group(1))
        for a, b in zip(after, counts)
    ]
    assert all(fewer) and after != counts, "a higher threshold keeps fewer foreground patches"
