"""Issue 25's lanes: the attentive probe on cached patch tokens, layer-wise probing, and zero-shot classification."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from core.base.errors import FlowerProbeError
from core.features.tokens import TokenPart
from core.probing.attentive import (
    AttentiveConfig,
    AttentivePoolHead,
    _GridHeads,
    attention_maps,
    attentive_probe,
)

FAST = AttentiveConfig(learning_rates=(3e-3, 3e-2), weight_decays=(5e-4,), epochs=15, min_steps=60, batch_size=32)


def _direct_logits(head: AttentivePoolHead, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CAPI's attention pooling written out in float64 numpy: (logits (N, C), weights (N, Q, H, T))."""
    state = {k: v.detach().double().numpy() for k, v in head.state_dict().items()}
    dim, heads = head.dim, head.num_heads
    width = dim // heads
    kv = tokens @ state["kv.weight"].T + state["kv.bias"]
    keys, values = kv[..., :dim], kv[..., dim:]
    n, t = tokens.shape[:2]
    pooled = np.zeros((n, head.num_queries, dim))
    weights = np.zeros((n, head.num_queries, heads, t))
    for q in range(head.num_queries):
        for h in range(heads):
            part = slice(h * width, (h + 1) * width)
            scores = keys[:, :, part] @ state["query"][q, part] / math.sqrt(width)  # (N, T)
            w = np.exp(scores - scores.max(axis=1, keepdims=True))
            w /= w.sum(axis=1, keepdims=True)
            weights[:, q, h] = w
            pooled[:, q, part] = np.einsum("nt,ntd->nd", w, values[:, :, part])
    logits = pooled.reshape(n, -1) @ state["linear.weight"].T + state["linear.bias"]
    return logits, weights


