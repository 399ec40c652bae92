"""One resolved backbone: ``NAME[@weights]`` looked up once into the record every layer below receives.

Modelled on timm's ``_builder.py``, which resolves a model name once into a pretrained config and passes that
config down rather than the name: ``resolve_backbone`` turns a backbone spec (``"resnet50"``,
``"resnet50@random"``, ``"timm:convnext_tiny@/w/file.safetensors"``) into a ``ResolvedBackbone`` holding the
registry's config (feature size, input size, preprocessing), the weights asked for, the feature variants and,
once located, where the weights come from. Feature extraction, probing, prediction, maps, health and the Ray
engine take this record; none of them looks the name up again.

Building the record is cheap: a dictionary look-up for the built-ins (their variants are declared), one
meta-device build for a ``timm:`` name (cached per process). No weights are read, hashed or downloaded until
``located`` (the one weights resolver, ``core.backbones.registry.locate_weights``) or ``build`` is called.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from PIL import Image
from torch import nn

from core.backbones.registry import (
    BackboneConfig,
    WeightsSource,
    _Entry,
    _entry,
    architecture,
    build_model,
    locate_weights,
    make_transform,
)
from core.backbones.variants import VARIANTS, VIT_VARIANTS
from core.base.errors import FlowerProbeError
from core.base.progress import ProgressCallback
from core.base.workspace import Workspace

# "resnet50@random", "resnet50@/w/r50.pth": the backbone spec's separator between a name and its weights.
WEIGHTS_SEPARATOR = "@"
WEIGHTS_KEYWORDS = ("pretrained", "random")


@dataclass(frozen=True, kw_only=True)
class ResolvedBackbone:
    """A backbone name looked up once: what the engine needs to extract, cache and describe its features.

    Build it with ``resolve_backbone``; ``located`` adds the weights source, ``build`` the model.
    Equality and hashing cover the name, weights, config, variants and source (not the registry entry).
    Pickles by name and weights (re-looked-up on the other side of a process boundary: Ray actors).
    """

    name: str  # the registry name ("resnet50", "timm:convnext_tiny.fb_in1k"): FeatureSet.backbone, cache keys
    weights: str  # what was asked for: "pretrained", "random" or a checkpoint path
    config: BackboneConfig  # feature size, input size, resize, mean/std, interpolation, crop, weights file
    variants: tuple[str, ...]  # core.backbones.variants names this architecture gives, its default first
    source: WeightsSource | None = None  # where the weights come from; None until ``located``
    entry: _Entry = field(repr=False, compare=False)  # the registry's builder and checkpoint adapter

    # ------------------------------------------------------------------------------------------ description

    @property
    def spec(self) -> str:
        """``name`` when pretrained, else ``name@random`` / ``name@<checkpoint>`` (``resolve_backbone``'s input)."""
        return self.name if self.weights == "pretrained" else f"{self.name}{WEIGHTS_SEPARATOR}{self.weights}"

    @property
    def input_size(self) -> int:
        """Side of the square image the model takes, in pixels."""
        return self.config.input_size

    @property
    def feature_dim(self) -> int:
        """Width of the default variant's features (``model(x)``)."""
        return self.config.feature_dim

    @property
    def default_variant(self) -> str:
        """What ``model(x)`` returns: ``"cls"`` for ViTs, ``"gap"`` for CNNs; the reference feature."""
        return self.variants[0]

    @property
    def is_vit(self) -> bool:
        """Whether the backbone has patch tokens (the ViT variants, patch maps)."""
        return self.variants[0] in VIT_VARIANTS

    @property
    def weights_tag(self) -> str:
        """The weights' identity in cache keys (``"random"`` or ``"sha256:..."``); needs ``located`` first."""
        if self.source is None:
            raise FlowerProbeError(
                f"backbone {self.spec} has no located weights yet; call located(workspace=...) before asking for "
                f"its weights tag."
            )
        return self.source.tag

    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """The evaluation preprocessing (``core.backbones.registry.make_transform`` of the config): a PIL image
        of any mode -> float32 tensor of shape (3, input_size, input_size). Picklable."""
        return make_transform(self.config)

    def check_variant(self, variant: str | None) -> str:
        """``variant`` if the backbone gives it, its default for None; otherwise a FlowerProbeError naming
        ``features``, what is allowed and what was given."""
        if variant is None:
            return self.variants[0]
        if variant not in self.variants:
            kind = "patch tokens (a ViT)" if variant in VIT_VARIANTS else "a CNN's pooled features"
            raise FlowerProbeError(
                f"features must be one of {', '.join(self.variants)} for {self.name}, got {variant!r}"
                + (f" ({variant!r} needs {kind}, which {self.name} does not have)." if variant in VARIANTS else ".")
            )
        return variant

    # ------------------------------------------------------------------------------------------ weights, model

    def located(
        self, *, workspace: Workspace | None = None, progress: ProgressCallback | None = None
    ) -> ResolvedBackbone:
        """This record with ``source`` set by the one weights resolver (``core.backbones.registry.locate_weights``,
        whose comment gives the priority order); itself when already located.

        May hash the weights file (once per process) or download it (only when it is nowhere on this machine);
        ``progress`` receives those "weights"/"download" events. Raises as ``locate_weights``.
        """
        if self.source is not None:
            return self
        source = locate_weights(self.entry, weights=self.weights, workspace=workspace, progress=progress)
        return dataclasses.replace(self, source=source)

    def build(self, *, workspace: Workspace | None = None, progress: ProgressCallback | None = None) -> nn.Module:
        """The frozen model in eval mode with the located weights (located now if not yet).

        ``model(x)`` with ``x`` of shape (N, 3, input_size, input_size), preprocessed by ``transform()``,
        returns float features of shape (N, feature_dim). Raises as ``core.backbones.registry.build_backbone``.
        """
        source = self.located(workspace=workspace, progress=progress).source
        return build_model(self.entry, source)

    def architecture(self) -> nn.Module:
        """The architecture with random weights and no weights look-up; call it under ``torch.device("meta")``
        to inspect its structure without memory."""
        return architecture(self.entry)

    def __reduce__(self):
        # The registry entry holds closures; across a process boundary the record is rebuilt from its name.
        return (_rebuild, (self.name, self.weights, self.source))


def _rebuild(name: str, weights: str, source: WeightsSource | None) -> ResolvedBackbone:
    return dataclasses.replace(resolve_backbone(name, weights=weights), source=source)


def split_spec(spec: str) -> tuple[str, str]:
    """``"resnet50"`` -> ``("resnet50", "pretrained")``; ``"resnet50@random"``, ``"resnet50@/w/r50.pth"`` likewise.

    Raises FlowerProbeError for an empty name or an ``@`` with nothing after it.
    """
    name, separator, weights = str(spec).partition(WEIGHTS_SEPARATOR)
    if not name or (separator and not weights):
        raise FlowerProbeError(f"backbones must be written NAME, NAME@random or NAME@<checkpoint path>; got {spec!r}.")
    return name, weights or "pretrained"


def resolve_backbone(spec: str | ResolvedBackbone, *, weights: str | os.PathLike | None = None) -> ResolvedBackbone:
    """Look a backbone up once: ``"NAME[@weights]"`` (or a name and ``weights``) -> its ``ResolvedBackbone``.

    Parameters
    ----------
    spec : str or ResolvedBackbone
        A built-in name (``core.backbones.registry.list_backbones``) or ``timm:<model name>``, optionally followed
        by ``@random`` or ``@<checkpoint path>``. A record is returned as it is (``weights`` must then agree).
    weights : str or path, optional
        ``"pretrained"``, ``"random"`` or a checkpoint path, for a spec without ``@``; None means the spec's own
        (``"pretrained"`` when it has none).

    Returns
    -------
    ResolvedBackbone
        Not yet located (``source`` None): nothing is read, hashed or downloaded here.

    Raises
    ------
    UnknownBackboneError
        Not a backbone; the message lists the closest valid names.
    FlowerProbeError
        A malformed spec, or weights given both in the spec and as ``weights`` (or disagreeing with the record).
    """
    if isinstance(spec, ResolvedBackbone):
        if weights is not None and str(weights) != spec.weights:
            raise FlowerProbeError(
                f"weights must be left out or be {spec.weights!r} for the resolved backbone {spec.spec}; got "
                f"{str(weights)!r}."
            )
        return spec
    name, spec_weights = split_spec(spec)
    if weights is not None:
        if WEIGHTS_SEPARATOR in str(spec) and str(weights) != spec_weights:
            raise FlowerProbeError(
                f"weights must be given once: the backbone {spec!r} names {spec_weights!r} and weights is "
                f"{str(weights)!r}."
            )
        spec_weights = str(weights) if isinstance(weights, str) else os.fspath(weights)
    entry = _entry(name)
    return ResolvedBackbone(
        name=entry.config.name, weights=spec_weights, config=entry.config, variants=entry.variants, entry=entry
    )
