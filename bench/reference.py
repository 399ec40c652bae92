"""Section 3, the reference protocol against this engine on the same images.

The reference way, reimplemented faithfully: for each backbone (DINOv2 ViT-S/14 and ResNet-50) a frozen
fp32 backbone, a head Linear(d,128)-ReLU-Linear(128,C) trained with AdamW lr 1e-3 at batch 64, and for
each of 5 epochs a pass over the train part (decode, backbone forward, head step) and one over the valid
part (decode, forward, head evaluation), then one over the test part; a DataLoader decodes every image
again on every pass. It is generous to the reference: the backbone runs under ``torch.no_grad`` and the
DataLoader gets the engine's worker count.

On a 2-core CPU the whole reference takes 15-30 minutes, so by default it is timed on its first batches
and extrapolated (``extrapolate_phase``, which leans low): epoch 1's train and valid passes are timed for
``Sizes.reference_batches`` batches each; every epoch costs what epoch 1 does (the same code on the same
images), and the test pass costs what the valid pass does (the same code: forward and head evaluation,
no shuffle). The report says so (``extrapolated``, ``method``). ``--reference-full`` runs it all instead.

This engine's way is ``core.probing.experiment.run_comparison`` on the same dataset and backbones: first with an
empty feature cache (extract once in bf16, train heads on the cache), then again with the cache filled.
"""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from .common import Context, Target, extrapolate_phase, load_average, seconds

BACKBONES = ("dinov2_vits14", "resnet50")
EPOCHS = 5
BATCH_SIZE = 64  # the reference experiment's batch, for the backbone and the head alike
LR = 1e-3


class _ReferenceImages(torch.utils.data.Dataset):
    """The reference's dataset: open each file with PIL, convert to RGB, apply the eval transform."""

    def __init__(self, paths, labels, transform) -> None:
        self.paths, self.labels, self.transform = list(paths), list(labels), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        from PIL import Image

        with Image.open(self.paths[index]) as image:
            return self.transform(image.convert("RGB")), int(self.labels[index])


def _timed_pass(loader: DataLoader, step, max_batches: int | None) -> tuple[tuple[float, int], list[tuple[float, int]]]:
    """Run ``step(images, labels)`` over ``loader``; ``(seconds, images)`` of the first batch and of the later ones.

    A batch's time runs from the end of the previous one, so waiting for the DataLoader is counted.
    """
    batches: list[tuple[float, int]] = []
    started = time.perf_counter()
    for images, labels in loader:
        step(images, labels)
        now = time.perf_counter()
        batches.append((now - started, len(labels)))
        started = now
        if max_batches is not None and len(batches) >= max_batches:
            break
    return batches[0], batches[1:]


