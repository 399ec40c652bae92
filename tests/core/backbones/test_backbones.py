"""Tests for core.backbones.registry: registry, weight resolution priority, safe checkpoint loading, preprocessing.

Everything runs on CPU without network: an autouse fixture makes every URL fetch fail, and the checkpoints
are made here with random values in the official formats (DINOv2 ``*_pretrain.pth``, torchvision
``resnet50-*.pth``). ViT-L/g are never built (too big); ViT-B only as config.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import socket
import urllib.error
from pathlib import Path

import huggingface_hub.constants
import pytest
import sklearn.datasets
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.models import ResNet50_Weights, resnet50

from core.backbones import registry as backbones
from core.backbones.registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BackboneConfig,
    CheckpointError,
    UnknownBackboneError,
    build_backbone,
    get_config,
    list_backbones,
    local_weights,
    make_transform,
    parse_weights_overrides,
    resolve_weights,
)
from core.base.errors import FlowerProbeError, MissingFileError
from core.base.workspace import WORKSPACE_ENV, Workspace

SKLEARN_IMAGES = Path(sklearn.datasets.__file__).parent / "images"  # flower.jpg, china.jpg ship with scikit-learn


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """Every download fails fast, as on a machine without internet; records the URLs that were tried.

    Also points torch's and Hugging Face's caches at empty temporary folders (this machine's own caches
    must not decide a test) and sets HF_HUB_OFFLINE, for us and for timm's own loader.
    """
    tried: list[str] = []

    def refuse(url, *args, **kwargs):
        tried.append(getattr(url, "full_url", url))
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known (test)"))

    monkeypatch.setattr("urllib.request.urlopen", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return tried


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Workspace:
    monkeypatch.setenv(WORKSPACE_ENV, str(tmp_path / "ws"))
    return Workspace.from_env()


def _images(n: int, *, seed: int) -> torch.Tensor:
    """A batch of n normalised 224x224 inputs, shape (n, 3, 224, 224)."""
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------- DINOv2 official format


def _official_dinov2_vits14_state(seed: int) -> dict[str, torch.Tensor]:
    """Random tensors under the key names and shapes of dinov2_vits14_pretrain.pth, written out by hand."""
    gen = torch.Generator().manual_seed(seed)
    dim, hidden, depth = 384, 1536, 12

    def rand(*shape, std=0.02):
        return torch.randn(*shape, generator=gen) * std

    state = {
        "cls_token": rand(1, 1, dim, std=1.0),
        "pos_embed": rand(1, 1 + 37 * 37, dim, std=1.0),  # 518 px / 14 = 37; large so resampling matters
        "mask_token": rand(1, dim),
        "patch_embed.proj.weight": rand(dim, 3, 14, 14),
        "patch_embed.proj.bias": rand(dim),
        "norm.weight": 1 + rand(dim, std=0.1),
        "norm.bias": rand(dim),
    }
    for i in range(depth):
        p = f"blocks.{i}."
        state |= {
            p + "norm1.weight": 1 + rand(dim, std=0.1),
            p + "norm1.bias": rand(dim),
            p + "attn.qkv.weight": rand(3 * dim, dim),
            p + "attn.qkv.bias": rand(3 * dim),
            p + "attn.proj.weight": rand(dim, dim),
            p + "attn.proj.bias": rand(dim),
            p + "ls1.gamma": rand(dim, std=0.5),
            p + "norm2.weight": 1 + rand(dim, std=0.1),
            p + "norm2.bias": rand(dim),
            p + "mlp.fc1.weight": rand(hidden, dim),
            p + "mlp.fc1.bias": rand(hidden),
            p + "mlp.fc2.weight": rand(dim, hidden),
            p + "mlp.fc2.bias": rand(dim),
            p + "ls2.gamma": rand(dim, std=0.5),
        }
    return state


def _official_dinov2_forward(state: dict[str, torch.Tensor], x: torch.Tensor, *, num_heads: int = 6) -> torch.Tensor:
    """The official DinoVisionTransformer forward (x_norm_clstoken), written from dinov2/models/vision_transformer.py.

    Includes its run-time position-table interpolation: bicubic, no antialias, scale factor (grid + 0.1) / 37.
    """
    n, _, h, w = x.shape
    tokens = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=14)
    tokens = tokens.flatten(2).transpose(1, 2)
    dim = tokens.shape[-1]
    tokens = torch.cat([state["cls_token"].expand(n, -1, -1), tokens], dim=1)
    pos = state["pos_embed"]
    side = int(math.sqrt(pos.shape[1] - 1))
    grid = pos[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((h // 14 + 0.1) / side, (w // 14 + 0.1) / side), mode="bicubic")
    tokens = tokens + torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)
    depth = sum(1 for key in state if key.endswith(".ls1.gamma"))
    for i in range(depth):
        p = f"blocks.{i}."
        y = F.layer_norm(tokens, (dim,), state[p + "norm1.weight"], state[p + "norm1.bias"], eps=1e-6)
        qkv = F.linear(y, state[p + "attn.qkv.weight"], state[p + "attn.qkv.bias"])
        q, k, v = qkv.reshape(n, -1, 3, num_heads, dim // num_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, -1, dim)
        y = F.linear(y, state[p + "attn.proj.weight"], state[p + "attn.proj.bias"])
        tokens = tokens + state[p + "ls1.gamma"] * y
        y = F.layer_norm(tokens, (dim,), state[p + "norm2.weight"], state[p + "norm2.bias"], eps=1e-6)
        y = F.linear(
            F.gelu(F.linear(y, state[p + "mlp.fc1.weight"], state[p + "mlp.fc1.bias"])),
            state[p + "mlp.fc2.weight"],
            state[p + "mlp.fc2.bias"],
        )
        tokens = tokens + state[p + "ls2.gamma"] * y
    return F.layer_norm(tokens, (dim,), state["norm.weight"], state["norm.bias"], eps=1e-6)[:, 0]


def test_official_dinov2_checkpoint_loads_from_a_path_and_matches_the_official_forward(tmp_path):
    state = _official_dinov2_vits14_state(seed=1)
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(state, path)

    model, source = build_backbone("dinov2_vits14", weights=str(path))

    assert source.kind == "file" and source.path == path.resolve() and source.tag.startswith("sha256:")
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x = _images(2, seed=0)
    with torch.no_grad():
        features = model(x)
    assert features.shape == (2, 384) and features.dtype == torch.float32
    # Same CLS feature as the official model, including its run-time position-table interpolation (this fails
    # by >1e-2 if the table is resized to 16x16 without the 0.1 offset, or with timm's antialiased resample).
    torch.testing.assert_close(features, _official_dinov2_forward(state, x), atol=2e-4, rtol=2e-4)


# ------------------------------------------------------------------------------------------------ ResNet-50


@pytest.fixture(scope="module")
def resnet_checkpoint(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """An official-format torchvision ResNet-50 state dict (fc.weight/fc.bias included), seed 1."""
    with torch.random.fork_rng():
        torch.manual_seed(1)
        state = resnet50(weights=None).state_dict()
    path = tmp_path_factory.mktemp("resnet") / "resnet50-0676ba61.pth"
    torch.save(state, path)
    return path, state


def test_torchvision_resnet50_checkpoint_loads_from_a_path_dropping_the_classifier(resnet_checkpoint):
    path, state = resnet_checkpoint
    assert "fc.weight" in state and "fc.bias" in state

    model, source = build_backbone("resnet50", weights=path)

    assert source.kind == "file"
    torch.testing.assert_close(model.conv1.weight, state["conv1.weight"])
    torch.testing.assert_close(model.layer4[2].bn3.running_var, state["layer4.2.bn3.running_var"])
    with torch.no_grad():
        features = model(_images(2, seed=0))
    assert features.shape == (2, 2048) and bool((features >= 0).all())  # post-ReLU average pool


def test_pretrained_uses_the_file_placed_in_the_workspace(resnet_checkpoint, workspace, offline):
    path, state = resnet_checkpoint
    placed = workspace.weights_dir / "resnet50-0676ba61.pth"
    os.link(path, placed)

    model, source = build_backbone("resnet50", workspace=workspace)

    assert (source.kind, source.path) == ("file", placed)
    assert source.tag == resolve_weights("resnet50", weights=path).tag  # same bytes, same cache tag
    torch.testing.assert_close(model.conv1.weight, state["conv1.weight"])
    assert offline == []  # found locally, nothing fetched


def test_wrong_architecture_checkpoint_names_the_file_and_the_backbone(resnet_checkpoint):
    path, _ = resnet_checkpoint
    with pytest.raises(CheckpointError) as caught:
        build_backbone("efficientnet_lite0", weights=path)
    message = str(caught.value)
    assert str(path) in message and "efficientnet_lite0" in message and "missing" in message


# ------------------------------------------------------------------------------------ where weights come from


def test_offline_without_weights_names_the_file_url_and_folder(workspace, offline, tmp_path):
    config = get_config("dinov2_vits14")
    with pytest.raises(MissingFileError) as caught:
        build_backbone("dinov2_vits14", workspace=workspace)
    message = str(caught.value)
    assert config.weights_filename in message
    assert str(workspace.weights_dir) in message
    assert str(tmp_path / "torch-home" / "hub" / "checkpoints" / config.weights_filename) in message  # searched too
    assert config.weights_url in message
    assert offline == [config.weights_url]
    assert list(workspace.weights_dir.iterdir()) == []  # no partial file left behind


def test_missing_explicit_path_is_reported_with_the_parameter(tmp_path):
    with pytest.raises(MissingFileError, match="weights must be"):
        resolve_weights("resnet50", weights=str(tmp_path / "nope.pth"))


def test_tag_follows_file_content(tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(b"one")
    first = resolve_weights("resnet50", weights=path).tag
    assert resolve_weights("resnet50", weights=path).tag == first
    path.write_bytes(b"two!")
    assert resolve_weights("resnet50", weights=path).tag != first
    assert first.startswith("sha256:") and len(first) == len("sha256:") + 16


def test_random_weights_are_deterministic_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a, source = build_backbone("efficientnet_lite0", weights="random")
    assert torch.rand(1) == expected_next
    b, _ = build_backbone("efficientnet_lite0", weights="random")
    assert (source.kind, source.path, source.tag) == ("random", None, "random")
    x = _images(1, seed=0)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), atol=0, rtol=0)


# --------------------------------------------------------------------------------------------- safe loading


class _Payload:
    """Unpickling this creates the marker file: proof the file's code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickle_payload_checkpoint_is_refused_without_running_it(tmp_path, writer):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "resnet50-0676ba61.pth"
    state = {"conv1.weight": torch.zeros(1), "evil": _Payload(marker)}
    if writer == "torch.save":
        torch.save(state, path)
    else:
        path.write_bytes(pickle.dumps(state, protocol=2))

    with pytest.raises(CheckpointError, match="never unpickles") as caught:
        build_backbone("resnet50", weights=path)

    assert str(path) in str(caught.value)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ registry, config


