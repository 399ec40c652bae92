"""The zero-shot lane: classify with a CLIP model's text tower and the class names, no labelled image at all.

Class names and prompt templates (``Prompts``: one list per dataset, editable on the Dataset page and kept in
``<workspace>/zeroshot/<dataset>.json``; open_clip's 80 ImageNet templates by default) -> open_clip's
``build_zero_shot_classifier`` (per class, the mean of the L2-normalised text embeddings over the templates,
renormalised) -> logits = 100 x cosine with the L2-normalised image embeddings -> softmax. Recorded as a run
(protocol ``zeroshot``, features ``clip``, shots 0) with the same test metrics and interval as every probe, so
Compare draws it as a horizontal line on the few-shot plot.

CLIP-family backbones: the ``timm:`` tags whose Hugging Face repository is one of open_clip's pretrained
releases (``timm:vit_base_patch32_clip_224.openai``, ``timm:vit_base_patch16_clip_224.laion2b`` ...; open_clip's
``pretrained.py`` names them, ``zero_shot_backbones`` lists them). open_clip loads such a repository
(``hf-hub:timm/<tag>``: ``open_clip_config.json`` and the weights) from the Hugging Face hub cache, offline when
``HF_HUB_OFFLINE=1``; ``@random`` builds the same architecture with random weights. The image tower used here is
open_clip's (with its projection and its own preprocessing), the same network the ``timm:`` backbone probes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch

from core.base.errors import FlowerProbeError, MissingFileError
from core.base.fileio import atomic_write_bytes
from core.base.progress import ProgressCallback, report
from core.base.workspace import Workspace
from core.data.datasets import Dataset
from core.data.images import load_image

ZERO_SHOT_FEATURES = "clip"
LOGIT_SCALE = 100.0  # CLIP_benchmark and open_clip's zero-shot evaluation: logits = 100 x cosine


@cache
def default_templates() -> tuple[str, ...]:
    """open_clip's ImageNet templates (``zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES``) as text with ``{c}``."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return tuple(template("{c}") for template in OPENAI_IMAGENET_TEMPLATES)


@cache
def _timm_clip_tags() -> dict[str, tuple[str, str]]:
    """``{timm tag: (open_clip architecture, open_clip pretrained tag)}`` for open_clip's releases on timm's hub."""
    from open_clip.pretrained import _PRETRAINED

    tags = {}
    for arch, releases in _PRETRAINED.items():
        for tag, cfg in releases.items():
            hub = str(cfg.get("hf_hub") or "")
            name = hub[len("timm/") :].strip("/")
            if hub.startswith("timm/") and "." in name:  # a timm model tag (arch.pretrained), not another repo
                tags.setdefault(name, (arch, tag))
    return tags


def zero_shot_backbones() -> list[str]:
    """The backbone names with a text tower (zero-shot capable), as ``timm:<tag>``."""
    return sorted((f"timm:{tag}" for tag in _timm_clip_tags()), key=lambda n: ("openai" not in n, n))


def clip_source(backbone: str) -> tuple[str, str]:
    """``(open_clip architecture, hub id)`` of a CLIP-family ``backbone``; a FlowerProbeError naming ``backbones``
    with the ones that have a text tower otherwise."""
    tag = backbone[len("timm:") :] if backbone.startswith("timm:") else None
    if tag is None or tag not in _timm_clip_tags():
        examples = ", ".join(zero_shot_backbones()[:6])
        raise FlowerProbeError(
            f"backbones for the zeroshot protocol must have a text tower (a CLIP model open_clip can load); "
            f"{backbone} has none. Those that have one: {len(_timm_clip_tags())} timm: CLIP tags, e.g. {examples} "
            "(python -m core backbones --timm clip lists them)."
        )
    return _timm_clip_tags()[tag][0], f"hf-hub:timm/{tag}"


