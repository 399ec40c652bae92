"""The resolved backbone record: one look-up of a name, passed down; the same answers as the name-based calls."""

from __future__ import annotations

import pickle

import pytest
import torch

from core.backbones import registry
from core.backbones.registry import UnknownBackboneError, list_backbones
from core.backbones.resolved import ResolvedBackbone, resolve_backbone
from core.backbones.variants import model_variants
from core.base.errors import FlowerProbeError


@pytest.mark.parametrize("name", list_backbones())
def test_declared_variants_are_what_the_built_architecture_gives(name):
    # Independent check of the declaration: build the architecture on the meta device and classify it.
    with torch.device("meta"):
        model = registry.build_architecture(name)
    assert resolve_backbone(name).variants == model_variants(model)


def test_a_timm_name_gets_its_variants_from_its_meta_build():
    import timm

    name = "vit_tiny_patch16_224"
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=0)
    assert resolve_backbone(f"timm:{name}").variants == model_variants(model)


def test_a_spec_resolves_to_the_name_weights_and_config():
    resolved = resolve_backbone("resnet50@random")
    assert (resolved.name, resolved.weights, resolved.spec) == ("resnet50", "random", "resnet50@random")
    assert resolved.config == registry.get_config("resnet50")
    assert (resolved.input_size, resolved.feature_dim, resolved.default_variant) == (224, 2048, "gap")
    assert resolve_backbone("resnet50", weights="random") == resolved
    assert resolve_backbone("resnet50").weights == "pretrained"
    assert resolve_backbone(resolved) is resolved


def test_an_unknown_name_lists_the_closest_valid_names():
    with pytest.raises(UnknownBackboneError, match="Did you mean resnet50"):
        resolve_backbone("resnet5@random")


@pytest.mark.parametrize("spec", ["", "@random", "resnet50@"])
def test_a_malformed_spec_is_refused_naming_the_parameter(spec):
    with pytest.raises(FlowerProbeError, match="backbones must be written NAME"):
        resolve_backbone(spec)


def test_weights_given_twice_or_against_a_record_are_refused():
    with pytest.raises(FlowerProbeError, match="weights must be given once"):
        resolve_backbone("resnet50@random", weights="pretrained")
    with pytest.raises(FlowerProbeError, match="weights must be left out or be 'random'"):
        resolve_backbone(resolve_backbone("resnet50@random"), weights="pretrained")


def test_an_unlocated_record_has_no_weights_tag_and_locating_runs_the_resolver_once(workspace, monkeypatch):
    resolved = resolve_backbone("resnet50@random")
    with pytest.raises(FlowerProbeError, match="located"):
        _ = resolved.weights_tag
    calls = []
    real = registry.locate_weights
    monkeypatch.setattr(
        "core.backbones.resolved.locate_weights", lambda entry, **kw: calls.append(entry) or real(entry, **kw)
    )
    located = resolved.located(workspace=workspace)
    assert located.source == registry.resolve_weights("resnet50", weights="random")
    assert located.weights_tag == "random"
    assert located.located(workspace=workspace) is located
    assert len(calls) == 1


def test_build_gives_the_model_build_backbone_gives(workspace):
    resolved = resolve_backbone("efficientnet_lite0@random").located(workspace=workspace)
    model = resolved.build(workspace=workspace)
    reference, source = registry.build_backbone("efficientnet_lite0", weights="random", workspace=workspace)
    assert source == resolved.source
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(model(images), reference(images))


def test_the_record_pickles_by_name_and_keeps_its_source(workspace):
    resolved = resolve_backbone("dinov2_vits14@random").located(workspace=workspace)
    again = pickle.loads(pickle.dumps(resolved))
    assert isinstance(again, ResolvedBackbone)
    assert again == resolved and again.source == resolved.source


@pytest.mark.parametrize(("variant", "allowed"), [("last4", False), ("gap", True), ("nope", False)])
def test_check_variant_on_the_record(variant, allowed):
    resolved = resolve_backbone("resnet50")
    if allowed:
        assert resolved.check_variant(variant) == variant
    else:
        with pytest.raises(FlowerProbeError, match="features must be one of gap for resnet50"):
            resolved.check_variant(variant)
    assert resolved.check_variant(None) == "gap"
