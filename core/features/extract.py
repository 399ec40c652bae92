"""Feature extraction with a disk cache: each backbone forward over a dataset happens once.

Features are cached per (dataset fingerprint, backbone, weights, preprocessing, precision, variants) for
every image of the dataset, so all of a dataset's splits (Oxford 17 has three over the same 1,360 images)
and all feature variants (``core.backbones.variants``: CLS, patch mean, ..., from the same forward pass) read the
same cache entry.

A cache entry is a folder written in shards as extraction proceeds (``DEFAULT_SHARD_SIZE`` images each,
every shard written atomically, a ``manifest.json`` saying which are done), so a killed extraction resumes
from its last complete shard and peak memory does not grow with the dataset. When every shard is done
they are joined into one ``.npy`` file per variant (memory-mapped on reading when large) and the manifest
says ``complete``: one file-open tells a finished entry. A lock file makes two processes asking for the
same missing features compute them once. Single-file ``.npz`` caches written before shards existed are
read as they are (they hold the default variant).

Images that cannot be decoded are skipped and listed (``FeatureSet.skipped``); the rest go on.
"""

from __future__ import annotations

import copy
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch.utils.data import DataLoader

from core.backbones.registry import BackboneConfig, make_transform
from core.backbones.resolved import ResolvedBackbone, resolve_backbone
from core.backbones.variants import TOKENS, available_variants, model_variants, variant_forward
from core.base.errors import BadImageError, FlowerProbeError, MissingFileError
from core.base.fileio import atomic_write, atomic_write_bytes, disk_errors
from core.base.progress import ProgressCallback, RateMeter, report
from core.base.workspace import Workspace
from core.data.datasets import Dataset
from core.data.images import load_image
from core.features.runtime import (
    RuntimeChoice,
    check_runtime,
    choice_key,
    cpu_flags,
    default_runtime,
    iter_onnx_batches,
    measure_runtimes,
    record_choice,
    recorded_choice,
    threaded_batches,
)
from core.onnx.backbone import backbone_graph
from core.onnx.export import OnnxUnavailableError

# Bump when the extraction itself changes (token choice, resizing code): old caches then miss.
# Version 1 is the single-file .npz cache (default variant only), still read; version 2 the sharded folder.
FEATURE_FORMAT_VERSION = 1
SHARDED_FORMAT_VERSION = 2
# Images per shard: what a kill can lose (about 3 min of ViT-S/14 on 2 CPU cores, 2 s on a GPU) and what a
# shard holds in memory (4,096 x 3,072 float32 = 50 MB for ViT-S/14's four variants).
DEFAULT_SHARD_SIZE = 4096
# Cached arrays larger than this are memory-mapped rather than read (a 1.28M x 1,536 array is 7.9 GB), so the
# memory an extraction ends with does not grow with the dataset; Oxford 17's largest variant is 17 MB.
MMAP_ABOVE_BYTES = 64 << 20
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# The exporter of the feature engine's graphs (core.onnx.export.EXPORT_ORDERS): TorchScript first, dynamo where it
# fails. The graph is made on first use, while the user waits, and TorchScript's export is 3-10x quicker here for
# graphs onnxruntime runs at the same speed (the measurements are beside EXPORT_ORDERS).
ENGINE_EXPORTER = "torchscript-first"

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
    variant: str | None = None  # the core.backbones.variants name of these features; None only for hand-made sets
    # What computed them: "torch" or "onnxruntime" (core.features.runtime); caches written before runtimes: "torch".
    runtime: str = "torch"

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

    def __init__(self, paths: tuple[Path, ...], backbone: ResolvedBackbone | BackboneConfig) -> None:
        self.paths = paths
        # A config pickles small and plainly (Ray decode tasks, DataLoader workers); the record gives its own.
        self.config = backbone.config if isinstance(backbone, ResolvedBackbone) else backbone
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
    paths: tuple[Path, ...],
    backbone: ResolvedBackbone | str,
    *,
    device: torch.device,
    batch_size: int = 64,
    num_workers: int | None = None,
    batches: Sequence[Sequence[int]] | None = None,
) -> DataLoader:
    """Batches ``(images (n, 3, H, W), rows (n,), errors)`` of ``paths``, decoded and preprocessed.

    ``backbone`` gives the preprocessing (a name is resolved here, once). ``num_workers`` None means
    ``default_num_workers(device)``; 0 decodes in the calling process.
    ``batches``: the row indices of each batch, in order (then ``batch_size`` is unused); default all rows
    in order. At most ``4 x num_workers`` batches are decoded ahead, so memory stays bounded.
    """
    workers = default_num_workers(device) if num_workers is None else num_workers
    sizing = {"batch_sampler": batches} if batches is not None else {"batch_size": batch_size, "shuffle": False}
    return DataLoader(
        _DatasetImages(tuple(paths), resolve_backbone(backbone)),
        **sizing,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )


