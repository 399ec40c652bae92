"""Feature extraction with a disk cache: each backbone forward over a dataset happens once.

Features are cached per (dataset fingerprint, backbone, weights, preprocessing, precision) for every
image of the dataset, so all of a dataset's splits (Oxford 17 has three over the same 1,360 images)
read the same file. A cache file is written atomically and guarded by a lock file, so two processes
asking for the same missing features compute them once and never read half a file.

Images that cannot be decoded are skipped and listed (``FeatureSet.skipped``); the rest go on.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from .backbones import build_backbone, get_config, make_transform, resolve_weights
from .datasets import Dataset
from .errors import BadImageError, FlowerProbeError, MissingFileError
from .fileio import _DISK_ERRNOS, _workspace_write_error, atomic_write
from .images import load_image
from .progress import ProgressCallback, RateMeter, report
from .workspace import Workspace

# Bump when the extraction itself changes (token choice, resizing code): old caches then miss.
FEATURE_FORMAT_VERSION = 1
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cuda", "mps", "cpu")


# ----------------------------------------------------------------------------------------------- device


def cpu_supports_bf16() -> bool:
    """True on CPUs with native bf16 dot products (AVX-512 BF16 or AMX), where bf16 inference is fast."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def select_device(preference: str = "auto") -> torch.device:
    """CUDA, then Apple MPS, then CPU; an explicit preference must be available."""
    if preference not in DEVICES:
        raise FlowerProbeError(f"device must be one of {DEVICES}, got {preference!r}.")
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if preference == "auto":
        return torch.device(next(name for name in ("cuda", "mps", "cpu") if available[name]))
    if not available[preference]:
        raise FlowerProbeError(f"device {preference!r} is not available on this machine; use 'auto' or 'cpu'.")
    return torch.device(preference)


# Backbones whose bf16 features on CPU were measured unfaithful (python -m bench, pretrained weights,
# all 1,360 Synthetic Flowers images): EfficientNet-Lite0's bf16 features sit at min cosine 0.990
# (mean 0.9986) to fp32, below the 0.999 bar, though head accuracy did not move; the net is cheap in
# fp32 anyway. Only backbones with pretrained weights available offline could be checked.
_FP32_ON_CPU = frozenset({"efficientnet_lite0"})


def select_precision(device: torch.device, preference: str = "auto", *, backbone: str | None = None) -> str:
    """Mixed precision on GPUs; bf16 on CPUs with native bf16, except for ``backbone``s in ``_FP32_ON_CPU``.

    The bar for bf16 on CPU is features within cosine 0.999 of fp32 and unchanged head accuracy
    (measured by ``python -m bench``'s extraction section).
    """
    if preference not in PRECISIONS:
        raise FlowerProbeError(f"precision must be one of {PRECISIONS}, got {preference!r}.")
    if preference != "auto":
        return preference
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "mps":
        return "fp16"
    return "bf16" if cpu_supports_bf16() and backbone not in _FP32_ON_CPU else "fp32"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


# ----------------------------------------------------------------------------------------------- result