def test_unknown_name_lists_the_valid_names():
    with pytest.raises(UnknownBackboneError) as caught:
        get_config("dinov3_vits16")
    assert isinstance(caught.value, FlowerProbeError) and isinstance(caught.value, KeyError)
    message = str(caught.value)
    assert not message.startswith("'")  # not KeyError's quoted form
    assert "dinov3_vits16" in message and all(name in message for name in list_backbones())
    with pytest.raises(UnknownBackboneError):
        build_backbone("nope", weights="random")


def test_registry_lists_the_six_backbones_with_their_feature_sizes():
    dims = {name: get_config(name).feature_dim for name in list_backbones()}
    assert dims == {
        "dinov2_vits14": 384,
        "dinov2_vitb14": 768,
        "dinov2_vitl14": 1024,
        "dinov2_vitg14": 1536,
        "resnet50": 2048,
        "efficientnet_lite0": 1280,
    }
    vitb = get_config("dinov2_vitb14")
    assert vitb.weights_url == "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth"
    assert vitb.weights_filename == "dinov2_vitb14_pretrain.pth" and vitb.interpolation == "bicubic"
    assert get_config("resnet50").interpolation == "bilinear"


@pytest.mark.parametrize("name", ["dinov2_vits14", "efficientnet_lite0"])
def test_transform_gives_a_normalised_crop(name):
    config = get_config(name)
    transform = make_transform(config)
    image = Image.new("L", (400, 300), color=255)  # greyscale, landscape: converted and cropped

    tensor = transform(image)

    assert tensor.shape == (3, 224, 224) and tensor.dtype == torch.float32
    expected = (1 - torch.tensor(config.mean)) / torch.tensor(config.std)  # white pixels after normalising
    torch.testing.assert_close(tensor.mean(dim=(1, 2)), expected)
    # DataLoader workers receive the transform pickled.
    torch.testing.assert_close(pickle.loads(pickle.dumps(transform))(image), tensor)


