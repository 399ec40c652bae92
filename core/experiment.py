"""One experiment run end to end: dataset -> cached features -> head -> run record.

``run_experiment`` is what the CLI's ``compare`` and the dashboard's Train page both call, so a run
made from either is the same run. The run is recorded as ``running`` first and completed in one
transaction; any failure marks it failed (or cancelled, or interrupted) with the reason.
"""

from __future__ import annotations

import platform
import signal
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Callable

import numpy as np
from safetensors.torch import save_file

from . import __version__
from .datasets import Dataset, prepare_dataset
from .errors import CancelledError, FlowerProbeError
from .features import extract_features
from .fileio import atomic_write
from .progress import ProgressCallback
from .runs import RunRegistry
from .training import HeadConfig, train_head
from .workspace import Workspace


@dataclass(frozen=True)
class ExperimentConfig:
    dataset: str = "oxford17"  # the reference experiment's dataset
    split: str = "1"  # Oxford 17's first official split; "all" runs each split in turn
    backbone: str = "dinov2_vits14"
    weights: str = "pretrained"  # "pretrained", "random" (how much does pretraining matter?) or a checkpoint path
    head: HeadConfig = field(default_factory=HeadConfig)
    device: str = "auto"  # CUDA > MPS > CPU
    precision: str = "auto"  # mixed precision where measured fast and faithful
    feature_batch_size: int = 64  # images per backbone forward; fits ViT-S/ResNet-50 on small GPUs

    def to_dict(self) -> dict:
        return asdict(self)


_VERSIONED_PACKAGES = ("torch", "torchvision", "timm", "numpy", "safetensors", "pillow", "scikit-learn")


def library_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0], "platform": platform.platform(), "flower_probe": __version__}
    for package in _VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def splits_to_run(dataset: Dataset, split: str) -> list[str]:
    if split == "all":
        return sorted(dataset.splits)
    dataset.split(split)  # validates
    return [split]


def _part(features, dataset: Dataset, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, kept = features.select(rows)
    return x, dataset.labels[kept], kept


class _TerminatedError(Exception):
    """SIGTERM arrived: the run is recorded as interrupted, not failed."""


def _raise_terminated(signum, frame):
    raise _TerminatedError()


def run_experiment(
    config: ExperimentConfig, *, workspace: Workspace, registry: RunRegistry | None = None, dataset: Dataset | None = None,
    group_id: str | None = None, progress: ProgressCallback | None = None,
) -> dict:
    """Run one (dataset, split, backbone, head) experiment and record it; returns the run record.

    ``config.split`` must name one split here (the caller expands "all").
    """
    registry = registry or RunRegistry(workspace.registry_path)
    dataset = dataset or prepare_dataset(config.dataset, workspace, progress=progress)
    parts = dataset.split(config.split)
    run_id = registry.create_run(
        dataset_key=dataset.key, dataset_name=dataset.name, dataset_fingerprint=dataset.fingerprint, synthetic=dataset.synthetic,
        class_names=list(dataset.class_names), split=config.split, backbone=config.backbone, weights=config.weights,
        seed=config.head.seed, config=config.to_dict(), versions=library_versions(), group_id=group_id,
    )
    previous_handler = signal.signal(signal.SIGTERM, _raise_terminated) if _in_main_thread() else None
    try:
        started = time.perf_counter()
        features = extract_features(
            dataset, config.backbone, workspace=workspace, weights=config.weights, device=config.device,
            precision=config.precision, batch_size=config.feature_batch_size, progress=progress,
        )
        features_seconds = time.perf_counter() - started
        train, valid, test = (_part(features, dataset, parts[p]) for p in ("train", "val", "test"))
        result = train_head(train[:2], valid[:2], test[:2], num_classes=dataset.num_classes, config=config.head, progress=progress)
        head_path = workspace.heads_dir / f"run-{run_id}.safetensors"
        with atomic_write(head_path) as tmp:
            save_file({k: v.contiguous() for k, v in result.state_dict.items()}, str(tmp), metadata={"run_id": str(run_id), "config": str(config.to_dict())})
        test_rows = test[2]
        predictions = [
            (int(row), str(dataset.image_paths[row]), int(label), int(pred), float(probs[pred]), probs.tolist())
            for row, label, pred, probs in zip(test_rows, result.test.labels, result.test.predictions, result.test.probabilities)
        ]
        registry.complete_run(
            run_id, weights_tag=features.weights_tag, device=features.device, precision=features.precision,
            timings={"features_s": features_seconds, "features_cached": features.from_cache, "extraction_s": features.seconds,
                     "train_s": result.seconds, "total_s": time.perf_counter() - started},
            best_epoch=result.best_epoch, test_acc=result.test.accuracy, test_loss=result.test.loss,
            per_class_acc=result.test.per_class_accuracy, confusion=result.test.confusion, skipped=[list(s) for s in features.skipped],
            features_path=str(features.cache_path), head_path=str(head_path),
            epochs=[asdict(e) for e in result.epochs], predictions=predictions,
        )
    except CancelledError:
        registry.end_run(run_id, status="cancelled", error="Cancelled by the user.")
        raise
    except (KeyboardInterrupt, _TerminatedError):
        registry.end_run(run_id, status="interrupted", error="Interrupted (Ctrl-C or SIGTERM) before it finished.")
        raise KeyboardInterrupt
    except BaseException as exc:
        registry.end_run(run_id, status="failed", error=str(exc) if isinstance(exc, FlowerProbeError) else f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    return registry.get_run(run_id)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def run_comparison(
    *, dataset: str, backbones: list[str], split: str = "1", head: HeadConfig = HeadConfig(), random_weights_for: tuple[str, ...] = (),
    device: str = "auto", precision: str = "auto", workspace: Workspace, progress: ProgressCallback | None = None,
    on_run_start: Callable[[ExperimentConfig], None] | None = None, on_run: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Run every backbone on every requested split; returns the run records in order.

    ``on_run_start(config)`` and ``on_run(record)`` frame each run (the CLI prints headers and results there).
    """
    if not backbones:
        raise FlowerProbeError("backbones must name at least one backbone.")
    unknown_random = set(random_weights_for) - set(backbones)
    if unknown_random:
        raise FlowerProbeError(f"random_weights_for names {sorted(unknown_random)}, which are not among the backbones {backbones}.")
    registry = RunRegistry(workspace.registry_path)
    prepared = prepare_dataset(dataset, workspace, progress=progress)
    group_id = uuid.uuid4().hex[:12]
    records = []
    for backbone in backbones:
        for split_id in splits_to_run(prepared, split):
            config = ExperimentConfig(
                dataset=dataset, split=split_id, backbone=backbone, weights="random" if backbone in random_weights_for else "pretrained",
                head=head, device=device, precision=precision,
            )
            if on_run_start is not None:
                on_run_start(config)
            record = run_experiment(config, workspace=workspace, registry=registry, dataset=prepared, group_id=group_id, progress=progress)
            records.append(record)
            if on_run is not None:
                on_run(record)
    return records