def test_attentive_head_matches_a_direct_computation_and_its_weights_sum_to_one() -> None:
    torch.manual_seed(0)
    for queries in (1, 3):
        head = AttentivePoolHead(128, 5, num_queries=queries).double()
        with torch.no_grad():
            head.query.normal_(0, 1)  # away from uniform attention, so the weights matter
        tokens = np.random.default_rng(1).normal(size=(4, 10, 128))
        expected, weights = _direct_logits(head, tokens)
        assert head.num_heads == 2  # CAPI: dim / 64
        with torch.no_grad():
            got = head(torch.from_numpy(tokens)).numpy()
            attention = head.attention(torch.from_numpy(tokens)).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(attention, weights, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(attention.sum(axis=-1), 1.0, rtol=1e-12)
        assert attention.std() > 1e-3  # not uniform


def test_with_one_token_the_head_is_a_linear_head_on_that_token() -> None:
    torch.manual_seed(2)
    head = AttentivePoolHead(64, 4).double()
    token = torch.randn(6, 1, 64, dtype=torch.float64)
    w_v, b_v = head.kv.weight[64:], head.kv.bias[64:]
    linear_weight = head.linear.weight @ w_v  # (C, D): value projection then classifier, one linear map
    linear_bias = head.linear.weight @ b_v + head.linear.bias
    with torch.no_grad():
        np.testing.assert_allclose(
            head(token).numpy(), (token[:, 0] @ linear_weight.T + linear_bias).detach().numpy(), rtol=1e-10
        )


def test_the_grid_trains_the_same_head_it_saves() -> None:
    """The folded grid (keys folded into the query, tokens pooled before the value projection) computes exactly
    what the saved ``AttentivePoolHead`` computes, for every head of the grid."""
    grid = _GridHeads(3, 128, 6, num_queries=2, num_heads=2, seed=0).double()
    with torch.no_grad():
        grid.query.normal_(0, 1)
    tokens = torch.randn(5, 12, 128, dtype=torch.float64)
    with torch.no_grad():
        together = grid(tokens)
        for index in range(3):
            state = grid.head_state(index)
            alone = AttentivePoolHead(128, 6, num_queries=2, num_heads=int(state.pop("num_heads"))).double()
            alone.load_state_dict(state)
            alone = alone(tokens)
            np.testing.assert_allclose(together[:, index].numpy(), alone.numpy(), rtol=1e-9, atol=1e-10)


def _patch_task(n: int, *, tokens: int = 16, dim: int = 64, classes: int = 4, seed: int = 0):
    """Tokens where only position 5 carries the class; every other position carries a random class's pattern,
    so the mean over positions holds every class equally and says almost nothing."""
    rng = np.random.default_rng(seed)
    prototypes, positions = rng.normal(size=(classes, dim)), rng.normal(size=(tokens, dim))
    labels = rng.integers(0, classes, n)
    fill = rng.integers(0, classes, (n, tokens))
    fill[:, 5] = labels
    x = prototypes[fill] + positions[None] + 0.3 * rng.normal(size=(n, tokens, dim))
    return x.astype(np.float16), labels


def test_attentive_beats_linear_on_the_patch_mean_when_the_class_lives_in_one_patch() -> None:
    from core.probing.probes import linear_probe

    x, y = _patch_task(240)
    part = TokenPart(x, np.arange(len(x)))
    cut = [np.arange(0, 120), np.arange(120, 180), np.arange(180, 240)]
    attentive = attentive_probe(*[(part[c], y[c]) for c in cut], num_classes=4, config=FAST)
    mean = x.astype(np.float32).mean(axis=1)
    linear = linear_probe(*[(mean[c], y[c]) for c in cut], num_classes=4)
    assert attentive.test.accuracy >= 90
    assert linear.test.accuracy <= 50  # chance is 25
    assert attentive.test.accuracy - linear.test.accuracy >= 40
    low, high = attentive.test.accuracy_interval
    assert low <= attentive.test.accuracy <= high
    # The saved head looks at position 5 on average.
    maps = attention_maps(attentive.head_state, x[cut[2]])
    np.testing.assert_allclose(maps.sum(axis=1), 1.0, rtol=1e-5)
    assert int(np.argmax(maps.mean(axis=0))) == 5


def test_attentive_probe_refuses_pooled_features() -> None:
    x = np.zeros((4, 8), np.float32)
    y = np.array([0, 1, 0, 1])
    with pytest.raises(FlowerProbeError, match="cached tokens"):
        attentive_probe((x, y), (x, y), (x, y), num_classes=2)


# ----------------------------------------------------------------------------------------------- layers


def test_layer_forward_last_block_is_the_model_output() -> None:
    import timm

    from core.backbones.tokens import layer_forward, model_layers, parse_layers

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=64).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), layer_forward(vit) as forward:
        layers = forward(images)
        plain = vit(images)
    assert list(layers) == list(model_layers(vit)) and len(layers) == len(vit.blocks)
    torch.testing.assert_close(layers[f"block{len(vit.blocks)}"], plain, rtol=0, atol=0)
    assert not torch.equal(layers["block1"], plain)
    # Tokens and every pooled variant from one call: the variants' own norm calls (last4) leave the tokens alone.
    from core.backbones.tokens import token_hook
    from core.backbones.variants import variant_forward

    with torch.no_grad(), variant_forward(vit, ("cls", "patch_mean", "last4")) as pooled, token_hook(vit) as last:
        out = pooled(images)
        tokens = last()
    assert tokens.shape == (2, 16, vit.embed_dim)
    torch.testing.assert_close(tokens.float().mean(dim=1), out["patch_mean"], rtol=1e-5, atol=1e-6)
    with pytest.raises(FlowerProbeError, match=r"layers must lie in 1\.\.12 .*has 12 layers"):
        parse_layers("13", backbone="dinov2_vits14")
    assert parse_layers("1,-1", backbone="dinov2_vits14") == ("block1", "block12")


def test_layer_wise_probe_of_the_last_block_equals_the_ordinary_probe(tiny_workspace) -> None:
    from core.probing.layers import run_layer_probes
    from core.probing.suite import run_probe_suite

    layered = run_layer_probes(
        dataset="synthetic", backbones=["efficientnet_lite0"], layers="1,-1", workspace=tiny_workspace
    )
    ordinary = run_probe_suite(
        dataset="synthetic",
        backbones=["efficientnet_lite0"],
        protocols=["knn", "logreg", "ncm"],
        workspace=tiny_workspace,
    )
    last = {r["protocol"]: r for r in layered if r["features"] == "layer:final"}
    assert {r["features"] for r in layered} == {"layer:stage1", "layer:final"}
    for run in ordinary:
        assert last[run["protocol"]]["test_acc"] == run["test_acc"]
        assert last[run["protocol"]]["metrics"]["test_acc_ci"] == run["metrics"]["test_acc_ci"]


# ----------------------------------------------------------------------------------------------- tokens


