"""Patch features and DINOv2's patch-PCA picture: what a backbone sees where, inside each photo.

- ``patch_grids``: per image, the backbone's patch tokens on their grid (ViTs: the final-norm patch
  tokens, ``core.backbones.variants.patch_token_grid``; CNNs: the last feature map, the input of the global
  average pool, a coarser grid), cached per image file like features.
- ``patch_pca``: one PCA over the patches of all chosen images together, as in the DINOv2 paper's
  figure: the first component, its sign fixed so that border patches are background (the sign of a
  principal component is arbitrary), separates object from background; a second PCA over the
  foreground patches alone gives three components shown as RGB, matching parts across photos.
- ``patch_views``: those as pictures (heat map, mask, RGB) upsampled to the model's input crop.

Only images given as files are cached (``<workspace>/features/patches/``); uploads stay in memory,
as everywhere else.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core.backbones.resolved import ResolvedBackbone, resolve_backbone
from core.backbones.variants import model_variants, patch_token_grid
from core.base.errors import FlowerProbeError
from core.base.fileio import atomic_write
from core.base.progress import ProgressCallback, report
from core.base.workspace import Workspace
from core.data.images import ImageSource, load_image
from core.features.extract import prepare_model, select_device, select_precision

# Bump when cached grids change meaning, so old files are recomputed rather than misread.
_FORMAT_VERSION = 1
# A PCA over fewer patches than this says nothing about the photos (a 7 x 7 CNN grid of one image has 49).
MIN_PATCHES = 16
# The foreground threshold on the first component scaled to [0, 1]: the DINOv2 figure's recipe keeps
# patches above the middle of the range; the page's slider starts here.
DEFAULT_THRESHOLD = 0.5
# Border patches: the outermost ring of the grid, where a centred object rarely reaches.
_BORDER = 1


@dataclass(frozen=True)
class PatchGrid:
    """One image's patch features: ``tokens`` of shape (rows, cols, dim) and the crop they cover.

    ``kind`` is ``"tokens"`` (a ViT's patch tokens) or ``"feature map"`` (a CNN's last feature map);
    ``crop`` is the model's input image (the photo after resize and centre crop), RGB.
    """

    name: str
    tokens: np.ndarray
    kind: str
    crop: Image.Image

    @property
    def grid(self) -> tuple[int, int]:
        return self.tokens.shape[0], self.tokens.shape[1]


def _last_feature_map(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """A CNN's last feature map (N, rows, cols, channels): the input of its last adaptive average pool."""
    pools = [m for m in model.modules() if isinstance(m, torch.nn.AdaptiveAvgPool2d)]
    if not pools:
        raise FlowerProbeError(
            f"backbone must have patch tokens (a ViT) or a last feature map before a global average pool (a CNN); "
            f"{type(model).__name__} has neither, so it has no patches to show."
        )
    kept: dict[str, torch.Tensor] = {}
    handle = pools[-1].register_forward_pre_hook(lambda _m, args: kept.__setitem__("map", args[0]))
    try:
        model(images)
    finally:
        handle.remove()
    return kept["map"].float().permute(0, 2, 3, 1)


def _grid_kind(model: torch.nn.Module) -> str:
    return "tokens" if "patch_mean" in model_variants(model) else "feature map"