def test_config_defaults_are_the_imagenet_eval_recipe():
    config = BackboneConfig(
        name="x", feature_dim=8, weights_url=None, weights_filename="x.pth", description="", license=""
    )
    assert (config.input_size, config.resize, config.mean, config.std) == (224, 256, IMAGENET_MEAN, IMAGENET_STD)


# -------------------------------------------------------------------------------------------- EfficientNet-Lite0


def test_efficientnet_lite0_pretrained_comes_from_the_package_and_classifies_plausibly(workspace, offline):
    model, source = build_backbone("efficientnet_lite0", workspace=workspace)

    assert source.kind == "package" and source.path.name == "efficientnet-lite0-57934424.pth"
    assert offline == []
    transform = make_transform(get_config("efficientnet_lite0"))
    batch = torch.stack([transform(Image.open(SKLEARN_IMAGES / name)) for name in ("flower.jpg", "china.jpg")])
    with torch.no_grad():
        features = model(batch)
    assert features.shape == (2, 1280)
    # The package's own ImageNet classifier on our features: real weights plus the right preprocessing give
    # a daisy and a palace (with ImageNet mean/std and bicubic the flower comes out as a lampshade).
    head = torch.load(source.path, map_location="cpu", weights_only=True)
    logits = F.linear(features, head["_fc.weight"], head["_fc.bias"])
    categories = ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    assert [categories[i] for i in logits.argmax(dim=1)] == ["daisy", "palace"]