def test_tokens_are_cached_once_and_the_attentive_suite_runs_no_forward(tiny_workspace, monkeypatch) -> None:
    from core.backbones.resolved import ResolvedBackbone
    from core.data.datasets import prepare_dataset
    from core.features import tokens
    from core.probing.probes import ProbeConfig
    from core.probing.suite import run_probe_suite
    from core.runs.registry import RunRegistry

    dataset = prepare_dataset("synthetic", tiny_workspace)
    with pytest.raises(FlowerProbeError, match=r"x 49 x 1280 x 2 bytes = .*python -m core extract .*--tokens"):
        run_probe_suite(
            dataset="synthetic", backbones=["efficientnet_lite0"], protocols=["attentive"], workspace=tiny_workspace
        )
    assert RunRegistry(tiny_workspace.registry_path).list_runs() == []  # nothing recorded half-done
    before = tokens.FORWARDS["tokens"]
    first = tokens.extract_tokens(dataset, "efficientnet_lite0", workspace=tiny_workspace)
    forwards = tokens.FORWARDS["tokens"] - before
    assert forwards >= 1 and not first.from_cache
    assert first.tokens.shape == (len(dataset.image_paths), 49, 1280) and first.tokens.dtype == np.float16
    assert isinstance(first.tokens, np.memmap)
    assert first.manifest["layout"]["excluded"] == ["global pool"]
    again = tokens.extract_tokens(dataset, "efficientnet_lite0", workspace=tiny_workspace)
    assert again.from_cache and tokens.FORWARDS["tokens"] - before == forwards

    def no_model(*_args, **_kwargs):
        raise AssertionError("the attentive suite built a model")

    monkeypatch.setattr(ResolvedBackbone, "build", no_model)
    config = ProbeConfig(
        attentive=AttentiveConfig(learning_rates=(1e-2,), weight_decays=(5e-4,), epochs=2, min_steps=4)
    )
    runs = [
        run_probe_suite(
            dataset="synthetic",
            backbones=["efficientnet_lite0"],
            protocols=["attentive"],
            shots=[2, None],
            seeds=1,
            config=config,
            workspace=tiny_workspace,
        )
        for _ in range(2)  # the second suite reads the same cached tokens again
    ]
    assert tokens.FORWARDS["tokens"] - before == forwards  # zero forwards after the first extraction
    assert len(runs[0]) == 2 and {r["features"] for r in runs[0]} == {"tokens"}
    assert [r["test_acc"] for r in runs[1]] == [r["test_acc"] for r in runs[0]]
    # The same pass cached the pooled features too: the ordinary extraction runs no forward of its own.
    from core.features.extract import extract_features

    assert extract_features(dataset, "efficientnet_lite0", workspace=tiny_workspace).from_cache
    full = [r for r in runs[0] if r["shots"] is None][0]
    assert full["head_path"]  # the head is saved for predict, Classify and export
    low, high = full["metrics"]["test_acc_ci"]
    assert low <= full["test_acc"] <= high


def test_tokens_are_refused_when_the_disk_lacks_room(tiny_workspace, monkeypatch) -> None:
    import shutil
    from collections import namedtuple

    from core.data.datasets import prepare_dataset
    from core.features import tokens

    dataset = prepare_dataset("synthetic", tiny_workspace)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: usage(10**9, 10**9, 1000))
    n = len(dataset.image_paths)
    with pytest.raises(FlowerProbeError, match=rf"tokens need {n} x 49 x 1280 x 2 bytes = .* has only 0\.0 MB free"):
        tokens.extract_tokens(dataset, "efficientnet_lite0", workspace=tiny_workspace)


# ----------------------------------------------------------------------------------------------- zero-shot


def test_zero_shot_scores_pick_the_nearest_class_name() -> None:
    from core.probing.zeroshot import zero_shot_scores

    classifier = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # (embed, classes): unit columns
    images = np.array([[2.0, 0.1, 0.0], [0.0, 0.2, 0.1], [0.1, 0.1, 3.0], [0.5, 0.6, 0.0]])
    scores = zero_shot_scores(images, classifier)
    np.testing.assert_array_equal(scores.argmax(axis=1), [0, 1, 2, 1])
    np.testing.assert_allclose(scores.sum(axis=1), 1.0)
    unit = images / np.linalg.norm(images, axis=1, keepdims=True)
    logits = 100 * unit @ classifier
    np.testing.assert_allclose(scores[3], np.exp(logits[3]) / np.exp(logits[3]).sum())


TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1},
}


