"""Patch tokens and per-block features in the feature cache: extracted on request, read shard-wise, never whole.

Two more kinds of cache entry beside ``core.features.extract``'s pooled variants, in the same sharded,
resumable format (``ShardedCache``: atomic shards, a manifest, a lock, joined into one ``.npy`` at the end):

- **tokens** (``extract_tokens``; ``python -m core extract --tokens``): every image's final-block patch tokens
  in fp16, ``(N, tokens, dim)`` (``core.backbones.tokens.token_layout``: class and register tokens left out and
  recorded as such in the manifest; CNNs: the last feature map's positions). The size, N x tokens x dim x 2
  bytes, is said before extracting, and the extraction is refused with the figure when the disk lacks it.
  Shards are sized in bytes (``TOKEN_SHARD_BYTES``), so memory holds one shard whatever the model; the joined
  file is always opened memory-mapped (``TokenCache``), and probes read it a batch of rows at a time.
- **layers** (``extract_layers``): one pooled feature per block (``core.backbones.tokens.layer_forward``), every
  block from one forward pass, for layer-wise probing.
"""

from __future__ import annotations

import dataclasses
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from core.backbones.resolved import ResolvedBackbone, resolve_backbone
from core.backbones.tokens import TokenLayout, layer_forward, layer_names, token_hook, token_layout
from core.backbones.variants import TOKENS
from core.base.errors import FlowerProbeError
from core.base.progress import ProgressCallback, report
from core.base.workspace import Workspace
from core.data.datasets import Dataset
from core.features.extract import (
    DEFAULT_SHARD_SIZE,
    CacheEntry,
    FeatureSet,
    ShardedCache,
    cache_key,
    cached_extraction,
    check_positive,
    float32_arrays,
    local_shard_filler,
    pooled_forward,
    select_device,
    select_precision,
)

# Bytes of tokens per shard: one shard is held in memory while it is filled (ViT-S/14: 682 images a shard).
TOKEN_SHARD_BYTES = 128 << 20
# Forward passes run by this module, counted so tests can show a cached entry is reused with none.
FORWARDS = {"tokens": 0, "layers": 0}


@dataclass(frozen=True)
class TokenPart:
    """Images of a memory-mapped token cache: ``tokens`` (N_all, T, dim) and ``positions`` (n,) into it.

    Indexing with positions into the part gives a part again (the suite draws few-shot subsets so); nothing is
    read until ``batch``.
    """

    tokens: np.ndarray
    positions: np.ndarray

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index) -> TokenPart:
        return TokenPart(self.tokens, np.asarray(self.positions)[index])

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.positions), *self.tokens.shape[1:])

    def batch(self, index: np.ndarray) -> torch.Tensor:
        """Tokens of the part's images ``index`` as float32 (len(index), T, dim), read in file order."""
        wanted = np.asarray(self.positions)[index]
        order = np.argsort(wanted, kind="stable")
        block = np.asarray(self.tokens[wanted[order]], dtype=np.float32)
        out = np.empty_like(block)
        out[order] = block
        return torch.from_numpy(out)


@dataclass(frozen=True)
class TokenFeatureSet:
    """A token entry as the probe suite reads a feature set: ``select`` gives a ``TokenPart`` and the rows kept.

    Carries what a run records of its features (weights tag, precision, device, extraction time, skipped images).
    """

    cache: TokenCache
    from_cache: bool = True
    variant: str = TOKENS

    def __getattr__(self, name: str):
        if name in ("weights_tag", "precision", "device", "seconds"):
            return self.cache.manifest[name]
        if name == "skipped":
            return tuple((str(p), str(r)) for p, r in self.cache.manifest["skipped"])
        if name == "cache_path":
            return self.cache.folder
        raise AttributeError(name)

    def select(self, dataset_rows: np.ndarray) -> tuple[TokenPart, np.ndarray]:
        positions, kept = self.cache.positions(dataset_rows)
        return TokenPart(self.cache.tokens, positions), kept