def test_efficientnet_lite0_batchnorm_fold_keeps_the_features_of_the_unfolded_model(workspace):
    """The build-time BN/padding fold (a CPU speed-up) changes the features by fp32 rounding only."""
    model, source = build_backbone("efficientnet_lite0", workspace=workspace)
    entry = backbones._REGISTRY["efficientnet_lite0"]
    reference = entry.build(entry.config)
    backbones._load_weights(reference, source.path, entry)
    reference.eval()

    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in reference.modules()) == 49
    x = _images(2, seed=3)
    with torch.no_grad():
        assert (model(x) - reference(x)).abs().max() < 1e-4


# --------------------------------------------------------------------------------------- torch's hub cache


def test_official_dinov2_file_in_the_torch_hub_cache_is_found_without_a_download(workspace, offline, tmp_path):
    state = _official_dinov2_vits14_state(seed=2)
    checkpoints = tmp_path / "torch-home" / "hub" / "checkpoints"  # TORCH_HOME is set by the offline fixture
    checkpoints.mkdir(parents=True)
    torch.save(state, checkpoints / "dinov2_vits14_pretrain.pth")

    assert local_weights("dinov2_vits14", workspace=workspace) == checkpoints / "dinov2_vits14_pretrain.pth"
    model, source = build_backbone("dinov2_vits14", workspace=workspace)

    assert (source.kind, source.path) == ("torch-hub-cache", checkpoints / "dinov2_vits14_pretrain.pth")
    assert offline == [] and list(workspace.weights_dir.iterdir()) == []
    # That file's tensors were loaded (the official forward on them is checked above, from a path).
    torch.testing.assert_close(model.cls_token, state["cls_token"], atol=0, rtol=0)
    torch.testing.assert_close(model.blocks[11].ls2.gamma, state["blocks.11.ls2.gamma"], atol=0, rtol=0)


def test_the_workspace_file_wins_over_the_torch_hub_cache(workspace, resnet_checkpoint, tmp_path):
    path, _ = resnet_checkpoint
    checkpoints = tmp_path / "torch-home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    os.link(path, checkpoints / "resnet50-0676ba61.pth")
    assert resolve_weights("resnet50", workspace=workspace).kind == "torch-hub-cache"
    os.link(path, workspace.weights_dir / "resnet50-0676ba61.pth")
    assert resolve_weights("resnet50", workspace=workspace).kind == "file"


# ---------------------------------------------------------------------------------------------- timm models

# One tag per family: DINOv2 with registers, DINOv3 ViT, ConvNeXt, timm ResNet (the smallest of each).
TIMM_FAMILIES = [
    "vit_small_patch14_reg4_dinov2.lvd142m",
    "vit_small_patch16_dinov3.lvd1689m",
    "convnext_atto.d2_in1k",
    "resnet18.a1_in1k",
]