@pytest.fixture
def clip_hub_cache(tmp_path, monkeypatch):
    """An offline Hugging Face hub cache holding a tiny random CLIP in open_clip's own layout for the repo
    ``timm/vit_base_patch32_clip_224.openai``: ``open_clip_config.json`` and ``open_clip_model.safetensors``."""
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(0)
    tiny = open_clip.CLIP(**TINY_CLIP)
    snapshot = tmp_path / "hub" / "models--timm--vit_base_patch32_clip_224.openai" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    config = {"model_cfg": TINY_CLIP, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}}
    (snapshot / "open_clip_config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(snapshot / "open_clip_model.safetensors"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    return tiny


def test_zero_shot_loads_open_clip_files_from_the_hub_cache_and_uses_its_tokenizer(clip_hub_cache) -> None:
    from open_clip.tokenizer import SimpleTokenizer

    from core.probing.zeroshot import Prompts, load_clip, text_classifier

    model, preprocess, tokenizer = load_clip("timm:vit_base_patch32_clip_224.openai")
    for name, value in clip_hub_cache.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value)
    assert isinstance(tokenizer, SimpleTokenizer)  # open_clip's packaged BPE vocabulary, no download
    prompts = Prompts(("rose", "tulip", "daisy"), ("a photo of a {c}.", "a {c}, a flower."))
    classifier = text_classifier(model, tokenizer, prompts)
    assert classifier.shape == (32, 3)
    np.testing.assert_allclose(np.linalg.norm(classifier, axis=0), 1.0, rtol=1e-5)
    # Independent: the mean of the normalised text embeddings per class, renormalised.
    with torch.no_grad():
        texts = tokenizer([t.replace("{c}", "tulip") for t in prompts.templates])
        embedded = torch.nn.functional.normalize(model.encode_text(texts), dim=-1).mean(0)
    np.testing.assert_allclose(classifier[:, 1], (embedded / embedded.norm()).numpy(), rtol=1e-5, atol=1e-6)


def test_zero_shot_run_is_recorded_with_test_metrics(tiny_workspace, clip_hub_cache) -> None:
    from core.data.datasets import prepare_dataset
    from core.probing.zeroshot import run_zero_shot
    from core.runs.registry import RunRegistry

    dataset = prepare_dataset("synthetic", tiny_workspace)
    run = run_zero_shot(
        dataset=dataset,
        backbone="timm:vit_base_patch32_clip_224.openai",
        weights="pretrained",
        split="1",
        workspace=tiny_workspace,
        registry=RunRegistry(tiny_workspace.registry_path),
    )
    assert run["protocol"] == "zeroshot" and run["shots"] == 0 and run["features"] == "clip"
    test_rows = dataset.split("1")["test"]
    predictions = RunRegistry(tiny_workspace.registry_path).predictions(run["id"])
    assert len(predictions) == len(test_rows)
    correct = np.mean([p["label"] == p["predicted"] for p in predictions]) * 100
    assert run["test_acc"] == pytest.approx(correct)
    low, high = run["metrics"]["test_acc_ci"]
    assert low <= run["test_acc"] <= high


def test_zero_shot_bad_input() -> None:
    from core.probing.zeroshot import check_prompts, clip_source

    with pytest.raises(FlowerProbeError, match=r"backbones .* text tower.*efficientnet_lite0 has none.*timm:"):
        clip_source("efficientnet_lite0")
    with pytest.raises(FlowerProbeError, match="class_names must not be empty; class 2"):
        check_prompts(["rose", " "], ["a {c}"], num_classes=2)
    with pytest.raises(FlowerProbeError, match="class_names must be distinct.*'Rose' appears twice"):
        check_prompts(["rose", "Rose"], ["a {c}"], num_classes=2)
    with pytest.raises(FlowerProbeError, match=r"templates must each contain \{c\}"):
        check_prompts(["rose", "tulip"], ["a flower"], num_classes=2)
    assert clip_source("timm:vit_base_patch32_clip_224.openai") == (
        "ViT-B-32",
        "hf-hub:timm/vit_base_patch32_clip_224.openai",
    )


def test_tokens_are_refused_for_a_model_without_patch_tokens_or_a_feature_map() -> None:
    from core.backbones.tokens import token_forward

    flat = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    refused = pytest.raises(
        FlowerProbeError, match="tokens need a backbone with patch tokens .* Sequential has neither"
    )
    with refused, token_forward(flat):
        pass