def reference_backbone(context: Context, backbone: str, *, max_batches: int | None) -> dict:
    """Time the reference protocol for one backbone; extrapolated when ``max_batches`` limits each pass."""
    from core.backbones.registry import build_backbone, get_config, make_transform
    from core.features.extract import default_num_workers, select_device

    dataset = context.dataset()
    split = dataset.split("1")
    transform = make_transform(get_config(backbone))
    torch.manual_seed(0)
    built = time.perf_counter()
    device = select_device("auto")  # the engine's device: the reference runs where the engine does, in fp32
    model, _ = build_backbone(backbone, weights="random", workspace=context.workspace)
    model.to(device)
    build_s = time.perf_counter() - built
    with torch.no_grad():
        model(
            torch.zeros(BATCH_SIZE, 3, 224, 224, device=device)
        )  # untimed warm-up: the extrapolation then leans low, not high
        feature_dim = model(torch.zeros(1, 3, 224, 224, device=device)).shape[1]
    head = nn.Sequential(nn.Linear(feature_dim, 128), nn.ReLU(), nn.Linear(128, dataset.num_classes)).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=LR)

    def loader(part: str, shuffle: bool) -> DataLoader:
        rows = split[part]
        images = _ReferenceImages([dataset.image_paths[r] for r in rows], dataset.labels[rows], transform)
        return DataLoader(images, batch_size=BATCH_SIZE, shuffle=shuffle, num_workers=default_num_workers(device))

    def train_step(images, labels):
        images, labels = images.to(device), labels.to(device)
        head.train()
        with torch.no_grad():
            features = model(images)
        loss = F.cross_entropy(head(features), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def eval_step(images, labels):
        images, labels = images.to(device), labels.to(device)
        head.eval()
        with torch.no_grad():
            logits = head(model(images))
            F.cross_entropy(logits, labels)
            (logits.argmax(dim=1) == labels).sum()

    sizes = {part: len(split[part]) for part in ("train", "val", "test")}
    if max_batches is None:
        started = time.perf_counter()
        for _ in range(EPOCHS):
            _timed_pass(loader("train", True), train_step, None)
            _timed_pass(loader("val", False), eval_step, None)
        _timed_pass(loader("test", False), eval_step, None)
        return {
            "extrapolated": False,
            "build_s": build_s,
            "total_s": build_s + time.perf_counter() - started,
            "images": sizes,
        }
    train = _timed_pass(loader("train", True), train_step, max_batches)
    valid = _timed_pass(loader("val", False), eval_step, max_batches)
    passes = {
        "train": extrapolate_phase(n_images=sizes["train"], first_batch=train[0], later_batches=train[1]),
        "val": extrapolate_phase(n_images=sizes["val"], first_batch=valid[0], later_batches=valid[1]),
        "test": extrapolate_phase(n_images=sizes["test"], first_batch=valid[0], later_batches=valid[1]),
    }
    total = build_s + EPOCHS * (passes["train"] + passes["val"]) + passes["test"]
    measured = sum(images for _, images in [train[0], *train[1], valid[0], *valid[1]])
    return {
        "extrapolated": True,
        "build_s": build_s,
        "total_s": total,
        "images": sizes,
        "forwards_measured": measured,
        "forwards_total": EPOCHS * (sizes["train"] + sizes["val"]) + sizes["test"],
        "pass_s": passes,
        "measured_batches": {"train": [train[0], *train[1]], "val": [valid[0], *valid[1]]},
    }


def engine_way(context: Context) -> dict:
    """``run_comparison`` twice: with an empty feature cache, then with it filled."""
    from core.probing.experiment import run_comparison
    from core.probing.heads import HeadConfig

    workspace = context.workspace
    for backbone in BACKBONES:  # the first run must extract: drop any features an earlier section cached
        for path in workspace.features_dir.glob(f"synthetic-{backbone}-*"):
            path.unlink()
    kwargs = dict(
        dataset="synthetic",
        backbones=list(BACKBONES),
        random_weights_for=BACKBONES,
        head=HeadConfig(epochs=EPOCHS),
        workspace=workspace,
    )
    results = {}
    for label in ("first_run", "cached_rerun"):
        records = []
        elapsed = seconds(lambda records=records: records.extend(run_comparison(**kwargs)))
        results[label] = {
            "total_s": elapsed,
            "runs": [
                {
                    "backbone": r["backbone"],
                    "precision": r["precision"],
                    "test_acc": r["test_acc"],
                    **{k: r["timings"][k] for k in ("features_s", "features_cached", "train_s", "total_s")},
                }
                for r in records
            ],
        }
        context.log(f"  engine {label}: {elapsed:.2f} s")
    return results


def run(context: Context, *, full_reference: bool = False) -> tuple[dict, list[Target]]:
    max_batches = None if full_reference else context.sizes.reference_batches
    reference = {}
    # The two ways run one after the other; the load averages around each let readers judge the ratio.
    load = {"reference_start": load_average()}
    for backbone in BACKBONES:
        reference[backbone] = reference_backbone(context, backbone, max_batches=max_batches)
        context.log(
            f"  reference {backbone}: {reference[backbone]['total_s']:.0f} s"
            + (" (extrapolated)" if max_batches else "")
        )
    reference_s = sum(r["total_s"] for r in reference.values())
    load["engine_start"] = load_average()
    engine = engine_way(context)
    load["engine_end"] = load_average()
    results = {
        "dataset": context.dataset().name,
        "images": len(context.dataset().image_paths),
        "backbones": list(BACKBONES),
        "weights": "random",
        "epochs": EPOCHS,
        "batch_size": BATCH_SIZE,
        "extrapolated": max_batches is not None,
        "method": None
        if max_batches is None
        else (
            "per backbone: epoch 1's train and valid passes timed on their "
            f"first {max_batches} batches of {BATCH_SIZE}; "
            "pass = first batch as measured + remaining images x per-image time of the fastest later batch; "
            "total = backbone build + 5 x (train pass + valid pass) + test pass (test costed as valid: same code); "
            "an untimed warm-up forward precedes the timing"
        ),
        "reference": reference,
        "reference_total_s": reference_s,
        "engine": engine,
        "load_average": load,
        "speedup_first_run": reference_s / engine["first_run"]["total_s"],
        "speedup_cached_rerun": reference_s / engine["cached_rerun"]["total_s"],
    }
    note = "reference extrapolated" if max_batches is not None else ""
    targets = [
        Target("5-epoch two-backbone experiment, reference / engine", results["speedup_first_run"], ">=", 5, "x", note),
        Target("Cached rerun of that experiment", engine["cached_rerun"]["total_s"], "<", 5, "s"),
    ]
    return results, targets
