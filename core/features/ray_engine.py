"""Distributed feature extraction on a Ray cluster, with Ray Data, into the same sharded cache as the local engine.

The pipeline: the image paths of the missing cache shards (``ray.data.from_items``) -> decode and preprocess
in CPU tasks (``map_batches`` with a function) -> a pool of model actors (``map_batches`` with a callable
class: one backbone per actor, a GPU each where ``num_gpus_per_worker`` asks for one) -> the driver, which
receives the features in row order (``preserve_order``) and writes each shard and the manifest exactly as
``core.features.extract`` does, so the dashboard, ``compare`` and ``probe`` read the result with zero forwards.

Ray is optional at run time: without it, ``RayMissingError`` says how to install it. Workers must see the
dataset and any weights file at the same paths as the driver (a shared file system), as on any Ray cluster.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from core.backbones.registry import BackboneConfig
from core.backbones.resolved import ResolvedBackbone, resolve_backbone
from core.base.errors import FlowerProbeError
from core.base.progress import ProgressCallback, RateMeter, report
from core.base.workspace import Workspace
from core.data.datasets import Dataset
from core.features.extract import (
    DEFAULT_SHARD_SIZE,
    CacheEntry,
    FeatureBatch,
    FeatureSet,
    ShardedCache,
    ShardWriter,
    _DatasetImages,
    cached_extraction,
    check_positive,
    choose_runtime,
    iter_feature_batches,
    select_precision,
)
from core.features.runtime import check_runtime, default_runtime
from core.onnx.backbone import graph_features
from core.onnx.export import session

INSTALL_HINT = 'pip install "ray[data]>=2.40"'
# Decode tasks read this many images per task: big enough to amortise a task, small enough to keep memory flat.
DECODE_BATCH = 32


class RayMissingError(FlowerProbeError):
    """The Ray engine was asked for, but Ray is not installed."""


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401  (the Data library is a separate extra)
    except ImportError as exc:
        raise RayMissingError(
            f"engine 'ray' needs Ray Data, which is not installed ({exc}). Install it with {INSTALL_HINT}, "
            f"or use engine 'local'."
        ) from None
    return ray


def _decode(batch: dict[str, np.ndarray], *, config: BackboneConfig) -> dict[str, np.ndarray]:
    """Ray Data task: rows and paths -> preprocessed images (n, 3, H, W) float32, an error text per row ('' if fine)."""
    from pathlib import Path

    images = _DatasetImages(tuple(Path(str(p)) for p in batch["path"]), config)  # the local engine's decode
    decoded = [images[position] for position in range(len(images))]
    return {
        "row": batch["row"].astype(np.int64),
        "image": np.stack([tensor.numpy() for tensor, _, _ in decoded]),
        "error": np.asarray([error for _, _, error in decoded], dtype=object),
    }


class _ModelActor:
    """Ray Data actor: one backbone, kept for the actor's life; images -> every variant's features."""

    def __init__(
        self,
        *,
        backbone: ResolvedBackbone,
        workspace_root: str,
        data_root: str,
        precision: str,
        device: str,
        variants: tuple[str, ...],
        onnx_path: str | None = None,
    ) -> None:
        from pathlib import Path

        workspace = Workspace(root=Path(workspace_root), data_root=Path(data_root))
        # onnx_path: the driver chose onnxruntime (CPU actors) and exported the checked graph into the shared
        # workspace; the actor runs that file, the local engine's CPU runtime, instead of a PyTorch model.
        self.session = session(onnx_path) if onnx_path else None
        # The driver's located record: the actor loads the very file the driver resolved (same weights tag).
        self.model = None if self.session is not None else backbone.build(workspace=workspace)
        self.device = torch.device(device)
        self.precision, self.variants = precision, variants
        # Every output batch carries every variant's column with its width, even a batch where no image decoded:
        # one forward on a blank image learns the widths.
        size = backbone.input_size
        self.dims = {
            name: array.shape[1]
            for name, array in self._forward(np.zeros((1, 3, size, size), np.float32), [""]).items()
        }

    def _forward(self, images: np.ndarray, errors: list[str]) -> dict[str, np.ndarray]:
        if self.session is not None:
            ok = np.asarray([not e for e in errors])
            return graph_features(self.session, np.ascontiguousarray(images[ok], dtype=np.float32), self.variants)
        rows = torch.arange(len(errors))
        loader = [(torch.from_numpy(np.ascontiguousarray(images)), rows, errors)]
        ((features, _, _),) = iter_feature_batches(
            self.model,
            loader,
            device=self.device,
            precision=self.precision,
            total=len(errors),
            variants=self.variants,
        )
        return features

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        errors = [str(e) for e in batch["error"]]
        ok = np.asarray([not e for e in errors])
        features = self._forward(batch["image"], errors) if ok.any() else {}
        out = {"row": batch["row"], "error": batch["error"]}
        for k, name in enumerate(self.variants):
            full = np.zeros((len(errors), self.dims[name]), np.float32)  # unreadable rows: dropped by the driver
            if features:
                full[ok] = features[name]
            out[f"features-{k}"] = full
        return out


@contextmanager
def _ordered(ray) -> Iterator[None]:
    """Ray Data delivers rows in input order inside the block (shards are written in row order)."""
    context = ray.data.DataContext.get_current()
    before = context.execution_options.preserve_order
    context.execution_options.preserve_order = True
    try:
        yield
    finally:
        context.execution_options.preserve_order = before


def _ray_precision(ray, precision: str, *, backbone: str, num_gpus: float) -> str:
    """``precision`` resolved for the actors' device (``backbone``: the resolved name, for the fp32-on-CPU list)."""
    """``precision`` resolved for the actors' device: asked of a GPU worker itself when they run on GPUs."""
    if num_gpus <= 0:
        return select_precision(torch.device("cpu"), precision, backbone=backbone)
    remote = ray.remote(num_gpus=num_gpus)(lambda: select_precision(torch.device("cuda"), precision, backbone=backbone))
    return ray.get(remote.remote())