def load_clip(backbone: str, *, weights: str = "pretrained"):
    """``(model, preprocess, tokenizer)`` from open_clip: the hub cache's files, or random weights for ``random``."""
    import open_clip

    arch, hub_id = clip_source(backbone)
    if weights == "random":
        torch.manual_seed(0)  # the same random model every time, as the registry's random backbones
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=None)
        tokenizer = open_clip.get_tokenizer(arch)
    elif weights == "pretrained":
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(hub_id)
            tokenizer = open_clip.get_tokenizer(hub_id)
        except Exception as exc:  # huggingface_hub's offline/missing-file errors come in several types
            raise MissingFileError(
                f"The CLIP weights of {backbone} ({hub_id[len('hf-hub:') :]}: open_clip_config.json and the weights) "
                f"are not in the Hugging Face hub cache and could not be downloaded ({type(exc).__name__}: {exc}). "
                "Download them once on a machine with internet (open_clip.create_model('"
                f"{hub_id}')) and copy the cache (HF_HOME), or use {backbone}@random."
            ) from exc
    else:
        raise FlowerProbeError(f"weights for the zeroshot protocol must be pretrained or random, got {weights!r}.")
    return model.eval(), preprocess, tokenizer


# ----------------------------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class Prompts:
    """One dataset's zero-shot text: a name per class (in the dataset's class order) and templates with ``{c}``."""

    class_names: tuple[str, ...]
    templates: tuple[str, ...]


def check_prompts(class_names, templates, *, num_classes: int) -> Prompts:
    """Validated prompts: one non-empty, distinct name per class; templates non-empty, each holding ``{c}``."""
    names = tuple(str(n).strip() for n in class_names)
    if len(names) != num_classes:
        raise FlowerProbeError(f"class_names must give one name per class ({num_classes}), got {len(names)}.")
    empty = [i + 1 for i, n in enumerate(names) if not n]
    if empty:
        raise FlowerProbeError(f"class_names must not be empty; class {empty[0]} has no name.")
    seen: dict[str, str] = {}
    for name in names:
        if name.lower() in seen:
            raise FlowerProbeError(
                f"class_names must be distinct (two classes with one name get one text embedding); {name!r} "
                "appears twice."
            )
        seen[name.lower()] = name
    texts = tuple(str(t).strip() for t in templates if str(t).strip())
    if not texts:
        raise FlowerProbeError("templates must hold at least one prompt, e.g. 'a photo of a {c}.'")
    missing = [t for t in texts if "{c}" not in t]
    if missing:
        raise FlowerProbeError(f"templates must each contain {{c}} where the class name goes; {missing[0]!r} does not.")
    return Prompts(names, texts)


def _prompts_path(workspace: Workspace, dataset_key: str) -> Path:
    return workspace.root / "zeroshot" / f"{dataset_key.replace('/', '_').replace(':', '-')}.json"


def default_prompts(dataset: Dataset) -> Prompts:
    """The dataset's class names (underscores as spaces) and open_clip's ImageNet templates."""
    return Prompts(tuple(n.replace("_", " ") for n in dataset.class_names), default_templates())


