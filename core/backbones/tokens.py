"""What a backbone computes besides its pooled feature: its final patch tokens, and a pooled feature per block.

- ``token_layout`` / ``token_forward``: the final-block patch tokens of a ViT (after the final norm; the class
  token and any register tokens are left out, and recorded as left out) or, for a CNN, the positions of its last
  feature map (the input of its global average pool), as ``(N, tokens, dim)``: what the attentive probe reads.
- ``layer_names`` / ``layer_forward``: one pooled feature per block from the same ``model(x)`` call: the class
  token of every ViT block through the final norm (DINOv2's ``get_intermediate_layers(norm=True)``), or the
  global average pool of every CNN stage, the last entry being ``model(x)`` itself, so the last layer's probe
  is exactly the ordinary probe.

Everything is read from forward hooks on one ``model(x)`` call rather than timm's ``forward_intermediates``,
which re-runs the blocks and exists only for timm models (EfficientNet-Lite0 and torchvision's ResNet-50 are
not): the hooks work for every backbone of ``core.backbones.registry`` and cost no second forward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache

import torch
from torch import nn

from core.base.errors import FlowerProbeError


@dataclass(frozen=True)
class TokenLayout:
    """The token array one image gives: ``tokens`` x ``dim`` on a ``grid`` (rows, cols).

    ``kind`` is ``"patch tokens"`` (a ViT) or ``"feature map"`` (a CNN); ``excluded`` names what was left out.
    """

    kind: str
    tokens: int
    dim: int
    grid: tuple[int, int]
    excluded: tuple[str, ...]

    def bytes_for(self, images: int) -> int:
        """Bytes of ``images`` x tokens x dim in fp16."""
        return int(images) * self.tokens * self.dim * 2


def is_token_vit(model: nn.Module) -> bool:
    """A timm ViT whose final norm sees every token (class, registers, patches)."""
    return (
        isinstance(getattr(model, "blocks", None), nn.Sequential)
        and isinstance(getattr(model, "norm", None), nn.Module)
        and isinstance(getattr(model, "num_prefix_tokens", None), int)
        and getattr(model, "patch_embed", None) is not None
    )


def _last_pool(model: nn.Module) -> nn.Module | None:
    pools = [m for m in model.modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    return pools[-1] if pools else None


@contextmanager
def token_hook(model: nn.Module) -> Iterator[Callable[[], torch.Tensor]]:
    """While in the block, every ``model(x)`` keeps its final tokens; the function returns the last call's,
    (N, tokens, dim) in the model's dtype. Raises a FlowerProbeError naming ``tokens`` for a model with neither
    patch tokens nor a feature map."""
    kept: dict[str, torch.Tensor] = {}
    if is_token_vit(model):
        # Only the token sequence (N, T, D): the feature variants call model.norm again on single class tokens
        # (last4) after the forward, which must not replace what the forward kept.
        def keep(_m, _i, out: torch.Tensor) -> None:
            if out.ndim == 3:
                kept["t"] = out

        handle = model.norm.register_forward_hook(keep)

        def pick(t: torch.Tensor) -> torch.Tensor:
            return t[:, model.num_prefix_tokens :]
    else:
        pool = _last_pool(model)
        if pool is None:
            raise FlowerProbeError(
                f"tokens need a backbone with patch tokens (a ViT) or a last feature map before a global average "
                f"pool (a CNN); {type(model).__name__} has neither."
            )
        handle = pool.register_forward_pre_hook(lambda _m, args: kept.__setitem__("t", args[0]))

        def pick(t: torch.Tensor) -> torch.Tensor:
            return t.flatten(2).transpose(1, 2)  # (N, C, H, W) -> (N, H*W, C), positions row by row

    try:
        yield lambda: pick(kept["t"])
    finally:
        handle.remove()


@contextmanager
def token_forward(model: nn.Module) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
    """A function mapping images (N, 3, H, W) to tokens (N, tokens, dim) (the model's dtype), one ``model(x)`` each."""
    with token_hook(model) as last:

        def forward(images: torch.Tensor) -> torch.Tensor:
            model(images)
            return last()

        yield forward


def layout_of(model: nn.Module, *, input_size: int) -> TokenLayout:
    """``model``'s token layout for square inputs of ``input_size`` (a meta-device forward: no compute)."""
    if is_token_vit(model):
        patch_h, patch_w = model.patch_embed.patch_size
        grid = (input_size // patch_h, input_size // patch_w)
        registers = model.num_prefix_tokens - (1 if getattr(model, "cls_token", None) is not None else 0)
        excluded = (("class token",) if getattr(model, "cls_token", None) is not None else ()) + (
            (f"{registers} register tokens",) if registers else ()
        )
        return TokenLayout("patch tokens", grid[0] * grid[1], int(model.embed_dim), grid, excluded)
    with torch.device("meta"), token_forward(model) as forward:
        shape_tokens = forward(torch.zeros(1, 3, input_size, input_size))
    kept: dict[str, tuple] = {}
    pool = _last_pool(model)
    handle = pool.register_forward_pre_hook(lambda _m, args: kept.__setitem__("shape", tuple(args[0].shape)))
    try:
        with torch.device("meta"):
            model(torch.zeros(1, 3, input_size, input_size))
    finally:
        handle.remove()
    _, channels, rows, cols = kept["shape"]
    return TokenLayout("feature map", int(shape_tokens.shape[1]), int(channels), (rows, cols), ("global pool",))


@cache
def token_layout(backbone: str) -> TokenLayout:
    """``backbone``'s token layout at its input size; a FlowerProbeError naming ``tokens`` if it has none."""
    from core.backbones.registry import build_architecture, get_config

    with torch.device("meta"):
        model = build_architecture(backbone)
    return layout_of(model, input_size=get_config(backbone).input_size)


# ----------------------------------------------------------------------------------------------- layers


def _stages(model: nn.Module) -> list[nn.Module]:
    """A CNN's stages, shallow to deep: timm's ``feature_info`` modules, torchvision ResNet's layer1-4,
    EfficientNet-PyTorch's blocks; empty when none of these is found."""
    info = getattr(model, "feature_info", None)
    if info is not None:
        names = [i["module"] for i in (info if isinstance(info, list) else info.get_dicts())]
        modules = dict(model.named_modules())
        return [modules[n] for n in names if n in modules]
    if all(hasattr(model, f"layer{i}") for i in range(1, 5)):
        return [getattr(model, f"layer{i}") for i in range(1, 5)]
    blocks = getattr(model, "_blocks", None)
    if isinstance(blocks, nn.ModuleList):
        return list(blocks)
    return []


def model_layers(model: nn.Module) -> tuple[str, ...]:
    """The layer names of ``model``, shallow to deep; the last one's feature is ``model(x)``'s."""
    if is_token_vit(model):
        return tuple(f"block{i + 1}" for i in range(len(model.blocks)))
    return tuple(f"stage{i + 1}" for i in range(len(_stages(model)))) + ("final",)


@cache
def layer_names(backbone: str) -> tuple[str, ...]:
    """The names of ``backbone``'s probe-able layers (``block1`` .. ``blockN``; CNNs ``stage1`` .. and ``final``)."""
    from core.backbones.registry import build_architecture

    with torch.device("meta"):
        model = build_architecture(backbone)
    return model_layers(model)


def parse_layers(text: str, *, backbone: str) -> tuple[str, ...]:
    """``"all"`` or 1-based indices ``"3,6,12"`` (negative from the end: ``-1`` the last) -> layer names.

    Raises a FlowerProbeError naming ``layers`` and the backbone's depth for an index out of range.
    """
    names = layer_names(backbone)
    text = str(text).strip().lower()
    if text == "all":
        return names
    picked = []
    for item in text.split(","):
        item = item.strip()
        try:
            index = int(item)
        except ValueError:
            raise FlowerProbeError(
                f"layers must be 'all' or block numbers separated by commas (1..{len(names)}, or -1 for the last), "
                f"got {item!r} in {text!r}."
            ) from None
        position = index - 1 if index > 0 else len(names) + index
        if index == 0 or not 0 <= position < len(names):
            raise FlowerProbeError(
                f"layers must lie in 1..{len(names)} (or -{len(names)}..-1): {backbone} has {len(names)} "
                f"layers ({names[0]} .. {names[-1]}), got {index}."
            )
        picked.append(names[position])
    return tuple(dict.fromkeys(picked))


@contextmanager
def layer_forward(model: nn.Module) -> Iterator[Callable[[torch.Tensor], dict[str, torch.Tensor]]]:
    """A function mapping images (N, 3, H, W) to ``{layer: pooled feature (N, dim), float32}``, one ``model(x)``.

    ViT layers: each block's class token (the first token; the mean of the patch tokens for a ViT without one)
    through the final norm, so the last block's is exactly ``model(x)`` for a ViT read by its class token.
    CNN layers: each stage's global average pool, then ``model(x)`` itself as ``final``.
    """
    names = model_layers(model)
    kept: dict[int, torch.Tensor] = {}
    modules = list(model.blocks) if is_token_vit(model) else _stages(model)
    handles = [
        module.register_forward_hook(lambda _m, _i, out, k=k: kept.__setitem__(k, out))
        for k, module in enumerate(modules)
    ]

    def forward(images: torch.Tensor) -> dict[str, torch.Tensor]:
        kept.clear()
        pooled = model(images)
        out: dict[str, torch.Tensor] = {}
        for k in range(len(modules)):
            value = kept[k]
            if is_token_vit(model):
                has_cls = getattr(model, "cls_token", None) is not None
                tokens = model.norm(value)
                out[names[k]] = (tokens[:, 0] if has_cls else tokens[:, model.num_prefix_tokens :].mean(1)).float()
            else:
                out[names[k]] = value.float().mean(dim=(2, 3))
        if not is_token_vit(model):
            out["final"] = pooled.float()
        return out

    try:
        yield forward
    finally:
        for handle in handles:
            handle.remove()