def _gb(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.2f} GB" if n_bytes >= 1e8 else f"{n_bytes / 1e6:.1f} MB"


def size_text(layout: TokenLayout, images: int) -> str:
    """'1360 x 256 x 384 x 2 bytes = 267.4 MB'."""
    return f"{images} x {layout.tokens} x {layout.dim} x 2 bytes = {_gb(layout.bytes_for(images))}"


@dataclass(frozen=True)
class TokenCache:
    """A complete token entry, memory-mapped: ``tokens`` (N_ok, T, dim) fp16 for the dataset ``rows`` (N_ok,)."""

    tokens: np.ndarray
    rows: np.ndarray
    folder: Path
    layout: TokenLayout
    manifest: dict
    from_cache: bool = True

    def positions(self, dataset_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions into ``tokens`` of the given dataset rows that decoded, and those rows."""
        position = np.full(int(max(self.rows.max(initial=-1), dataset_rows.max(initial=-1))) + 1, -1, np.int64)
        position[self.rows] = np.arange(len(self.rows))
        kept = dataset_rows[position[dataset_rows] >= 0]
        return position[kept], kept


@dataclass(frozen=True)
class _TokenEntry(CacheEntry):
    """A cache entry of tokens or layers: ``read`` memory-maps instead of loading; the manifest records ``layout``."""

    layout: dict | None = None  # TokenLayout as a dict (what the tokens are, what was left out); None for layers
    memory_map: ClassVar[bool] = True  # probes read tokens a batch of rows at a time, never the whole array

    def open(self, *, shard_size: int) -> ShardedCache:
        cache = super().open(shard_size=shard_size)
        if self.layout is not None:
            cache.identity = {**cache.identity, "layout": self.layout}
            cache.manifest.setdefault("layout", self.layout)
        return cache


def _entry(
    kind: str, dataset: Dataset, backbone: ResolvedBackbone, *, workspace: Workspace, precision: str
) -> _TokenEntry:
    """The entry of ``kind`` ("tokens" or "layers") of a located ``backbone``: its own key, beside the features'.

    A layers entry holds every block's pooled feature. A tokens entry holds the pooled variants beside the tokens:
    they come from the same forward pass, so a backbone whose pooled features are not cached yet gets them from this
    pass too (``_share_pooled``).
    """
    if kind == TOKENS:
        variants, layout = (TOKENS, *backbone.variants), dataclasses.asdict(token_layout(backbone.name))
    else:
        variants, layout = layer_names(backbone.name), None
    tag = backbone.weights_tag
    key = cache_key(dataset.key, dataset.fingerprint, backbone, tag, precision, [kind, *variants])
    stem = f"{dataset.key.replace('/', '_').replace(':', '-')}-{backbone.name}".replace(":", "-")
    return _TokenEntry(
        dataset=dataset,
        backbone=backbone.name,
        weights_tag=tag,
        precision=precision,
        variants=variants,
        folder=workspace.features_dir / f"{stem}-{kind}-{key}",
        legacy_path=workspace.features_dir / f"{stem}-{kind}-{key}.none",  # never written: no single-file form
        resolved=backbone,
        layout=layout,
    )


def token_entry(
    dataset: Dataset,
    backbone: str | ResolvedBackbone,
    *,
    workspace: Workspace,
    precision: str = "auto",
    device: str = "auto",
) -> tuple[_TokenEntry, TokenLayout]:
    """Where ``backbone``'s tokens of ``dataset`` are (or would be) cached, and their layout.

    ``backbone``: a resolved record, or a spec (``NAME[@weights]``) resolved here.
    """
    resolved = resolve_backbone(backbone).located(workspace=workspace)
    chosen = select_precision(select_device(device), precision, backbone=resolved.name)
    return _entry(TOKENS, dataset, resolved, workspace=workspace, precision=chosen), token_layout(resolved.name)


def open_tokens(entry: _TokenEntry, layout: TokenLayout) -> TokenCache | None:
    """The complete token entry memory-mapped, or None when it is not (completely) extracted."""
    cached = entry.read(TOKENS)
    if cached is None:
        return None
    manifest = ShardedCache.read_manifest(entry.folder)
    return TokenCache(cached.features, cached.rows, entry.folder, layout, manifest)


def check_disk(folder: Path, *, needed: int, what: str) -> None:
    """Refuse (FlowerProbeError naming ``tokens``) when the disk holding ``folder`` has less than ``needed`` free."""
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise FlowerProbeError(
            f"tokens need {what} on disk ({_gb(needed)} while the shards are joined), but {probe} has only "
            f"{_gb(free)} free; free space or extract fewer images."
        )


def extract_tokens(
    dataset: Dataset,
    backbone: str | ResolvedBackbone,
    *,
    workspace: Workspace,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 64,
    shard_bytes: int = TOKEN_SHARD_BYTES,
    progress: ProgressCallback | None = None,
) -> TokenCache:
    """``backbone``'s final patch tokens of every image of ``dataset`` (fp16), from the cache or extracted now.

    Says the size (N x tokens x dim x 2 bytes) through ``progress`` before extracting, and refuses with that
    figure when the disk lacks it (twice it: the shards and the joined file exist together for a moment).

    Returns
    -------
    TokenCache
        ``tokens`` of shape (n_ok, tokens, dim), fp16, memory-mapped; ``rows`` the dataset rows that decoded.
    """
    check_positive(batch_size=batch_size, shard_bytes=shard_bytes)
    dataset.compute_fingerprint(progress=progress)
    entry, layout = token_entry(dataset, backbone, workspace=workspace, precision=precision, device=device)
    hit = open_tokens(entry, layout)
    if hit is not None:
        report(
            progress,
            "features",
            1,
            1,
            message=f"tokens from cache ({size_text(layout, len(hit.rows))})",
            from_cache=True,
        )
        return hit
    n = len(dataset.image_paths)
    check_disk(entry.folder, needed=2 * layout.bytes_for(n), what=size_text(layout, n))
    report(
        progress,
        "features",
        0,
        n,
        message=f"extracting tokens: {size_text(layout, n)} ({', '.join(layout.excluded)} left out)",
    )
    # A whole number of batches per shard, so the batches are those of the pooled features' own extraction (rows
    # 0-63, 64-127, ...): the pooled variants shared from this pass are then computed on the very same batches.
    shard_size = max(batch_size, shard_bytes // max(1, layout.bytes_for(1)) // batch_size * batch_size)
    torch_device = select_device(device)

    pooled_variants = entry.variants[1:]

    @contextmanager
    def tokens_and_pooled(model):
        # One model(x) per batch: the variants' hooks and the token hook read the same call.
        with pooled_forward(model, pooled_variants) as pooled, token_hook(model) as last:

            def forward(images: torch.Tensor) -> dict[str, np.ndarray]:
                FORWARDS["tokens"] += 1
                arrays = pooled(images)
                return {TOKENS: last().to(torch.float16).cpu().numpy(), **arrays}

            yield forward

    fill = local_shard_filler(
        entry, workspace=workspace, device=torch_device, batch_size=batch_size, num_workers=0, forward=tokens_and_pooled
    )
    cached_extraction(entry, TOKENS, fill=fill, shard_size=shard_size, progress=progress)
    _share_pooled(entry, workspace=workspace)
    return dataclasses.replace(open_tokens(entry, layout), from_cache=False)


def _share_pooled(entry: _TokenEntry, *, workspace: Workspace) -> None:
    """Write the backbone's pooled-features entry from the token entry's pooled variants, when it has none yet.

    Same model, precision, batches and forward as ``core.features.extract`` runs, so the features are those an
    extraction of its own would cache; an entry already there, or one with shards of its own under way, is left.
    """
    features = CacheEntry.of(entry.dataset, entry.resolved, workspace=workspace, precision=entry.precision)
    manifest = ShardedCache.read_manifest(entry.folder)
    if (
        features.read(features.variants[0]) is not None
        or not manifest
        or not manifest.get("complete")
        or not manifest["files"]
        or tuple(features.variants) != tuple(entry.variants[1:])
    ):
        return
    with features.locked():
        cache = features.open(shard_size=DEFAULT_SHARD_SIZE)
        if cache.manifest["shards"] or features.read(features.variants[0]) is not None:
            return
        cache.manifest["runtime"] = "torch"  # the token pass runs PyTorch (the features engine may use onnxruntime)
        files = manifest["files"]
        rows = np.load(entry.folder / files["rows"], allow_pickle=False)
        arrays = {v: np.load(entry.folder / files[v], mmap_mode="r", allow_pickle=False) for v in features.variants}
        row_of = {str(path): row for row, path in enumerate(entry.dataset.image_paths)}
        skipped = [(path, reason) for path, reason in manifest["skipped"]]
        for index in range(cache.n_shards):
            span = cache.shard_rows(index)
            mask = (rows >= span.start) & (rows < span.stop)
            cache.write_shard(
                index,
                {v: np.asarray(a[mask], dtype=np.float32) for v, a in arrays.items()},
                rows[mask],
                [s for s in skipped if span.start <= row_of.get(s[0], -1) < span.stop],
                seconds=manifest["seconds"] * int(mask.sum()) / max(1, len(rows)),
            )
        cache.finish(device=manifest["device"])


def require_tokens(
    dataset: Dataset,
    backbone: str | ResolvedBackbone,
    *,
    workspace: Workspace,
    precision: str = "auto",
    device: str = "auto",
) -> TokenCache:
    """The cached tokens the ``attentive`` protocol needs, or a FlowerProbeError saying how to extract them."""
    entry, layout = token_entry(dataset, backbone, workspace=workspace, precision=precision, device=device)
    hit = open_tokens(entry, layout)
    if hit is None:
        resolved = entry.resolved
        raise FlowerProbeError(
            f"protocols: 'attentive' needs the patch tokens of {resolved.spec} on {dataset.name} in the cache, and "
            f"there are none yet; extract them first, once ({size_text(layout, len(dataset.image_paths))}): "
            f"python -m core extract --dataset {dataset.key} --backbone {resolved.name} --weights {resolved.weights} "
            f"--tokens{'' if precision == 'auto' else ' --precision ' + precision} (or tick 'Patch tokens' on the "
            "Train page)."
        )
    return hit


# ----------------------------------------------------------------------------------------------- layers


def extract_layers(
    dataset: Dataset,
    backbone: str | ResolvedBackbone,
    *,
    workspace: Workspace,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 64,
    progress: ProgressCallback | None = None,
) -> dict[str, FeatureSet]:
    """Pooled features of every layer of ``backbone`` (``layer_names``) from one forward pass per batch, cached.

    Returns ``{layer: FeatureSet}`` with features of shape (n_ok, layer dim), float32.
    """
    check_positive(batch_size=batch_size)
    resolved = resolve_backbone(backbone).located(workspace=workspace, progress=progress)
    torch_device = select_device(device)
    chosen = select_precision(torch_device, precision, backbone=resolved.name)
    dataset.compute_fingerprint(progress=progress)
    entry = _entry("layers", dataset, resolved, workspace=workspace, precision=chosen)
    names = entry.variants

    @contextmanager
    def every_layer(model):
        with layer_forward(model) as layers:

            def forward(images: torch.Tensor) -> dict[str, np.ndarray]:
                FORWARDS["layers"] += 1
                return float32_arrays(layers(images))

            yield forward

    fill = local_shard_filler(
        entry, workspace=workspace, device=torch_device, batch_size=batch_size, num_workers=0, forward=every_layer
    )
    first = cached_extraction(entry, names[0], fill=fill, shard_size=4096, progress=progress)
    sets = {names[0]: first}
    for name in names[1:]:
        sets[name] = dataclasses.replace(entry.read(name), from_cache=first.from_cache)
    return sets