def load_prompts(workspace: Workspace, dataset: Dataset) -> Prompts:
    """The saved prompts of ``dataset``, or the defaults when none are saved (or the classes changed since)."""
    try:
        saved = json.loads(_prompts_path(workspace, dataset.key).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return default_prompts(dataset)
    if len(saved.get("class_names", [])) != dataset.num_classes:
        return default_prompts(dataset)
    return Prompts(tuple(saved["class_names"]), tuple(saved["templates"]))


def save_prompts(workspace: Workspace, dataset: Dataset, class_names, templates) -> Prompts:
    """Validate and save ``dataset``'s prompts (atomically); a FlowerProbeError leaves the saved ones as they were."""
    prompts = check_prompts(class_names, templates, num_classes=dataset.num_classes)
    data = {"class_names": list(prompts.class_names), "templates": list(prompts.templates)}
    atomic_write_bytes(_prompts_path(workspace, dataset.key), json.dumps(data, indent=1).encode("utf-8"))
    return prompts


# ----------------------------------------------------------------------------------------------- classifier


def text_classifier(model, tokenizer, prompts: Prompts) -> np.ndarray:
    """Class embeddings (embed_dim, classes), unit columns: open_clip's ``build_zero_shot_classifier``."""
    from open_clip import build_zero_shot_classifier

    # Callables rather than format strings: a template's other braces would break str.format.
    templates = [lambda c, t=t: t.replace("{c}", c) for t in prompts.templates]
    with torch.no_grad():
        weights = build_zero_shot_classifier(
            model, tokenizer, list(prompts.class_names), templates, num_classes_per_batch=10, device="cpu"
        )
    return weights.float().numpy()


def zero_shot_scores(image_embeddings: np.ndarray, classifier: np.ndarray) -> np.ndarray:
    """Softmax over classes of 100 x cosine: image_embeddings (n, e), classifier (e, classes) -> (n, classes)."""
    images = image_embeddings / np.maximum(np.linalg.norm(image_embeddings, axis=1, keepdims=True), 1e-12)
    logits = LOGIT_SCALE * images @ classifier
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def image_embeddings(
    model, preprocess, paths, *, batch_size: int = 32, progress: ProgressCallback | None = None
) -> tuple[np.ndarray, list[int]]:
    """L2-normalised image embeddings (n_ok, e) of ``paths`` and the positions that could not be read."""
    from core.base.errors import BadImageError

    out, bad = [], []
    for start in range(0, len(paths), batch_size):
        batch, ok = [], []
        for i, path in enumerate(paths[start : start + batch_size], start=start):
            try:
                batch.append(preprocess(load_image(path)))
                ok.append(i)
            except BadImageError:
                bad.append(i)
        if batch:
            with torch.no_grad():
                out.append(model.encode_image(torch.stack(batch), normalize=True).float().numpy())
        report(progress, "features", min(len(paths), start + batch_size), len(paths), message="zero-shot images")
    width = out[0].shape[1] if out else 0
    return (np.concatenate(out) if out else np.zeros((0, width), np.float32)), bad


@dataclass(frozen=True)
class _ZeroShotFeatures:
    """What a zero-shot run records of its features (as a FeatureSet would)."""

    weights_tag: str
    device: str
    precision: str
    seconds: float
    skipped: tuple
    cache_path: Path
    from_cache: bool = False


def run_zero_shot(
    *,
    dataset: Dataset,
    backbone: str,
    weights: str,
    split: str,
    workspace: Workspace,
    registry,
    group_id: str | None = None,
    versions: dict | None = None,
    progress: ProgressCallback | None = None,
) -> dict:
    """Zero-shot classify the test part of ``split`` with ``backbone``'s CLIP model; record and return the run."""
    from core.probing.probes import ProbeResult, _log_loss, test_metrics
    from core.probing.record import record_run

    clip_source(backbone)
    prompts = load_prompts(workspace, dataset)
    check_prompts(prompts.class_names, prompts.templates, num_classes=dataset.num_classes)
    started = time.perf_counter()
    model, preprocess, tokenizer = load_clip(backbone, weights=weights)
    classifier = text_classifier(model, tokenizer, prompts)
    rows = dataset.split(split)["test"]
    embeddings, bad = image_embeddings(model, preprocess, [dataset.image_paths[r] for r in rows], progress=progress)
    kept = np.delete(rows, bad)
    labels = dataset.labels[kept]
    scores = zero_shot_scores(embeddings, classifier)
    seconds = time.perf_counter() - started
    result = ProbeResult(
        protocol="zeroshot",
        hyperparameter={"name": "templates", "value": len(prompts.templates)},
        valid_accuracy=float("nan"),  # nothing is chosen on validation
        scores=scores,
        predictions=scores.argmax(axis=1),
        labels=labels,
        test=test_metrics(scores, labels, num_classes=dataset.num_classes, seed=0),
        standardised=False,
        seconds=seconds,
        test_loss=_log_loss(scores, labels),
    )
    features = _ZeroShotFeatures(
        weights_tag="random" if weights == "random" else clip_source(backbone)[1],
        device="cpu",
        precision="fp32",
        seconds=seconds,
        skipped=tuple((str(dataset.image_paths[rows[i]]), "unreadable") for i in bad),
        cache_path=_prompts_path(workspace, dataset.key),
    )
    return record_run(
        registry,
        workspace=workspace,
        dataset=dataset,
        backbone=backbone,
        weights=weights,
        variant=ZERO_SHOT_FEATURES,
        split=split,
        shots=0,
        seed=0,
        result=result,
        feature_set=features,
        features_seconds=0.0,
        test_rows=kept,
        train_images=0,
        settings={"class_names": list(prompts.class_names), "templates": list(prompts.templates)},
        device="cpu",
        precision="fp32",
        group_id=group_id,
        versions=versions or {},
        keep_head=False,
    )