def _crop_of(tensor: torch.Tensor, *, mean, std) -> Image.Image:
    """The preprocessed input (3, H, W) back as the RGB crop it shows, so heat maps align with it exactly."""
    pixels = tensor.float() * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    return Image.fromarray((pixels.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def _source_bytes(source: ImageSource) -> bytes | None:
    if isinstance(source, (str, os.PathLike)):
        return Path(source).read_bytes()
    return None


def _cache_path(workspace: Workspace, data: bytes, *, backbone: str, weights_tag: str, precision: str) -> Path:
    digest = hashlib.sha256(f"v{_FORMAT_VERSION} {backbone} {weights_tag} {precision}\n".encode())
    digest.update(data)
    return workspace.features_dir / "patches" / f"{digest.hexdigest()[:32]}.npy"


def _read_grid(path: Path) -> np.ndarray | None:
    try:
        grid = np.load(path, allow_pickle=False)
    except (OSError, ValueError):  # absent or damaged: recompute
        return None
    return grid if grid.ndim == 3 else None


def patch_grids(
    images: list[tuple[str, ImageSource]],
    *,
    backbone: ResolvedBackbone | str,
    workspace: Workspace,
    weights: str | None = None,
    device: str = "auto",
    progress: ProgressCallback | None = None,
) -> list[PatchGrid]:
    """Patch features of each image: a ViT's patch tokens, or a CNN's last feature map.

    Parameters
    ----------
    images : list of (name, source)
        ``source`` is anything ``core.data.images.load_image`` takes; files are cached per content.
    backbone : ResolvedBackbone or str
        The resolved backbone (``core.backbones.resolved.resolve_backbone``), or a spec resolved here once.
    weights : str, optional
        ``"pretrained"``, ``"random"`` or a checkpoint path, for a spec without ``@``; None keeps its own.
    progress : ProgressCallback or None
        Receives ``"patches"`` events, ``done`` counting images.

    Returns
    -------
    list of PatchGrid
        In the order given; ``tokens`` of shape (rows, cols, dim), float32.
    """
    if not images:
        raise FlowerProbeError("images must hold at least one (name, source) pair; got none.")
    resolved = resolve_backbone(backbone, weights=weights).located(workspace=workspace, progress=progress)
    backbone, config, transform = resolved.name, resolved.config, resolved.transform()
    torch_device = select_device(device)
    precision = select_precision(torch_device, "auto", backbone=backbone)
    tag = resolved.weights_tag
    model = None
    grids: list[PatchGrid] = []
    report(progress, "patches", 0, len(images), message=f"patch features of {len(images)} image(s)")
    for done, (name, source) in enumerate(images, start=1):
        image = load_image(source, draft_size=config.resize, name=name)
        tensor = transform(image)
        crop = _crop_of(tensor, mean=config.mean, std=config.std)
        data = _source_bytes(source)
        path = _cache_path(workspace, data, backbone=backbone, weights_tag=tag, precision=precision) if data else None
        tokens = _read_grid(path) if path else None
        kind_path = path.with_suffix(".kind") if path else None
        if tokens is None or not kind_path.is_file():
            if model is None:
                built = resolved.build(workspace=workspace, progress=progress)
                model = prepare_model(built.eval(), device=torch_device, precision=precision, in_place=True)
                kind = _grid_kind(model)
                weights_dtype = next(model.parameters()).dtype
            batch = tensor.unsqueeze(0).to(torch_device, dtype=weights_dtype)
            with torch.inference_mode():
                grid = patch_token_grid(model, batch) if kind == "tokens" else _last_feature_map(model, batch)
            tokens = grid[0].cpu().numpy().astype(np.float32)
            if path is not None:
                with atomic_write(path) as tmp, open(tmp, "wb") as handle:  # a handle: numpy adds no ".npy"
                    np.save(handle, tokens, allow_pickle=False)
                with atomic_write(kind_path) as tmp:
                    tmp.write_text(kind)
            grid_kind = kind
        else:
            grid_kind = kind_path.read_text().strip()
        grids.append(PatchGrid(name=name, tokens=tokens, kind=grid_kind, crop=crop))
        report(progress, "patches", done, len(images), message=name)
    return grids


# ----------------------------------------------------------------------------------------------- PCA maths


def border_mask(rows: int, cols: int) -> np.ndarray:
    """Boolean (rows, cols): True on the outermost ring of patches."""
    mask = np.zeros((rows, cols), dtype=bool)
    mask[:_BORDER], mask[-_BORDER:], mask[:, :_BORDER], mask[:, -_BORDER:] = True, True, True, True
    return mask


def _pca(matrix: np.ndarray, components: int) -> np.ndarray:
    """Scores of ``matrix`` (n, dim) on its first ``components`` principal components (scikit-learn's PCA)."""
    from sklearn.decomposition import PCA

    return PCA(n_components=components, random_state=0).fit_transform(matrix)


def _unit_range(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


@dataclass(frozen=True)
class PatchPca:
    """The first component per image, scaled to [0, 1] over all images, its sign chosen by the border rule.

    ``first`` : list of (rows, cols) arrays; ``flipped``: whether the sign was reversed so that border
    patches score low (background); ``border_mean`` and ``inner_mean``: their scaled means after it.
    """

    first: list[np.ndarray]
    flipped: bool
    border_mean: float
    inner_mean: float


def patch_pca(grids: list[PatchGrid]) -> PatchPca:
    """PCA over the patches of all ``grids`` together; the first component with the border-is-background sign.

    Raises ``FlowerProbeError`` when the images hold fewer than ``MIN_PATCHES`` patches in all.
    """
    total = sum(g.grid[0] * g.grid[1] for g in grids)
    if total < MIN_PATCHES:
        raise FlowerProbeError(
            f"A patch PCA needs at least {MIN_PATCHES} patches; {len(grids)} image(s) give {total}. Choose more images."
        )
    dims = {g.tokens.shape[2] for g in grids}
    if len(dims) != 1:
        raise FlowerProbeError(f"All images must come from one backbone (one feature size); got sizes {sorted(dims)}.")
    scores = _pca(np.concatenate([g.tokens.reshape(-1, g.tokens.shape[2]) for g in grids]), 1)[:, 0]
    borders = np.concatenate([border_mask(*g.grid).ravel() for g in grids])
    # The sign of a principal component is arbitrary: make the border (background, for a centred
    # object) the low end, so "above the threshold" means foreground on every run.
    flipped = bool(scores[borders].mean() > scores[~borders].mean()) if (~borders).any() else False
    scaled = _unit_range(-scores if flipped else scores)
    first, start = [], 0
    for g in grids:
        size = g.grid[0] * g.grid[1]
        first.append(scaled[start : start + size].reshape(g.grid))
        start += size
    inner = scaled[~borders] if (~borders).any() else scaled
    return PatchPca(
        first=first, flipped=flipped, border_mean=float(scaled[borders].mean()), inner_mean=float(inner.mean())
    )


def otsu_threshold(pca: PatchPca) -> float:
    """The automatic foreground threshold: Otsu's (``skimage.filters.threshold_otsu``) on the scaled first component
    of every patch of every image, in [0, 1].

    A fixed 0.5 suited DINOv2's first component, not others': EfficientNet-Lite0's put all 49 patches of a photo below
    it (an empty foreground). Otsu splits the values where the two groups are most apart, whatever the backbone.
    """
    from skimage.filters import threshold_otsu

    values = np.concatenate([first.ravel() for first in pca.first])
    if len(np.unique(values)) < 2:
        return DEFAULT_THRESHOLD  # one value everywhere: no split to find
    return float(np.clip(threshold_otsu(values), 0.0, 1.0))


def foreground_masks(pca: PatchPca, *, threshold: float) -> list[np.ndarray]:
    """Per image, boolean (rows, cols): patches whose scaled first component is above ``threshold`` (0-1)."""
    if not 0.0 <= threshold <= 1.0:
        raise FlowerProbeError(
            f"threshold must be from 0 to 1 (the first component scaled to that range); got {threshold}."
        )
    return [first > threshold for first in pca.first]


def foreground_rgb(grids: list[PatchGrid], masks: list[np.ndarray]) -> list[np.ndarray]:
    """Per image, float (rows, cols, 3) in [0, 1]: the first 3 components of a PCA over the foreground patches of
    all images together, each scaled to [0, 1]; background patches are 0 (black)."""
    foreground = np.concatenate([g.tokens[m] for g, m in zip(grids, masks)])
    out = [np.zeros((*g.grid, 3)) for g in grids]
    if len(foreground) < 3:  # too few patches for three components: all background
        return out
    scores = _pca(foreground, 3)
    colours = np.stack([_unit_range(scores[:, c]) for c in range(3)], axis=1)
    start = 0
    for rgb, mask in zip(out, masks):
        count = int(mask.sum())
        rgb[mask] = colours[start : start + count]
        start += count
    return out


# ----------------------------------------------------------------------------------------------- pictures


def _heat_colours(values: np.ndarray) -> np.ndarray:
    """(rows, cols) in [0, 1] -> (rows, cols, 3) uint8 on colorcet's ``bgy`` map.

    ``bgy`` (Kovesi's linear_bgy_10_95_c74) is colorcet's perceptually uniform blue-green-yellow map, its
    counterpart of Viridis (which this used through plotly.colors: the engine imports no plotting library).
    """
    import colorcet
    from PIL import ImageColor

    stops = np.array([ImageColor.getrgb(colour) for colour in colorcet.palette["bgy"]], dtype=np.float64)
    positions = np.linspace(0, 1, len(stops))
    return np.stack([np.interp(values, positions, stops[:, c]) for c in range(3)], axis=-1).round().astype(np.uint8)


def _upsample(pixels: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """(rows, cols, 3) uint8 -> an RGB image of ``size``, each patch a block (nearest: patches stay visible)."""
    return Image.fromarray(pixels).resize(size, Image.Resampling.NEAREST)


@dataclass(frozen=True)
class PatchView:
    """One image's pictures, each the size of the model's input crop."""

    name: str
    crop: Image.Image
    heat: Image.Image  # first component, on colorcet's bgy map (perceptually uniform, like Viridis)
    mask: Image.Image  # the crop with background patches dimmed
    rgb: Image.Image  # foreground patches' first three components as RGB
    foreground: np.ndarray  # (rows, cols) bool
    grid: tuple[int, int]
    kind: str


def patch_views(grids: list[PatchGrid], *, threshold: float = DEFAULT_THRESHOLD) -> tuple[list[PatchView], PatchPca]:
    """The patch-PCA pictures of ``grids`` (one PCA over all of them) at foreground ``threshold``."""
    pca = patch_pca(grids)
    masks = foreground_masks(pca, threshold=threshold)
    colours = foreground_rgb(grids, masks)
    views = []
    for grid, first, mask, rgb in zip(grids, pca.first, masks, colours):
        size = grid.crop.size
        dim = np.asarray(_upsample(np.where(mask[..., None], 255, 64).astype(np.uint8).repeat(3, axis=2), size)) / 255
        views.append(
            PatchView(
                name=grid.name,
                crop=grid.crop,
                heat=_upsample(_heat_colours(first), size),
                mask=Image.fromarray((np.asarray(grid.crop) * dim).round().astype(np.uint8)),
                rgb=_upsample((rgb * 255).round().astype(np.uint8), size),
                foreground=mask,
                grid=grid.grid,
                kind=grid.kind,
            )
        )
    return views, pca


def sign_note(pca: PatchPca) -> str:
    """One sentence on the sign check, for captions and the CLI."""
    turned = "reversed" if pca.flipped else "kept"
    return (
        f"Sign check: the first component's sign was {turned} so that border patches score low (background): "
        f"border mean {pca.border_mean:.2f}, inner mean {pca.inner_mean:.2f} on a 0-1 scale."
    )


def view_sheet(view: PatchView) -> Image.Image:
    """The photo, heat map, mask and RGB side by side in one image (the CLI's PNG per photo)."""
    width, height = view.crop.size
    sheet = Image.new("RGB", (4 * width, height), "white")
    for index, picture in enumerate((view.crop, view.heat, view.mask, view.rgb)):
        sheet.paste(picture.convert("RGB"), (index * width, 0))
    return sheet


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