def _write_hf_cache(hf_home: Path, repo_id: str, filename: str, data: bytes) -> Path:
    """Put ``data`` where huggingface_hub's cache keeps ``filename`` of model repo ``repo_id`` (its documented
    layout: blobs/<sha256>, snapshots/<commit>/<file> as a relative symlink, refs/main naming the commit)."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    sha, commit = hashlib.sha256(data).hexdigest(), hashlib.sha1(repo_id.encode()).hexdigest()
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / sha).write_bytes(data)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / filename).symlink_to(Path("..") / ".." / "blobs" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return repo / "blobs" / sha


def _random_timm_state(tag: str, seed: int) -> dict[str, torch.Tensor]:
    """What the tag's HF repo holds (timm's own state dict, classifier included), with random values."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = timm.create_model(tag, pretrained=False)
        # Perturb everything (norms and LayerScale too), so a tensor that failed to load changes the features.
        state = model.state_dict()
        return {k: (v + 0.05 * torch.randn_like(v)) if v.is_floating_point() else v for k, v in state.items()}


@pytest.mark.parametrize(
    "tag",
    [
        # The two ViTs run at their fixed 518/256-px inputs (timm builds them so): seconds idle, minutes on a busy CPU.
        pytest.param(TIMM_FAMILIES[0], marks=pytest.mark.slow),
        pytest.param(TIMM_FAMILIES[1], marks=pytest.mark.slow),
        *TIMM_FAMILIES[2:],
    ],
)
def test_timm_tag_from_the_hf_cache_matches_timms_own_model(tag, workspace, offline, tmp_path):
    from safetensors.torch import save

    state = _random_timm_state(tag, seed=4)
    blob = _write_hf_cache(tmp_path / "hf-home", f"timm/{tag}", "model.safetensors", save(state))
    name = f"timm:{tag}"

    model, source = build_backbone(name, workspace=workspace)

    assert source.kind == "hf-cache" and source.path.resolve() == blob
    assert offline == [] and list(workspace.weights_dir.iterdir()) == []
    # timm's own: create_model(pretrained=True) finds the same cache through huggingface_hub (offline).
    reference = timm.create_model(tag, pretrained=True, num_classes=0).eval()
    assert type(model) is type(reference) and model.num_classes == 0
    data = timm.data.resolve_model_data_config(reference)
    config = get_config(name)
    assert (config.input_size, config.mean, config.std, config.interpolation, config.crop_mode) == (
        data["input_size"][1],
        tuple(data["mean"]),
        tuple(data["std"]),
        data["interpolation"],
        data["crop_mode"],
    )
    image = Image.open(SKLEARN_IMAGES / "flower.jpg")
    pixels = make_transform(config)(image)
    torch.testing.assert_close(pixels, timm.data.create_transform(**data)(image), atol=0, rtol=0)
    with torch.no_grad():
        features, expected = model(pixels[None]), reference(pixels[None])
    assert features.shape == (1, config.feature_dim)
    assert (features - expected).abs().max() <= 1e-4
    assert features.std() > 1e-3  # real, non-constant features: the comparison above can fail


def test_timm_config_downloads_nothing_and_describes_the_tag(offline):
    config = get_config("timm:vit_small_patch14_reg4_dinov2.lvd142m")
    assert (config.feature_dim, config.input_size, config.resize) == (384, 518, 518)
    assert config.hf_hub_id == "timm/vit_small_patch14_reg4_dinov2.lvd142m"
    assert get_config("timm:resnet18.a1_in1k").resize == 235  # floor(224 / 0.95), timm's eval resize
    assert offline == []


def test_offline_timm_tag_with_nothing_cached_names_repo_url_and_every_folder(workspace, offline, tmp_path):
    with pytest.raises(MissingFileError) as caught:
        build_backbone("timm:resnet18.a1_in1k", workspace=workspace)
    message = str(caught.value)
    assert "timm/resnet18.a1_in1k" in message
    assert "https://huggingface.co/timm/resnet18.a1_in1k/resolve/main/model.safetensors" in message
    assert str(workspace.weights_dir) in message and str(tmp_path / "hf-home" / "hub") in message
    assert "HF_HUB_OFFLINE" in message