def extract_features_ray(
    dataset: Dataset,
    backbone: ResolvedBackbone | str,
    *,
    workspace: Workspace,
    weights: str | None = None,
    precision: str = "auto",
    batch_size: int = 64,
    num_gpus_per_worker: float = 0.0,
    workers: int | None = None,
    address: str | None = None,
    progress: ProgressCallback | None = None,
    variant: str | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    runtime: str | None = None,
) -> FeatureSet:
    """``core.features.extract.extract_features`` on a Ray cluster: same cache, same result (within float rounding).

    Parameters
    ----------
    address : str, optional
        The cluster (``ray.init(address=...)``: ``"auto"``, ``"ray://host:10001"``); None joins the Ray
        already started in this process, or starts a local one.
    num_gpus_per_worker : float
        GPUs per model actor; 0 runs the model on CPUs.
    workers : int, optional
        Model actors; default the cluster's GPUs / ``num_gpus_per_worker``, or 1 on CPUs (the model
        uses every core of its node).
    runtime : str, optional
        For CPU actors, as ``extract_features``'s: the driver chooses (``choose_runtime``, measured on the driver's
        CPU) and, for onnxruntime, exports the graph into the workspace, which the actors load. GPU actors use
        PyTorch.
    Other parameters as ``extract_features``.
    """
    ray = _ray()
    check_positive(batch_size=batch_size, shard_size=shard_size)
    if num_gpus_per_worker < 0:
        raise FlowerProbeError(f"num_gpus_per_worker must be 0 or more, got {num_gpus_per_worker!r}.")
    backbone = resolve_backbone(backbone, weights=weights)
    variant = backbone.check_variant(variant)
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    chosen_precision = _ray_precision(ray, precision, backbone=backbone.name, num_gpus=num_gpus_per_worker)
    # Located once here: actors receive the record with its source and load the very file the driver resolved
    # (no second download, the same weights tag).
    backbone = backbone.located(workspace=workspace, progress=progress)
    runtime = check_runtime(default_runtime() if runtime is None else runtime)
    choice = None
    if num_gpus_per_worker <= 0 and runtime != "torch":
        choice = choose_runtime(
            backbone,
            workspace=workspace,
            device=torch.device("cpu"),
            precision=precision,
            runtime=runtime,
            model=lambda: backbone.build(workspace=workspace, progress=progress),
            progress=progress,
        )
        chosen_precision = choice.precision
    onnx_path = str(choice.graph.path) if choice is not None and choice.runtime == "onnxruntime" else None
    entry = CacheEntry.of(dataset, backbone, workspace=workspace, precision=chosen_precision, progress=progress)
    if workers is None:
        gpus = ray.cluster_resources().get("GPU", 0)
        workers = max(1, int(gpus // num_gpus_per_worker)) if num_gpus_per_worker > 0 else 1
    device = "cuda" if num_gpus_per_worker > 0 else "cpu"

    def fill(cache: ShardedCache, missing: list[int], progress: ProgressCallback | None) -> str:
        described = f"Ray ({workers} model actor{'s' if workers > 1 else ''} on {device})"
        if not missing:
            return cache.manifest.get("device", described)
        cache.manifest["runtime"] = "onnxruntime" if onnx_path else "torch"
        n = len(dataset.image_paths)
        items = [
            {"row": row, "path": str(dataset.image_paths[row])} for index in missing for row in cache.shard_rows(index)
        ]
        with _ordered(ray):
            pipeline = (
                ray.data.from_items(items)
                .map_batches(_decode, batch_size=DECODE_BATCH, num_cpus=1, fn_kwargs={"config": backbone.config})
                .map_batches(
                    _ModelActor,
                    batch_size=batch_size,
                    compute=ray.data.ActorPoolStrategy(size=workers),
                    num_gpus=num_gpus_per_worker or None,
                    fn_constructor_kwargs={
                        "backbone": backbone,
                        "workspace_root": str(workspace.root),
                        "data_root": str(workspace.data_root),
                        "precision": chosen_precision,
                        "device": device,
                        "variants": entry.variants,
                        "onnx_path": onnx_path,
                    },
                )
            )
            done = n - len(items)
            meter, writer = RateMeter(), ShardWriter(cache, dataset.image_paths)
            for batch in pipeline.iter_batches(batch_size=None, batch_format="numpy"):
                for start, stop in _shard_runs(batch["row"], cache.shard_size):
                    writer.add(*_actor_batch({key: value[start:stop] for key, value in batch.items()}, entry.variants))
                done += len(batch["row"])
                report(progress, "features", done, n, rate=meter.rate(done - (n - len(items))), message="Ray engine")
        return described

    return cached_extraction(entry, variant, fill=fill, shard_size=shard_size, progress=progress)


def _shard_runs(rows: np.ndarray, shard_size: int) -> list[tuple[int, int]]:
    """(start, stop) runs of consecutive ``rows`` (n,) that belong to one shard: the writer takes one at a time."""
    shards = rows // shard_size
    edges = [0, *(np.flatnonzero(np.diff(shards)) + 1).tolist(), len(rows)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def _actor_batch(part: dict[str, np.ndarray], variants: tuple[str, ...]) -> FeatureBatch:
    """The actors' columns (``row``, ``error``, ``features-<k>`` with blank rows where decoding failed) as the
    local engine's batch: ``({variant: (n_ok, dim)}, rows (n_ok,), [(row, reason)])``."""
    rows = part["row"].astype(np.int64)
    errors = [str(e) for e in part["error"]]
    ok = np.asarray([not e for e in errors])
    features = {name: part[f"features-{k}"][ok] for k, name in enumerate(variants)}
    return features, rows[ok], [(int(row), error) for row, error in zip(rows, errors, strict=True) if error]