def cache_key(
    dataset_key: str,
    fingerprint: str,
    backbone: ResolvedBackbone,
    weights_tag: str,
    precision: str,
    variants: Sequence[str] | None = None,
) -> str:
    """Hash of everything the features depend on; without ``variants``, the single-file (version 1) cache's key."""
    config = backbone.config
    payload = {
        "version": FEATURE_FORMAT_VERSION,
        "dataset": dataset_key,
        "fingerprint": fingerprint,
        "backbone": backbone.name,
        "weights": weights_tag,
        "precision": precision,
        "preprocessing": [config.resize, config.input_size, list(config.mean), list(config.std), config.interpolation],
    }
    if variants is not None:
        payload.update(version=SHARDED_FORMAT_VERSION, variants=list(variants))
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    with disk_errors(lock_path):  # full or read-only workspace: say so, as every other write does
        handle = open(lock_path, "a")  # noqa: SIM115 - lock handle outlives this block; `with handle` closes it
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released by the kernel when the process dies, kill -9 too
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _load_array(path: Path, *, memory_map: bool = False) -> np.ndarray:
    """A ``.npy`` file, memory-mapped (read-only) when ``memory_map`` or when larger than ``MMAP_ABOVE_BYTES``."""
    mapped = memory_map or path.stat().st_size > MMAP_ABOVE_BYTES
    return np.load(path, mmap_mode="r" if mapped else None, allow_pickle=False)


def _read_legacy_cache(path: Path, *, device_used: str, variant: str | None = None) -> FeatureSet | None:
    """A version-1 single-file cache (``.npz``: the default variant only), or None if there is none.

    ``variant``: the backbone's default variant when the caller knows it; None looks it up from the file's backbone.
    """
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        return FeatureSet(
            features=data["features"],
            rows=data["rows"],
            skipped=tuple(tuple(s) for s in meta["skipped"]),
            backbone=meta["backbone"],
            weights_tag=meta["weights_tag"],
            precision=meta["precision"],
            device=meta.get("device", device_used),
            seconds=meta["seconds"],
            from_cache=True,
            cache_path=path,
            variant=variant or available_variants(meta["backbone"])[0],
        )