def test_own_checkpoint_for_a_timm_architecture_loads_and_a_foreign_one_is_reported(tmp_path):
    from safetensors.torch import save_file

    state = _random_timm_state("convnext_atto", seed=5)
    path = tmp_path / "my_finetuned.safetensors"
    save_file(state, str(path))
    model, source = build_backbone("timm:convnext_atto", weights=path)
    assert source.kind == "file"
    torch.testing.assert_close(model.stem[0].weight, state["stem.0.weight"])

    foreign = tmp_path / "resnet.safetensors"
    save_file(_random_timm_state("resnet18", seed=5), str(foreign))
    with pytest.raises(CheckpointError) as caught:
        build_backbone("timm:convnext_atto", weights=foreign)
    message = str(caught.value)
    assert str(foreign) in message and "timm:convnext_atto" in message
    # A few lines, not 200 keys: the first three of each kind (the safetensors file keeps its keys sorted).
    assert "missing stem.0.weight" in message and "unexpected bn1.bias" in message and len(message) < 1000

    wrong_shape = dict(state, **{"stem.0.weight": torch.zeros(8, 3, 4, 4)})
    save_file(wrong_shape, str(tmp_path / "shape.safetensors"))
    expected = r"wrong shape \(file vs model\) stem.0.weight \(8, 3, 4, 4\) vs \(40, 3, 4, 4\)"
    with pytest.raises(CheckpointError, match=expected):
        build_backbone("timm:convnext_atto", weights=tmp_path / "shape.safetensors")


@pytest.mark.parametrize(
    "name",
    [
        "timm:../../etc/passwd",
        "timm:https://example.com/x.pth",
        "timm:hf-hub:org/repo",
        "timm:/abs/path",
        "timm:",
        "timm:a b",
    ],
)
def test_timm_names_that_are_paths_or_urls_are_refused(name):
    with pytest.raises(UnknownBackboneError, match="paths and URLs are not names"):
        get_config(name)


def test_unknown_timm_name_suggests_the_closest(offline):
    with pytest.raises(UnknownBackboneError) as caught:
        get_config("timm:convnext_tiny.dinov3_lvd168m")
    message = str(caught.value)
    assert "timm:convnext_tiny.dinov3_lvd1689m" in message.split("Closest timm names:")[1]


def test_a_missing_library_is_named(monkeypatch):
    def needs_open_clip(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'open_clip'", name="open_clip")

    monkeypatch.setattr(timm, "create_model", needs_open_clip)
    with pytest.raises(FlowerProbeError, match="needs the Python package 'open_clip'"):
        build_backbone("timm:resnet18.a1_in1k", weights="random")


def test_parse_weights_overrides(tmp_path):
    path = tmp_path / "w=1.pth"
    path.write_bytes(b"x")
    assert parse_weights_overrides([f"timm:convnext_tiny={path}", f"resnet50={path}"]) == {
        "timm:convnext_tiny": str(path),
        "resnet50": str(path),
    }
    assert parse_weights_overrides(None) == {}
    with pytest.raises(FlowerProbeError, match="NAME=PATH"):
        parse_weights_overrides(["resnet50"])
    with pytest.raises(MissingFileError, match="not a file"):
        parse_weights_overrides([f"resnet50={tmp_path / 'none.pth'}"])
    with pytest.raises(UnknownBackboneError):
        parse_weights_overrides([f"resnet5O={path}"])
    with pytest.raises(FlowerProbeError, match="twice"):
        parse_weights_overrides([f"resnet50={path}", f"resnet50={path}"])


def test_cli_lists_timm_tags_with_feature_and_input_size(capsys):
    from core.__main__ import main

    assert main(["backbones", "--timm", "resnet18.a1"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("timm:resnet18.a1_in1k"))
    assert row.split()[1:3] == ["512-d", "224x224"]


def test_train_page_takes_an_own_checkpoint_as_name_equals_path(workspace, tmp_path):
    from streamlit.testing.v1 import AppTest

    root = Path(__file__).resolve().parents[3]
    at = AppTest.from_file(str(root / "dashboard.py"), default_timeout=120).run()
    at.switch_page("pages/train.py").run()
    at.text_input(key="train_checkpoint").input("resnet50").run()
    assert any("weights must be given as" in e.value for e in at.error)  # shown as a message, no traceback
    path = tmp_path / "ft.safetensors"
    path.write_bytes(b"x")
    at.text_input(key="train_checkpoint").input(f"timm:convnext_atto={path}").run()
    assert not at.exception and not at.error