@dataclass(frozen=True)
class FeatureSet:
    """Features of every decodable image of a dataset.

    features : ndarray of shape (n_ok, dim), float32
    rows : ndarray of shape (n_ok,), the dataset row of each feature
    """

    features: np.ndarray
    rows: np.ndarray
    skipped: tuple[tuple[str, str], ...]  # (file path, reason) of images that could not be read
    backbone: str
    weights_tag: str
    precision: str
    device: str
    seconds: float  # extraction wall time when computed (the cached value on a hit)
    from_cache: bool = False
    cache_path: Path | None = field(default=None, compare=False)

    @property
    def images_per_second(self) -> float:
        return len(self.rows) / self.seconds if self.seconds > 0 else 0.0

    def select(self, dataset_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Features of the given dataset rows that decoded, and those rows (skipped rows drop out)."""
        position = np.full(int(max(self.rows.max(initial=-1), dataset_rows.max(initial=-1))) + 1, -1, dtype=np.int64)
        position[self.rows] = np.arange(len(self.rows))
        kept = dataset_rows[position[dataset_rows] >= 0]
        return self.features[position[kept]], kept


# ----------------------------------------------------------------------------------------------- loading


class _DatasetImages(torch.utils.data.Dataset):
    """Decodes and preprocesses images (in DataLoader workers when there are any); unreadable ones come back flagged."""

    def __init__(self, paths: tuple[Path, ...], backbone: str) -> None:
        self.paths = paths
        self.config = get_config(backbone)
        self.transform = make_transform(self.config)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int):
        try:
            # draft_size: JPEG decoders can skip most of a huge photo's pixels before a 224-px crop.
            image = load_image(self.paths[row], draft_size=self.config.resize)
            return self.transform(image), row, ""
        except BadImageError as exc:
            return torch.zeros(3, self.config.input_size, self.config.input_size), row, str(exc)


def default_num_workers(device: torch.device) -> int:
    """Decode worker processes for extraction on ``device``.

    On a GPU the forward is fast and JPEG decode the bottleneck: one worker per spare core. On a CPU
    the model already uses every core and decode costs 2-4 % of a forward (Synthetic Flowers, 224 px:
    ~900 images/s decoded vs 20-40 images/s through ViT-S/14 or EfficientNet-Lite0 on 2 cores), so a
    worker process only competes with the model's threads: measured back to back on 2 cores
    (``python -m bench``), decoding in the model's process beat one worker by 3 % (ViT-S/14), 8 %
    (ResNet-50) and 15 % (EfficientNet-Lite0). Larger CPUs get one worker per 8 cores (not measured here).
    """
    cores = os.cpu_count() or 2
    if device.type != "cpu":
        return max(1, min(8, cores - 1))
    return cores // 8


def feature_loader(
    paths: tuple[Path, ...], backbone: str, *, device: torch.device, batch_size: int = 64, num_workers: int | None = None,
) -> DataLoader:
    """Batches ``(images (n, 3, H, W), rows (n,), errors)`` of ``paths``, decoded and preprocessed.

    ``num_workers`` None means ``default_num_workers(device)``; 0 decodes in the calling process.
    """
    workers = default_num_workers(device) if num_workers is None else num_workers
    return DataLoader(
        _DatasetImages(tuple(paths), backbone), batch_size=batch_size, shuffle=False, num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=False, prefetch_factor=4 if workers else None,
    )


def _cache_key(dataset: Dataset, backbone: str, weights_tag: str, precision: str) -> str:
    config = get_config(backbone)
    payload = {
        "version": FEATURE_FORMAT_VERSION, "dataset": dataset.key, "fingerprint": dataset.fingerprint, "backbone": backbone,
        "weights": weights_tag, "precision": precision,
        "preprocessing": [config.resize, config.input_size, list(config.mean), list(config.std), config.interpolation],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    try:
        handle = open(lock_path, "a")
    except OSError as exc:  # full or read-only workspace: say so, as every other write does
        if exc.errno in _DISK_ERRNOS:
            raise _workspace_write_error(lock_path, exc) from exc
        raise
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released by the kernel when the process dies, kill -9 too
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_cache(path: Path, *, device_used: str) -> FeatureSet | None:
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        return FeatureSet(
            features=data["features"], rows=data["rows"], skipped=tuple(tuple(s) for s in meta["skipped"]),
            backbone=meta["backbone"], weights_tag=meta["weights_tag"], precision=meta["precision"],
            device=meta.get("device", device_used), seconds=meta["seconds"], from_cache=True, cache_path=path,
        )


def read_features(path: str | os.PathLike) -> FeatureSet:
    """The feature cache file ``extract_features`` wrote (a run's ``features_path``), no model needed.

    Raises
    ------
    MissingFileError
        The file was deleted since (recompute it by training the run's backbone again).
    """
    cached = _read_cache(Path(path), device_used="unknown")
    if cached is None:
        raise MissingFileError(f"Cached features {path} are missing; train a run with this backbone again to recompute them.")
    return cached


def _write_cache(path: Path, result: FeatureSet) -> None:
    meta = {
        "backbone": result.backbone, "weights_tag": result.weights_tag, "precision": result.precision,
        "device": result.device, "seconds": result.seconds, "skipped": [list(s) for s in result.skipped],
    }
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as handle:  # a file object stops numpy from appending ".npz" to the temp name
            np.savez(handle, features=result.features, rows=result.rows, meta=np.asarray(json.dumps(meta)))


def prepare_model(model: torch.nn.Module, *, device: torch.device, precision: str) -> torch.nn.Module:
    """Move ``model`` (in place) to ``device`` in the dtype and memory layout its forward is fastest in.

    On CPU, bf16 runs with the weights cast once rather than under autocast, which re-casts every
    weight on every forward, and in channels-last, oneDNN's native convolution layout. Measured
    back to back on a 2-core AVX-512-BF16 CPU against fp32 weights under autocast (python -m bench):
    ResNet-50 1.3-1.4x, EfficientNet-Lite0 1.5-1.6x, ViT-S/14 1.0-1.15x (its matmuls were already bf16);
    against fp32, bf16 is 1.6-1.8x (ViT-S/14) to 1.8-2x (ResNet-50) faster. Calling it again with the same
    precision changes nothing; with another precision it converts the weights back or forth.
    """
    model = model.to(device)
    if device.type == "cpu":
        model = model.to(dtype=torch.bfloat16 if precision == "bf16" else torch.float32, memory_format=torch.channels_last)
    return model


def _autocast(device: torch.device, precision: str, weights_dtype: torch.dtype):
    # Autocast only where the weights are still fp32 (GPUs, MPS, CPU fp16): bf16 weights need none.
    if precision == "fp32" or weights_dtype != torch.float32:
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


@torch.inference_mode()
def compute_features(
    model: torch.nn.Module, loader: DataLoader, *, device: torch.device, precision: str, total: int,
    progress: ProgressCallback | None = None,
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """Run ``model`` over ``loader``; returns (features of shape (n_ok, dim), rows, [(row, reason) skipped]).

    ``model`` is first prepared in place by ``prepare_model``, so every caller (extraction, the
    Classify page) runs the very same forward for a given device and precision.
    """
    model = prepare_model(model, device=device, precision=precision)
    weights_dtype = next(model.parameters()).dtype
    layout = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    chunks, rows, skipped = [], [], []
    meter = RateMeter()
    done = 0
    for images, batch_rows, errors in loader:
        ok = torch.tensor([not e for e in errors], dtype=torch.bool)
        skipped.extend((int(r), e) for r, e in zip(batch_rows, errors) if e)
        if ok.any():
            with _autocast(device, precision, weights_dtype):
                out = model(images[ok].to(device, dtype=weights_dtype, memory_format=layout, non_blocking=True))
            chunks.append(out.float().cpu().numpy())
            rows.append(batch_rows[ok].numpy())
        done += len(batch_rows)
        report(progress, "features", done, total, rate=meter.rate(done), message=f"{meter.rate(done):.1f} images/s")
    dim = chunks[0].shape[1] if chunks else 0
    features = np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)
    return features.astype(np.float32, copy=False), (np.concatenate(rows) if rows else np.zeros(0, np.int64)), skipped


def extract_features(
    dataset: Dataset,
    backbone: str,
    *,
    workspace: Workspace,
    weights: str = "pretrained",
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 64,
    num_workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> FeatureSet:
    """Features of every image in ``dataset`` from ``backbone``, from the cache when present.

    Parameters
    ----------
    dataset : Dataset
    backbone : str
        A name from ``core.backbones.list_backbones()``.
    weights : str
        ``"pretrained"``, ``"random"`` or a checkpoint path (see ``core.backbones.resolve_weights``).
    device, precision : str
        ``"auto"`` picks CUDA > MPS > CPU and mixed precision where it is fast and faithful.
    batch_size : int
        Images per forward.

    Returns
    -------
    FeatureSet
        ``features`` of shape (n_ok, feature_dim) for the ``rows`` that decoded; ``skipped`` lists the rest.
    """
    if batch_size < 1:
        raise FlowerProbeError(f"batch_size must be a positive integer, got {batch_size!r}.")
    torch_device = select_device(device)
    chosen_precision = select_precision(torch_device, precision, backbone=backbone)
    source = resolve_weights(backbone, weights=weights, workspace=workspace, progress=progress)
    cache_path = workspace.features_dir / f"{dataset.key.replace('/', '_').replace(':', '-')}-{backbone}-{_cache_key(dataset, backbone, source.tag, chosen_precision)}.npz"

    # A cache file only ever appears whole (atomic rename), so a hit needs no lock, and a read-only
    # workspace still serves the features it holds; the lock makes concurrent misses compute once.
    cached = _read_cache(cache_path, device_used=device_name(torch_device))
    with ExitStack() as lock:
        if cached is None:
            lock.enter_context(_exclusive(cache_path.with_suffix(".lock")))
            cached = _read_cache(cache_path, device_used=device_name(torch_device))  # another process's, made meanwhile
        if cached is not None:
            report(progress, "features", len(dataset.image_paths), len(dataset.image_paths), message="features from cache")
            return cached
        started = time.perf_counter()
        model, source = build_backbone(backbone, weights=weights, workspace=workspace, progress=progress)
        loader = feature_loader(dataset.image_paths, backbone, device=torch_device, batch_size=batch_size, num_workers=num_workers)
        features, rows, skipped_rows = compute_features(
            model, loader, device=torch_device, precision=chosen_precision, total=len(dataset.image_paths), progress=progress
        )
        result = FeatureSet(
            features=features, rows=rows, skipped=tuple((str(dataset.image_paths[r]), reason) for r, reason in skipped_rows),
            backbone=backbone, weights_tag=source.tag, precision=chosen_precision, device=device_name(torch_device),
            seconds=time.perf_counter() - started, cache_path=cache_path,
        )
        if len(rows) == 0:
            raise FlowerProbeError(f"None of the {len(dataset.image_paths)} images of {dataset.name} could be read; first reason: {result.skipped[0][1] if result.skipped else 'none'}")
        _write_cache(cache_path, result)
        return result