class ShardedCache:
    """One sharded cache entry: a folder of shards, a manifest of the shards done, then one array per variant.

    Shard ``i`` holds dataset rows ``[i * shard_size, (i + 1) * shard_size)``. Every file is written
    atomically, the manifest after the file it lists, so whatever a kill leaves is consistent.
    """

    MANIFEST = "manifest.json"

    def __init__(self, folder: Path, *, n_images: int, shard_size: int, identity: dict) -> None:
        self.folder = folder
        self.identity = identity  # backbone, weights_tag, precision, variants: what the entry holds
        self.manifest = self.read_manifest(folder) or {
            "format": SHARDED_FORMAT_VERSION,
            **identity,
            "n_images": n_images,
            "shard_size": shard_size,
            "shards": {},
            "seconds": 0.0,
            "complete": False,
        }
        # A resumed entry keeps the shard size it started with, so its shards still line up.
        self.n_images, self.shard_size = self.manifest["n_images"], self.manifest["shard_size"]

    @classmethod
    def read_manifest(cls, folder: Path) -> dict | None:
        try:
            return json.loads((folder / cls.MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None

    @property
    def n_shards(self) -> int:
        return -(-self.n_images // self.shard_size)

    def shard_rows(self, index: int) -> range:
        return range(index * self.shard_size, min(self.n_images, (index + 1) * self.shard_size))

    def missing_shards(self) -> list[int]:
        done = self.manifest["shards"]
        return [
            i for i in range(self.n_shards) if str(i) not in done or not (self.folder / done[str(i)]["file"]).is_file()
        ]

    def _save_manifest(self) -> None:
        atomic_write_bytes(self.folder / self.MANIFEST, json.dumps(self.manifest, indent=1).encode("utf-8"))

    def write_shard(
        self,
        index: int,
        features: dict[str, np.ndarray],
        rows: np.ndarray,
        skipped: list[tuple[str, str]],
        *,
        seconds: float,
    ) -> None:
        """Store one finished shard.

        features : {variant: ndarray of shape (len(rows), dim)}; rows : ndarray of shape (n_decoded,), dataset rows;
        skipped : (file path, reason) of the shard's images that could not be read; seconds : time it took.
        """
        name = f"shard-{index:06d}.npz"
        arrays = {f"features-{k}": features[v] for k, v in enumerate(self.identity["variants"]) if len(rows)}
        with atomic_write(self.folder / name) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, rows=rows.astype(np.int64), skipped=np.asarray(json.dumps(skipped)), **arrays)
        self.manifest["shards"][str(index)] = {"file": name, "decoded": len(rows)}
        self.manifest["seconds"] += seconds
        self._save_manifest()

    def finish(self, *, device: str) -> None:
        """Join the shards into ``rows.npy`` and one ``features-<k>.npy`` per variant, then mark the entry complete.

        The joined files are written shard by shard through file handles (not a memory map, whose dirty pages
        would count against the process), so this step also holds one shard in memory at a time.
        """
        variants = self.identity["variants"]
        shards = [self.folder / self.manifest["shards"][str(i)]["file"] for i in range(self.n_shards)]
        total = sum(self.manifest["shards"][str(i)]["decoded"] for i in range(self.n_shards))
        names = {"rows": "rows.npy", **{v: f"features-{k}.npy" for k, v in enumerate(variants)}}
        skipped: list[list] = []
        with ExitStack() as stack:
            handles: dict[str, object] = {}
            for shard in shards:
                with np.load(shard, allow_pickle=False) as data:
                    skipped.extend(json.loads(str(data["skipped"])))
                    if not len(data["rows"]):
                        continue
                    pieces = {"rows": data["rows"], **{v: data[f"features-{k}"] for k, v in enumerate(variants)}}
                    for key, piece in pieces.items():
                        if key not in handles:
                            tmp = stack.enter_context(atomic_write(self.folder / names[key]))
                            handles[key] = stack.enter_context(open(tmp, "wb"))
                            shape = (total,) + piece.shape[1:]
                            np.lib.format.write_array_header_1_0(
                                handles[key],
                                {
                                    "descr": np.lib.format.dtype_to_descr(piece.dtype),
                                    "fortran_order": False,
                                    "shape": shape,
                                },
                            )
                        handles[key].write(np.ascontiguousarray(piece).tobytes())
        self.manifest.update(complete=True, files=names if total else {}, decoded=total, device=device, skipped=skipped)
        self._save_manifest()
        for shard in shards:  # the joined files hold everything now
            shard.unlink(missing_ok=True)


class ShardWriter:
    """Takes a shard's batches in row order and writes the shard once its last row is in (every engine's filler).

    A shard's ``seconds`` run from the writer's making, or from the previous shard written.
    """

    def __init__(self, cache: ShardedCache, paths: Sequence[Path]) -> None:
        self.cache = cache
        self.paths = paths  # the dataset's images, which name the skipped ones
        self._start_shard()

    def _start_shard(self) -> None:
        self.features: list[dict[str, np.ndarray]] = []
        self.rows: list[np.ndarray] = []
        self.skipped: list[tuple[str, str]] = []
        self.seen = 0
        self.started = time.perf_counter()

    def add(self, features: dict[str, np.ndarray], rows: np.ndarray, skipped: Sequence[tuple[int, str]]) -> None:
        """One batch, all of one shard: ``features`` ``{name: ndarray (len(rows), ...)}`` of the dataset ``rows``
        (n,) that decoded (empty when none did), and ``(row, reason)`` for each image that did not."""
        index = int(rows[0] if len(rows) else skipped[0][0]) // self.cache.shard_size
        self.features.append(features)
        self.rows.append(rows)
        self.skipped.extend((str(self.paths[row]), reason) for row, reason in skipped)
        self.seen += len(rows) + len(skipped)
        if self.seen < len(self.cache.shard_rows(index)):
            return
        names = [name for name in self.cache.identity["variants"] if any(name in f for f in self.features)]
        self.cache.write_shard(
            index,
            {name: np.concatenate([f[name] for f in self.features if name in f]) for name in names},
            np.concatenate(self.rows),
            self.skipped,
            seconds=time.perf_counter() - self.started,
        )
        self._start_shard()


def _read_sharded(folder: Path, variant: str | None, *, memory_map: bool = False) -> FeatureSet | None:
    """A complete sharded entry's features of ``variant`` (None: the default), or None if it is not complete.

    ``memory_map``: map the features whatever their size (otherwise only above ``MMAP_ABOVE_BYTES``).
    """
    manifest = ShardedCache.read_manifest(folder)
    if manifest is None or not manifest.get("complete"):
        return None
    variants = manifest["variants"]
    if variant is None:  # the default: the first pooled variant (a token entry also keeps its backbone's default)
        pooled = [name for name in variants if name != TOKENS]
        if not pooled:
            raise FlowerProbeError(
                f"The cache {folder.name} holds patch tokens only, no pooled features (n_images, dim) to map or "
                f"search; extract the backbone's features (python -m core extract) for them."
            )
        variant = pooled[0]
    if variant not in variants:
        raise FlowerProbeError(
            f"features must be one of {', '.join(variants)} for {manifest['backbone']}, got {variant!r}."
        )
    files = manifest["files"]
    features = _load_array(folder / files[variant], memory_map=memory_map) if files else np.zeros((0, 0), np.float32)
    rows = np.load(folder / files["rows"], allow_pickle=False) if files else np.zeros(0, np.int64)
    skipped = tuple((str(path), str(reason)) for path, reason in manifest["skipped"])
    return FeatureSet(
        features=features,
        rows=rows,
        skipped=skipped,
        backbone=manifest["backbone"],
        weights_tag=manifest["weights_tag"],
        precision=manifest["precision"],
        device=manifest["device"],
        seconds=manifest["seconds"],
        from_cache=True,
        cache_path=folder,
        variant=variant,
        runtime=manifest.get("runtime", "torch"),
    )


def read_features(path: str | os.PathLike, *, variant: str | None = None) -> FeatureSet:
    """The cached features ``extract_features`` wrote (a run's ``features_path``), no model needed.

    ``path`` is a sharded cache folder (or its manifest) or a single-file ``.npz`` cache; ``variant`` one of
    the backbone's feature variants (None: its default, the only one a single-file cache holds).

    Raises
    ------
    MissingFileError
        The cache was deleted since (recompute it by training the run's backbone again).
    FlowerProbeError
        The cache does not hold ``variant``.
    """
    path = Path(path)
    folder = path.parent if path.name == ShardedCache.MANIFEST else path
    cached = _read_sharded(folder, variant) if folder.is_dir() else _read_legacy_cache(path, device_used="unknown")
    if cached is None:
        raise MissingFileError(
            f"Cached features {path} are missing; train a run with this backbone again to recompute them."
        )
    if variant is not None and cached.variant != variant:
        raise FlowerProbeError(
            f"features must be {cached.variant!r} for the cache {path.name} "
            "(written before feature variants existed), got "
            f"{variant!r}; extract the features again (python -m core extract) to get every variant."
        )
    return cached


def _is_prepared(model: torch.nn.Module, *, device: torch.device, dtype: torch.dtype | None) -> bool:
    """Whether every parameter already has ``device`` (and ``dtype``, in channels-last where 4-D):
    nothing to convert."""
    for parameter in model.parameters():
        if parameter.device.type != device.type or (dtype is not None and parameter.dtype != dtype):
            return False
        if dtype is not None and parameter.ndim == 4 and not parameter.is_contiguous(memory_format=torch.channels_last):
            return False
    return True


def prepare_model(
    model: torch.nn.Module, *, device: torch.device, precision: str, in_place: bool = False
) -> torch.nn.Module:
    """``model`` on ``device`` in the dtype and memory layout its forward is fastest in.

    The model given is returned as it is when nothing needs converting. Otherwise a converted copy is
    returned and ``model`` is left untouched, so a model shared between callers (the Classify page
    caches one per backbone for runs of any precision) is never changed under another caller; with
    ``in_place=True`` (a model built for this one use) it is converted in place, saving the copy.

    On CPU, bf16 runs with the weights cast once rather than under autocast, which re-casts every
    weight on every forward, and in channels-last, oneDNN's native convolution layout. Measured
    back to back on a 2-core AVX-512-BF16 CPU against fp32 weights under autocast (python -m bench):
    ResNet-50 1.3-1.4x, EfficientNet-Lite0 1.5-1.6x, ViT-S/14 1.0-1.15x (its matmuls were already bf16);
    against fp32, bf16 is 1.6-1.8x (ViT-S/14) to 1.8-2x (ResNet-50) faster. Calling it again with the same
    precision changes nothing; with another precision it converts the weights back or forth.
    """
    dtype = (torch.bfloat16 if precision == "bf16" else torch.float32) if device.type == "cpu" else None
    if _is_prepared(model, device=device, dtype=dtype):
        return model
    if not in_place:
        model = copy.deepcopy(model)
    model = model.to(device)
    if device.type == "cpu":
        model = model.to(
            dtype=torch.bfloat16 if precision == "bf16" else torch.float32, memory_format=torch.channels_last
        )
    return model


def _autocast(device: torch.device, precision: str, weights_dtype: torch.dtype):
    # Autocast only where the weights are still fp32 (GPUs, MPS, CPU fp16): bf16 weights need none.
    if precision == "fp32" or weights_dtype != torch.float32:
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


# ----------------------------------------------------------------------------------------------- forward

# While a batch is in the model, progress is reported again at most this often, from forward hooks on the
# model's leaf modules, so a cancel (the job runner raises CancelledError from the progress callback) lands
# within a layer's time rather than a batch's (a 64-image ViT-S/14 forward takes 3.4 s on 2 CPU cores, far
# more under load). Splitting batches into micro-batches would do it too, but changes the last bits of
# some backbones' features (EfficientNet-Lite0 fp32 on this CPU: batches of 6 vs 2), and the default
# variant must stay bit-identical to the features cached before.
HEARTBEAT_SECONDS = 0.2


@contextmanager
def _heartbeat(
    model: torch.nn.Module, beat: Callable[[], None], *, every_s: float = HEARTBEAT_SECONDS
) -> Iterator[None]:
    """Call ``beat()`` from inside ``model``'s forward, at most every ``every_s`` seconds, while in the block."""
    last = [time.monotonic()]

    def hook(*_args) -> None:
        if time.monotonic() - last[0] >= every_s:
            last[0] = time.monotonic()
            beat()

    handles = [m.register_forward_hook(hook) for m in model.modules() if not any(True for _ in m.children())]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


FeatureBatch = tuple[dict[str, np.ndarray], np.ndarray, list[tuple[int, str]]]
# What one extraction pass computes, opened on a prepared model for the length of the pass: a function mapping
# images (n, 3, H, W) to {name: ndarray (n, ...)} from one model(x) call. ``pooled_forward`` is the features';
# core.features.tokens opens patch tokens beside them, or every block's pooled feature.
ArrayForward = Callable[[torch.nn.Module], AbstractContextManager[Callable[[torch.Tensor], dict[str, np.ndarray]]]]


def float32_arrays(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """``{name: tensor (n, dim)}`` -> ``{name: float32 ndarray (n, dim)}`` on the CPU, whatever dtype computed it."""
    return {name: tensor.float().cpu().numpy().astype(np.float32, copy=False) for name, tensor in tensors.items()}


@contextmanager
def pooled_forward(
    model: torch.nn.Module, variants: Sequence[str]
) -> Iterator[Callable[[torch.Tensor], dict[str, np.ndarray]]]:
    """The features' ``ArrayForward``: images (n, 3, H, W) -> ``{variant: float32 ndarray (n, dim)}``."""
    with variant_forward(model, variants) as forward:

        def arrays(images: torch.Tensor) -> dict[str, np.ndarray]:
            out = forward(images)  # may hold the default variant too when it was not asked for
            return float32_arrays({name: out[name] for name in variants})

        yield arrays


@torch.inference_mode()
def iter_feature_batches(
    model: torch.nn.Module,
    loader: Iterable,
    *,
    device: torch.device,
    precision: str,
    total: int,
    variants: Sequence[str] | None = None,
    progress: ProgressCallback | None = None,
    done: int = 0,
    forward: ArrayForward | None = None,
) -> Iterator[FeatureBatch]:
    """Run ``model`` over ``loader``'s ``(images, rows, errors)`` batches, one forward pass for all ``variants``.

    Yields, per loader batch, ``({variant: ndarray of shape (n_ok, dim), float32}, rows (n_ok,), [(row, reason)])``
    (the dict is empty when no image of the batch decoded). ``variants`` None means the model's default
    only. ``done`` images were finished before (a resumed extraction): progress counts on from there, after
    every batch and every ``HEARTBEAT_SECONDS`` inside one. ``model`` is first prepared in place by ``prepare_model``
    (pass a model of your own, or one already prepared, as the Classify page's predictor holds). ``forward``
    computes other arrays than the pooled ``variants`` (see ``ArrayForward``); the dict then holds its names.
    """
    model = prepare_model(model, device=device, precision=precision, in_place=True)
    if forward is None:
        forward = partial(pooled_forward, variants=tuple(variants) if variants else model_variants(model)[:1])
    weights_dtype = next(model.parameters()).dtype
    layout = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    meter, start_done = RateMeter(), done

    def tell(message: str | None = None) -> None:
        rate = meter.rate(done - start_done)
        report(progress, "features", done, total, rate=rate, message=message or f"{rate:.1f} images/s")

    with ExitStack() as stack:
        arrays = stack.enter_context(forward(model))
        if progress is not None:
            stack.enter_context(_heartbeat(model, tell))
        for images, batch_rows, errors in loader:
            ok = torch.tensor([not e for e in errors], dtype=torch.bool)
            skipped = [(int(r), e) for r, e in zip(batch_rows, errors, strict=True) if e]
            features: dict[str, np.ndarray] = {}
            if ok.any():
                with _autocast(device, precision, weights_dtype):
                    features = arrays(
                        images[ok].to(device, dtype=weights_dtype, memory_format=layout, non_blocking=True)
                    )
            done += len(batch_rows)
            tell()
            yield features, batch_rows[ok].numpy().astype(np.int64), skipped


def compute_features(
    model: torch.nn.Module,
    loader: Iterable,
    *,
    device: torch.device,
    precision: str,
    total: int,
    progress: ProgressCallback | None = None,
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """Run ``model`` over ``loader``; returns (default-variant features of shape (n_ok, dim), rows, [(row, reason)]).

    ``model`` is first prepared in place by ``prepare_model``, so every caller (extraction, the
    Classify page) runs the very same forward for a given device and precision.
    """
    chunks, rows, skipped = [], [], []
    for features, batch_rows, batch_skipped in iter_feature_batches(
        model, loader, device=device, precision=precision, total=total, progress=progress
    ):
        chunks.extend(features.values())
        rows.append(batch_rows)
        skipped.extend(batch_skipped)
    dim = chunks[0].shape[1] if chunks else 0
    features = np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)
    return features, (np.concatenate(rows) if rows else np.zeros(0, np.int64)), skipped


# ----------------------------------------------------------------------------------------------- extraction


@dataclass(frozen=True)
class CacheEntry:
    """Where one (dataset, backbone, weights, precision) extraction is cached, and what it holds."""

    dataset: Dataset
    backbone: str  # the resolved backbone's name, as FeatureSet and manifests record it
    weights_tag: str
    precision: str
    variants: tuple[str, ...]
    folder: Path  # the sharded cache
    legacy_path: Path  # the single-file cache of the default variant, from before shards
    resolved: ResolvedBackbone | None = field(default=None, compare=False)  # located: what builds the model
    memory_map: ClassVar[bool] = False  # read the features memory-mapped whatever their size

    @classmethod
    def of(
        cls,
        dataset: Dataset,
        backbone: ResolvedBackbone | str,
        *,
        workspace: Workspace,
        precision: str,
        weights_tag: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> CacheEntry:
        """The entry of ``backbone`` (the resolved record; a name is resolved here) on ``dataset``; ``weights_tag``
        defaults to the located record's (``backbone.located(...)``), the tag its model is built with."""
        backbone = resolve_backbone(backbone)
        if weights_tag is None:
            weights_tag = backbone.weights_tag
        fingerprint = dataset.compute_fingerprint(progress=progress)  # stats every file: once for both names
        variants = backbone.variants
        stem = f"{dataset.key.replace('/', '_').replace(':', '-')}-{backbone.name}"
        legacy_key = cache_key(dataset.key, fingerprint, backbone, weights_tag, precision)
        key = cache_key(dataset.key, fingerprint, backbone, weights_tag, precision, variants)
        return cls(
            dataset=dataset,
            backbone=backbone.name,
            resolved=backbone if backbone.source is not None else None,
            weights_tag=weights_tag,
            precision=precision,
            variants=variants,
            folder=workspace.features_dir / f"{stem.replace(':', '-')}-{key}",
            legacy_path=workspace.features_dir / f"{stem}-{legacy_key}.npz",
        )

    def read(self, variant: str) -> FeatureSet | None:
        """The cached features of ``variant``, or None when they still have to be computed."""
        cached = _read_sharded(self.folder, variant, memory_map=self.memory_map)
        if cached is None and variant == self.variants[0]:
            cached = _read_legacy_cache(self.legacy_path, device_used="unknown", variant=self.variants[0])
        return cached

    def open(self, *, shard_size: int) -> ShardedCache:
        identity = {
            "backbone": self.backbone,
            "weights_tag": self.weights_tag,
            "precision": self.precision,
            "variants": list(self.variants),
        }
        return ShardedCache(
            self.folder, n_images=len(self.dataset.image_paths), shard_size=shard_size, identity=identity
        )

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the entry's lock, a file beside its folder (made here too): one process writes the entry at a time."""
        with disk_errors(self.folder):
            self.folder.mkdir(parents=True, exist_ok=True)
        with _exclusive(self.folder.with_name(self.folder.name + ".lock")):
            yield


# fill(cache, missing shard indices, progress) computes and writes those shards: the local engine's or Ray's.
ShardFiller = Callable[[ShardedCache, list[int], "ProgressCallback | None"], str]


def cached_extraction(
    entry: CacheEntry,
    variant: str,
    *,
    fill: ShardFiller,
    shard_size: int,
    progress: ProgressCallback | None,
) -> FeatureSet:
    """``entry``'s features of ``variant``: from the cache, else after ``fill`` computes the missing shards.

    ``fill`` returns the device description recorded with the features. A complete entry only ever
    appears whole (its manifest is written last), so a hit needs no lock and a read-only workspace still
    serves what it holds; the lock makes concurrent misses compute once and a rerun resume.
    """
    n = len(entry.dataset.image_paths)
    cached = entry.read(variant)
    with ExitStack() as lock:
        if cached is None:
            lock.enter_context(entry.locked())
            cached = entry.read(variant)  # another process's, made meanwhile
        if cached is not None:
            report(progress, "features", n, n, message="features from cache", from_cache=True)
            return cached
        cache = entry.open(shard_size=shard_size)
        device = fill(cache, cache.missing_shards(), progress)
        if sum(shard["decoded"] for shard in cache.manifest["shards"].values()) == 0:
            with np.load(cache.folder / cache.manifest["shards"]["0"]["file"], allow_pickle=False) as data:
                first = json.loads(str(data["skipped"]))
            raise FlowerProbeError(
                f"None of the {n} images of {entry.dataset.name} could be read; first reason: "
                f"{first[0][1] if first else 'none'}"
            )
        cache.finish(device=device)
    return dataclasses.replace(entry.read(variant), from_cache=False)  # read back from the joined files, computed now


def local_shard_filler(
    entry: CacheEntry,
    *,
    workspace: Workspace,
    device: torch.device,
    batch_size: int,
    num_workers: int | None,
    choice: RuntimeChoice | None = None,
    model: Callable[[], torch.nn.Module] | None = None,
    forward: ArrayForward | None = None,
) -> ShardFiller:
    """Fill missing shards in this process: one model, one loader over the missing rows in shard order.

    ``choice`` (``choose_runtime``'s) says which runtime computes them, PyTorch when None; ``model`` returns the
    backbone's model when the caller built one already (the runtime choice did). ``forward`` (PyTorch only) computes
    other arrays than ``entry``'s pooled variants, named as its variants: the token and layer entries' own.
    """

    def fill(cache: ShardedCache, missing: list[int], progress: ProgressCallback | None) -> str:
        if not missing:
            return cache.manifest.get("device", device_name(device))
        paths = entry.dataset.image_paths
        # Batches never straddle two shards, so each shard is written as soon as its last batch is done.
        batches = [
            list(rows[s : s + batch_size])
            for i in missing
            for rows in [cache.shard_rows(i)]
            for s in range(0, len(rows), batch_size)
        ]
        done_before = len(paths) - sum(len(cache.shard_rows(i)) for i in missing)
        writer = ShardWriter(cache, paths)
        if choice is not None and choice.runtime == "onnxruntime":
            cache.manifest["runtime"] = "onnxruntime"
            # Decode in a thread pool beside onnxruntime's forward: at 150-250 images/s decoding in line would
            # cost a third of the time (python -m bench --only onnx measures both).
            images = _DatasetImages(tuple(paths), entry.resolved)
            batches_out = iter_onnx_batches(
                choice.graph.session(),
                choice.graph,
                threaded_batches(
                    images.__getitem__,
                    batches,
                    image_shape=(3, entry.resolved.input_size, entry.resolved.input_size),
                    workers=num_workers or None,
                ),
                total=len(paths),
                variants=entry.variants,
                progress=progress,
                done=done_before,
            )
        else:
            cache.manifest["runtime"] = "torch"
            built = model() if model is not None else entry.resolved.build(workspace=workspace, progress=progress)
            loader = feature_loader(paths, entry.resolved, device=device, num_workers=num_workers, batches=batches)
            batches_out = iter_feature_batches(
                built,
                loader,
                device=device,
                precision=entry.precision,
                total=len(paths),
                variants=entry.variants,
                progress=progress,
                done=done_before,
                forward=forward,
            )
        for features, rows, skipped in batches_out:
            writer.add(features, rows, skipped)
        return device_name(device)

    return fill


def _say(progress: ProgressCallback | None, line: str) -> None:
    """One line about the runtime, to the progress callback (pages, the job log) and the log (the CLI)."""
    logging.getLogger("flower_probe").warning(line)
    report(progress, "runtime", 1, 1, message=line)


def choose_runtime(
    backbone: ResolvedBackbone,
    *,
    workspace: Workspace,
    device: torch.device,
    precision: str,
    runtime: str,
    model: Callable[[], torch.nn.Module],
    progress: ProgressCallback | None = None,
) -> RuntimeChoice:
    """Which runtime computes ``backbone``'s features on ``device``, at which precision, and why (one line).

    ``runtime`` "torch" is PyTorch; "onnxruntime" is onnxruntime fp32 (CPU only; falls back to PyTorch with the
    reason when the graph cannot be made or trusted); "auto" measures both the first time per (backbone, weights,
    input size, CPU) on this workspace (``core.features.runtime.measure_runtimes``) and keeps the faster, with both
    figures, in the measured-rates file. ``precision`` is the user's preference; onnxruntime computes fp32 only.
    """
    runtime = check_runtime(runtime)
    torch_precision = select_precision(device, precision, backbone=backbone.name)
    if runtime == "torch":
        return RuntimeChoice("torch", torch_precision, "runtime torch was asked for")
    if device.type != "cpu":
        if runtime == "onnxruntime":
            raise FlowerProbeError(
                f"runtime must be 'torch' or 'auto' on device {device.type}: onnxruntime is Flower Probe's CPU engine "
                f"only (GPU extraction stays on PyTorch); got 'onnxruntime'."
            )
        return RuntimeChoice("torch", torch_precision, f"{device.type} extraction runs on PyTorch")
    if precision not in ("auto", "fp32"):
        if runtime == "onnxruntime":
            raise FlowerProbeError(
                f"precision must be 'auto' or 'fp32' with runtime 'onnxruntime' (it computes fp32 only); got "
                f"{precision!r}."
            )
        return RuntimeChoice("torch", torch_precision, f"precision {precision} runs on PyTorch (onnxruntime is fp32)")
    try:
        graph = backbone_graph(backbone, workspace=workspace, model=model, progress=progress, exporter=ENGINE_EXPORTER)
        graph_session = graph.session()
    except OnnxUnavailableError as exc:
        line = f"{backbone.spec}: onnxruntime not used, features from PyTorch: {exc}"
        _say(progress, line)
        return RuntimeChoice("torch", torch_precision, line)
    if graph.rebuilt:
        _say(progress, f"{backbone.spec}: {graph.rebuilt}")
    if runtime == "onnxruntime":
        return RuntimeChoice("onnxruntime", "fp32", "runtime onnxruntime was asked for", graph=graph)
    threads = torch.get_num_threads()
    key = choice_key(
        input_size=backbone.input_size,
        torch_precision=torch_precision,
        threads=threads,
    )
    figures = recorded_choice(workspace, backbone.name, key)
    if figures is None:
        report(progress, "runtime", 0, 1, message=f"Timing PyTorch and onnxruntime on {backbone.spec} (once)")
        prepared = prepare_model(model(), device=device, precision=torch_precision)

        def torch_forward(images: torch.Tensor) -> None:
            batch = [(images, torch.arange(len(images)), [""] * len(images))]
            for _ in iter_feature_batches(
                prepared, batch, device=device, precision=torch_precision, total=len(images), variants=graph.variants
            ):
                pass

        torch_rate, onnx_rate = measure_runtimes(torch_forward, graph_session, graph)
        winner = "onnxruntime" if onnx_rate > torch_rate else "torch"
        figures = {
            "runtime": winner,
            "images_per_s": round(max(torch_rate, onnx_rate), 3),
            "torch_images_per_s": round(torch_rate, 3),
            "torch_precision": torch_precision,
            "onnxruntime_images_per_s": round(onnx_rate, 3),
            "onnx_exporter": graph.exporter,
            "input_size": backbone.input_size,
            "weights_tag": backbone.weights_tag,
            "threads": threads,
            "cpu_flags": list(cpu_flags()),
            "load_average": list(os.getloadavg()),
            "measured_at": time.time(),
        }
        record_choice(workspace, backbone.name, key, figures)
    winner = figures["runtime"]
    line = (
        f"{backbone.spec}: {winner} chosen (measured on this CPU: PyTorch {figures['torch_precision']} "
        f"{figures['torch_images_per_s']:.1f} images/s, onnxruntime fp32 {figures['onnxruntime_images_per_s']:.1f} "
        f"images/s)"
    )
    report(progress, "runtime", 1, 1, message=line)
    if winner == "onnxruntime":
        return RuntimeChoice("onnxruntime", "fp32", line, graph=graph, figures=figures)
    return RuntimeChoice("torch", torch_precision, line, figures=figures)


def check_positive(**values: object) -> None:
    """Refuse (FlowerProbeError naming the parameter) any of ``values`` that is not a positive integer."""
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise FlowerProbeError(f"{name} must be a positive integer, got {value!r}.")


def extract_features(
    dataset: Dataset,
    backbone: ResolvedBackbone | str,
    *,
    workspace: Workspace,
    weights: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 64,
    num_workers: int | None = None,
    progress: ProgressCallback | None = None,
    variant: str | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    runtime: str | None = None,
) -> FeatureSet:
    """Features of every image in ``dataset`` from ``backbone``, from the cache when present.

    Parameters
    ----------
    dataset : Dataset
    backbone : ResolvedBackbone or str
        The backbone as ``core.backbones.resolved.resolve_backbone`` resolved it (callers resolve once and pass the
        record down), or a spec (``NAME[@weights]``), resolved here.
    weights : str, optional
        ``"pretrained"``, ``"random"`` or a checkpoint path (see ``core.backbones.registry.resolve_weights``), for a
        spec without ``@``; None keeps the record's or spec's own (pretrained when it names none).
    device, precision : str
        ``"auto"`` picks CUDA > MPS > CPU and mixed precision where it is fast and faithful.
    batch_size : int
        Images per forward (progress, and so a cancel, also comes from inside a forward).
    variant : str, optional
        A feature variant of the backbone (``core.backbones.variants.available_variants``); None is its default
        (``"cls"`` for ViTs, ``"gap"`` for CNNs). Every variant is computed and cached in the same pass,
        so asking for another one later runs no forward.
    shard_size : int
        Images per cache shard, the most a killed extraction recomputes.
    runtime : str, optional
        ``"auto"`` (measured on first use, see ``choose_runtime``), ``"torch"`` or ``"onnxruntime"`` (CPU only);
        None reads ``FLOWER_PROBE_RUNTIME`` (``default_runtime``), "auto" when it is unset.
        Features already cached at the chosen precision are read whatever runtime made them
        (``FeatureSet.runtime`` says which).

    Returns
    -------
    FeatureSet
        ``features`` of shape (n_ok, feature_dim) for the ``rows`` that decoded; ``skipped`` lists the rest.
    """
    runtime = check_runtime(default_runtime() if runtime is None else runtime)
    check_positive(batch_size=batch_size, shard_size=shard_size)
    backbone = resolve_backbone(backbone, weights=weights)
    variant = backbone.check_variant(variant)
    torch_device = select_device(device)
    chosen_precision = select_precision(torch_device, precision, backbone=backbone.name)
    if runtime == "onnxruntime" and precision == "auto":
        chosen_precision = "fp32"  # onnxruntime's only precision: its cache entry is the fp32 one
    backbone = backbone.located(workspace=workspace, progress=progress)
    entry = CacheEntry.of(dataset, backbone, workspace=workspace, precision=chosen_precision, progress=progress)
    choice, built = None, []

    def model() -> torch.nn.Module:  # built at most once, and only when something needs it
        if not built:
            built.append(backbone.build(workspace=workspace, progress=progress))
        return built[0]

    if runtime != "torch" and torch_device.type == "cpu" and entry.read(variant) is None:
        # Nothing cached at torch's precision: measure (or recall) which runtime computes them. An auto choice
        # of onnxruntime moves the entry to fp32, whose cache either runtime may have written (module docstring).
        choice = choose_runtime(
            backbone,
            workspace=workspace,
            device=torch_device,
            precision=precision,
            runtime=runtime,
            model=model,
            progress=progress,
        )
        if choice.precision != chosen_precision:
            entry = CacheEntry.of(dataset, backbone, workspace=workspace, precision=choice.precision)
    elif runtime == "onnxruntime" and torch_device.type != "cpu":  # refused with choose_runtime's message
        choose_runtime(
            backbone, workspace=workspace, device=torch_device, precision=precision, runtime=runtime, model=model
        )
    fill = local_shard_filler(
        entry,
        workspace=workspace,
        device=torch_device,
        batch_size=batch_size,
        num_workers=num_workers,
        choice=choice,
        model=model,
    )
    return cached_extraction(entry, variant, fill=fill, shard_size=shard_size, progress=progress)
