"""Feature variants: the several features one backbone forward pass gives, as the field probes them.

For a ViT (the DINOv2 backbones and any timm ViT with a class token read by ``global_pool="token"``):

    ``cls``             the CLS token after the final norm: exactly ``model(x)``, the reference feature (dim D)
    ``patch_mean``      the mean of the patch tokens after the final norm; register tokens excluded (dim D)
    ``cls+patch_mean``  the two concatenated, as DINOv2's linear eval does with ``use_avgpool`` (dim 2D)
    ``last4``           the CLS tokens of the last 4 blocks, each through the final norm, concatenated (dim 4D),
                        as DINOv2's linear eval reads ``get_intermediate_layers(n=4, norm=True)``

For every other backbone (CNNs): ``gap``, the backbone's own pooled output, exactly ``model(x)``.

All variants come from one ``model(x)`` call: forward hooks on the model's final norm and last blocks keep
the tokens that call computes anyway. Calling ``model(x)`` itself, rather than re-running its layers through
``forward_features``/``forward_intermediates``, keeps the default variant bit-identical to what the model
returns (and to feature caches written before variants existed), and leaves one forward per batch to count.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import nn

from core.base.errors import FlowerProbeError

if TYPE_CHECKING:
    from core.backbones.resolved import ResolvedBackbone

VIT_VARIANTS = ("cls", "patch_mean", "cls+patch_mean", "last4")
CNN_VARIANTS = ("gap",)
VARIANTS = VIT_VARIANTS + CNN_VARIANTS
# The pseudo-variant a token cache entry stores its patch tokens under, (n_images, tokens, dim): no pooled vector.
TOKENS = "tokens"
# DINOv2's linear eval concatenates the class tokens of this many last blocks (n_last_blocks=4).
LAST_BLOCKS = 4

VariantForward = Callable[[torch.Tensor], dict[str, torch.Tensor]]


def _is_token_vit(model: nn.Module) -> bool:
    """A timm ViT whose ``model(x)`` is the class token of ``model.norm``'s output (so the hooks see its tokens)."""
    return (
        isinstance(getattr(model, "blocks", None), nn.Sequential)
        and isinstance(getattr(model, "norm", None), nn.Module)
        and getattr(model, "cls_token", None) is not None
        and getattr(model, "global_pool", None) == "token"
        and isinstance(getattr(model, "fc_norm", nn.Identity()), nn.Identity)
        and isinstance(getattr(model, "num_prefix_tokens", None), int)
    )


def model_variants(model: nn.Module) -> tuple[str, ...]:
    """The variants ``model`` gives, its default (what ``model(x)`` returns) first."""
    if not _is_token_vit(model):
        return CNN_VARIANTS
    return VIT_VARIANTS if len(model.blocks) >= LAST_BLOCKS else VIT_VARIANTS[:3]


def available_variants(backbone: str | ResolvedBackbone) -> tuple[str, ...]:
    """The feature variants of ``backbone`` (a name or a ``ResolvedBackbone``), its default first;
    ``UnknownBackboneError`` for an unknown name.

    Read off the resolved record (``core.backbones.resolved``): declared for the built-ins, from one meta-device
    build for ``timm:`` names. Code that already holds the record should read ``backbone.variants``.
    """
    from core.backbones.resolved import resolve_backbone

    return resolve_backbone(backbone).variants


def default_variant(backbone: str | ResolvedBackbone) -> str:
    """What ``model(x)`` returns today: ``"cls"`` for ViTs, ``"gap"`` for CNNs; the reference feature."""
    return available_variants(backbone)[0]


def check_variant(backbone: str | ResolvedBackbone, variant: str | None) -> str:
    """``variant`` if ``backbone`` has it, its default for None; otherwise a FlowerProbeError naming ``features``."""
    from core.backbones.resolved import resolve_backbone

    return resolve_backbone(backbone).check_variant(variant)


def _patch_mean(tokens: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """Mean over the patch tokens (N, T, D) -> (N, D) in float32; class and register tokens left out."""
    return tokens[:, num_prefix_tokens:].float().mean(dim=1)


@contextmanager
def variant_forward(model: nn.Module, variants: Sequence[str]) -> Iterator[VariantForward]:
    """A function mapping images (N, 3, H, W) to ``{variant: features (N, dim)}``, one ``model(x)`` per call.

    The default variant is ``model(x)`` itself (dtype as the model computes it). The others are derived from
    tokens kept by forward hooks, installed for the duration of the ``with`` block only.
    """
    unknown = [v for v in variants if v not in model_variants(model)]
    if unknown:
        raise FlowerProbeError(
            f"features must be among {', '.join(model_variants(model))} for this model, got {unknown!r}."
        )
    default = model_variants(model)[0]
    kept: dict[str, torch.Tensor] = {}
    handles = []
    if set(variants) - {default}:
        handles.append(model.norm.register_forward_hook(lambda _m, _i, out: kept.__setitem__("tokens", out)))
    if "last4" in variants:
        # The last block's output goes through model.norm anyway ("tokens"); the three before it are kept here.
        for offset, block in enumerate(model.blocks[-LAST_BLOCKS:-1]):
            handles.append(
                block.register_forward_hook(lambda _m, _i, out, k=offset: kept.__setitem__(f"block{k}", out))
            )

    def forward(images: torch.Tensor) -> dict[str, torch.Tensor]:
        kept.clear()
        pooled = model(images)
        out = {default: pooled}
        if "tokens" in kept:
            tokens, cls = kept["tokens"], pooled.float()
            if "patch_mean" in variants or "cls+patch_mean" in variants:
                mean = _patch_mean(tokens, model.num_prefix_tokens)
                out["patch_mean"] = mean
                out["cls+patch_mean"] = torch.cat([cls, mean], dim=1)
            if "last4" in variants:
                earlier = [model.norm(kept[f"block{k}"][:, 0]).float() for k in range(LAST_BLOCKS - 1)]
                out["last4"] = torch.cat([*earlier, cls], dim=1)
        return {name: out[name] for name in variants}

    try:
        yield forward
    finally:
        for handle in handles:
            handle.remove()


def patch_token_grid(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The final-norm patch tokens of a ViT laid out on the patch grid (register tokens left out).

    Parameters
    ----------
    model : the ViT, as ``core.backbones.registry.build_backbone`` returns it
    images : Tensor of shape (N, 3, H, W), preprocessed, on the model's device and dtype

    Returns
    -------
    Tensor of shape (N, rows, cols, dim), float32, where rows = H // patch height and cols = W // patch width.
    """
    if not _is_token_vit(model):
        raise FlowerProbeError(
            f"features must be one of {', '.join(VIT_VARIANTS)} (patch tokens) only for a ViT backbone; this model "
            f"is a {type(model).__name__}, which has no patch tokens (its features: {', '.join(CNN_VARIANTS)})."
        )
    kept: dict[str, torch.Tensor] = {}
    handle = model.norm.register_forward_hook(lambda _m, _i, out: kept.__setitem__("tokens", out))
    try:
        model(images)
    finally:
        handle.remove()
    patches = kept["tokens"][:, model.num_prefix_tokens :].float()
    patch_h, patch_w = model.patch_embed.patch_size
    rows, cols = images.shape[2] // patch_h, images.shape[3] // patch_w
    return patches.reshape(patches.shape[0], rows, cols, patches.shape[2])
