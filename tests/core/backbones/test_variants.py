"""Feature variants (core.backbones.variants) against timm's own token APIs, on tiny random-weight ViTs."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from core.backbones.variants import (
    VIT_VARIANTS,
    available_variants,
    check_variant,
    default_variant,
    patch_token_grid,
    variant_forward,
)
from core.base.errors import FlowerProbeError


def _tiny_vit(*, reg_tokens: int = 0, depth: int = 5) -> VisionTransformer:
    torch.manual_seed(0)
    model = VisionTransformer(
        img_size=32, patch_size=8, embed_dim=24, depth=depth, num_heads=2, num_classes=0, reg_tokens=reg_tokens
    )
    return model.eval()


@pytest.mark.parametrize("reg_tokens", [0, 4])
def test_vit_variants_match_timm_token_apis(reg_tokens):
    model = _tiny_vit(reg_tokens=reg_tokens)
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode(), variant_forward(model, VIT_VARIANTS) as forward:
        out = forward(x)
        expected_cls = model(x)
        tokens = model.forward_features(x)  # (N, 1 + registers + 16 patches, D), after the final norm
        # DINOv2's linear eval: get_intermediate_layers(n=4, return_class_token=True, norm=True).
        last = model.forward_intermediates(x, indices=4, norm=True, return_prefix_tokens=True, intermediates_only=True)
    assert model.num_prefix_tokens == 1 + reg_tokens
    assert torch.equal(out["cls"], expected_cls)  # the default is model(x) itself
    patch_mean = tokens[:, 1 + reg_tokens :].mean(dim=1)  # register tokens excluded
    torch.testing.assert_close(out["patch_mean"], patch_mean)
    torch.testing.assert_close(out["cls+patch_mean"], torch.cat([expected_cls, patch_mean], dim=1))
    torch.testing.assert_close(out["last4"], torch.cat([prefix[:, 0] for _, prefix in last], dim=1))
    assert out["last4"].shape == (3, 4 * 24)


def test_patch_token_grid_lays_tokens_on_the_grid():
    model = _tiny_vit(reg_tokens=4)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        grid = patch_token_grid(model, x)
        tokens = model.forward_features(x)[:, 5:]
    assert grid.shape == (2, 4, 4, 24)
    torch.testing.assert_close(grid[:, 1, 2], tokens[:, 1 * 4 + 2])


def test_a_cnn_has_no_patch_tokens():
    from torchvision.models import resnet18

    with pytest.raises(FlowerProbeError, match="features must be one of"):
        patch_token_grid(resnet18(num_classes=10).eval(), torch.randn(1, 3, 32, 32))


def test_backbone_variants_and_defaults():
    assert available_variants("dinov2_vits14") == VIT_VARIANTS
    assert default_variant("dinov2_vits14") == "cls"
    assert available_variants("resnet50") == ("gap",)
    assert default_variant("efficientnet_lite0") == "gap"
    assert check_variant("resnet50", None) == "gap"
    assert check_variant("dinov2_vits14", "last4") == "last4"


@pytest.mark.parametrize("given", ["patch_mean", "gap_tokens"])
def test_a_variant_the_backbone_lacks_is_refused_naming_the_parameter(given):
    with pytest.raises(FlowerProbeError) as error:
        check_variant("resnet50", given)
    message = str(error.value)
    assert message.startswith("features must be one of gap for resnet50")
    assert repr(given) in message
    with pytest.raises(FlowerProbeError, match=r"features must be one of cls, patch_mean, cls\+patch_mean, last4"):
        check_variant("dinov2_vits14", "gap")


def test_a_shallow_vit_has_no_last4():
    model = _tiny_vit(depth=3)
    with pytest.raises(FlowerProbeError, match="last4"), variant_forward(model, ["last4"]):
        pass
