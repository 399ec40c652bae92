"""Which runtime computes features on a CPU: PyTorch (``prepare_model``'s path) or onnxruntime, chosen by measuring.

On a CPU the winner depends on the model and the CPU (issue 22, measured on a 2-core AVX-512-BF16 EPYC:
EfficientNet-Lite0 4.3x faster in onnxruntime fp32 than in the engine's torch fp32 path; DINOv2 ViT-S/14 1.8x
faster in torch bf16 than in onnxruntime fp32), so ``runtime="auto"`` runs a short micro-benchmark the first time a
(backbone, input size, CPU) meets it, whatever its weights, and keeps the verdict, with both figures and the CPU's
flags, in the workspace's measured-rates file (``RATES_FILENAME``, the file Home's estimates read).
GPUs stay on PyTorch.

onnxruntime only ever computes fp32, and its graph is only used after its features matched PyTorch fp32's within
1e-4 absolute and cosine 0.99999 (``core.onnx.backbone``), so an fp32 feature cache is shared by both runtimes: a
cache made by one is read by the other, decided once per graph by that check rather than per cache entry. A bf16
cache is never served to onnxruntime or the reverse: precision is part of the cache key.

Also here: the thread-pool image loader both runtimes' CPU extraction can use (Pillow's decode and resize release
the GIL, so decoding the next batch overlaps the forward of this one).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from core.base.errors import FlowerProbeError
from core.base.fileio import atomic_write_bytes
from core.base.progress import ProgressCallback, RateMeter, report
from core.base.workspace import Workspace
from core.onnx.backbone import BackboneGraph, graph_features

RUNTIMES = ("auto", "torch", "onnxruntime")
# The runtime used when a caller passes none (the engine's default): "auto" unless this environment variable says
# otherwise (the test suite sets "torch", so tests that do not study runtimes export no graphs).
RUNTIME_ENV = "FLOWER_PROBE_RUNTIME"
RUNTIME_HELP = (
    "CPU feature runtime: auto measures PyTorch vs onnxruntime once per backbone and CPU and keeps the faster "
    "(default; FLOWER_PROBE_RUNTIME overrides it), torch, or onnxruntime (fp32; falls back to torch with the reason)"
)
# The workspace's file of measured images/s (core.probing.experiment reads and writes its extraction rates there).
RATES_FILENAME = "measured-rates.json"
RUNTIME_KEY_PREFIX = "runtime:"  # the rates file's entries of the runtime choice: "runtime:<backbone>"
# CPU flags that decide which runtime is faster (bf16 and int8 dot products, vector width); recorded with a choice.
RELEVANT_CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile", "neon", "asimd")
BENCH_BATCH = 8  # images per timed forward of the micro-benchmark: ~0.1-0.4 s per forward for the built-ins
BENCH_ROUNDS = 3  # interleaved rounds after one warm-up each; the best of each runtime counts (a shared CPU is noisy)


def check_runtime(runtime: object) -> str:
    if runtime not in RUNTIMES:
        raise FlowerProbeError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}.")
    return str(runtime)


def default_runtime() -> str:
    """``FLOWER_PROBE_RUNTIME`` when set (checked), else ``"auto"``."""
    value = os.environ.get(RUNTIME_ENV, "").strip()
    if value and value not in RUNTIMES:
        raise FlowerProbeError(f"{RUNTIME_ENV} must be one of {', '.join(RUNTIMES)}, got {value!r}.")
    return value or "auto"


def cpu_flags() -> tuple[str, ...]:
    """The ``RELEVANT_CPU_FLAGS`` this CPU has (from /proc/cpuinfo; empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    words = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            words.update(line.split(":", 1)[1].split())
            break
    return tuple(flag for flag in RELEVANT_CPU_FLAGS if flag in words)


@dataclass(frozen=True)
class RuntimeChoice:
    """What computes a backbone's features, and why.

    reason : one line: the measurement behind an automatic choice, or why onnxruntime was not used
    figures : the micro-benchmark's record (images/s of each runtime, CPU flags), when one was made or found
    """

    runtime: str  # "torch" or "onnxruntime"
    precision: str
    reason: str
    graph: BackboneGraph | None = None
    figures: dict = field(default_factory=dict)


def choice_key(*, input_size: int, torch_precision: str, threads: int) -> str:
    """The rates file's key of one measured choice: input size, torch's precision, threads, CPU flags.

    Not the weights: the speed is the architecture's, so one measurement serves every weights of a backbone (the
    offline demo's pretrained and random EfficientNet-Lite0 share one).
    """
    flags = "+".join(cpu_flags()) or "unknown-cpu"
    return f"{input_size}px|torch-{torch_precision}|{threads}threads|{flags}"


def _read_rates(workspace: Workspace) -> dict:
    try:
        return json.loads((workspace.root / RATES_FILENAME).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}


def recorded_choice(workspace: Workspace, backbone: str, key: str) -> dict | None:
    """The micro-benchmark kept for ``backbone`` under ``key`` (``choice_key``), or None."""
    entry = _read_rates(workspace).get(RUNTIME_KEY_PREFIX + backbone, {}).get(key)
    return entry if isinstance(entry, dict) and entry.get("runtime") in RUNTIMES[1:] else None


def record_choice(workspace: Workspace, backbone: str, key: str, figures: dict) -> None:
    """Keep ``figures`` (``images_per_s``: the winner's rate) in the rates file; a read-only workspace is skipped."""
    data = _read_rates(workspace)
    data.setdefault(RUNTIME_KEY_PREFIX + backbone, {})[key] = figures
    with contextlib.suppress(FlowerProbeError):
        atomic_write_bytes(workspace.root / RATES_FILENAME, json.dumps(data, indent=1, sort_keys=True).encode("utf-8"))


def measure_runtimes(
    torch_forward: Callable[[torch.Tensor], object],
    graph_session,
    graph: BackboneGraph,
    *,
    batch: int = BENCH_BATCH,
    rounds: int = BENCH_ROUNDS,
) -> tuple[float, float]:
    """(torch images/s, onnxruntime images/s) on a seeded batch of ``batch`` inputs, best of ``rounds`` each.

    ``torch_forward`` runs the engine's PyTorch path on preprocessed images (N, 3, S, S) (``prepare_model``'s model,
    its dtype and autocast); the rounds alternate, so a burst of load on a shared machine hits both.
    """
    images = torch.randn(batch, 3, graph.input_size, graph.input_size, generator=torch.Generator().manual_seed(0))
    array = images.numpy()
    best = {"torch": float("inf"), "onnxruntime": float("inf")}
    runs = {
        "torch": lambda: torch_forward(images),
        "onnxruntime": lambda: graph_features(graph_session, array, graph.variants),
    }
    for name in runs:  # warm-up: first-call allocations and (onnxruntime) kernel selection
        runs[name]()
    for _ in range(rounds):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - started)
    return batch / best["torch"], batch / best["onnxruntime"]


# ----------------------------------------------------------------------------------------------- loading


def threaded_batches(
    load: Callable[[int], tuple[torch.Tensor, int, str]],
    batches: Sequence[Sequence[int]],
    *,
    image_shape: tuple[int, ...],
    workers: int | None = None,
    ahead: int = 2,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
    """Batches ``(images (n, *image_shape), rows (n,), errors)`` decoded by a thread pool, ``ahead`` batches in advance.

    ``load(row)`` is ``core.features.extract``'s per-image decode + preprocessing (``(tensor, row, error)``).
    Threads, not processes: Pillow's JPEG decode and resize release the GIL, so they run beside the forward
    (onnxruntime's and PyTorch's kernels release it too) with no pickling and no worker start-up. Each thread also
    copies its image into the batch's tensor, so the consuming thread does not stack 64 images between forwards
    (under cProfile the stacking took ~10 % of its time; end to end the gain was within the machine's noise).
    """
    workers = workers or max(1, min(4, os.cpu_count() or 1))

    def load_into(images: torch.Tensor, slot: int, row: int) -> tuple[int, str]:
        tensor, row, error = load(row)
        images[slot].copy_(tensor)
        return row, error

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending = []
        queue = iter(batches)

        def submit() -> None:
            rows = next(queue, None)
            if rows is not None:
                images = torch.empty((len(rows), *image_shape), dtype=torch.float32)
                pending.append(
                    (images, [pool.submit(load_into, images, slot, int(row)) for slot, row in enumerate(rows)])
                )

        for _ in range(ahead):
            submit()
        while pending:
            images, futures = pending.pop(0)
            items = [future.result() for future in futures]
            submit()
            yield images, torch.tensor([item[0] for item in items], dtype=torch.long), [item[1] for item in items]


def iter_onnx_batches(
    graph_session,
    graph: BackboneGraph,
    loader: Iterable,
    *,
    total: int,
    variants: Sequence[str],
    progress: ProgressCallback | None = None,
    done: int = 0,
) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray, list[tuple[int, str]]]]:
    """``core.features.extract.iter_feature_batches`` for onnxruntime: the same batches in, the same tuples out."""
    meter, start_done = RateMeter(), done
    for images, batch_rows, errors in loader:
        ok = torch.tensor([not e for e in errors], dtype=torch.bool)
        skipped = [(int(r), e) for r, e in zip(batch_rows, errors, strict=True) if e]
        features: dict[str, np.ndarray] = {}
        if ok.any():
            kept = images if ok.all() else images[ok]  # masking copies the whole batch: only when an image failed
            out = graph_features(graph_session, kept.numpy(), graph.variants)
            features = {name: out[name] for name in variants}
        done += len(batch_rows)
        rate = meter.rate(done - start_done)
        report(progress, "features", done, total, rate=rate, message=f"{rate:.1f} images/s (onnxruntime)")
        yield features, batch_rows[ok].numpy().astype(np.int64), skipped


def prefers_onnxruntime(workspace: Workspace, backbone: str, *, input_size: int) -> bool:
    """Whether this workspace measured onnxruntime faster for ``backbone`` at this input size on this CPU and thread
    count (a ``choose_runtime`` record, whatever PyTorch precision it was measured against)."""
    entries = _read_rates(workspace).get(RUNTIME_KEY_PREFIX + backbone, {})
    threads, flags = f"|{torch.get_num_threads()}threads|", "|" + ("+".join(cpu_flags()) or "unknown-cpu")
    return any(
        key.startswith(f"{input_size}px|")
        and threads in key
        and key.endswith(flags)
        and isinstance(entry, dict)
        and entry.get("runtime") == "onnxruntime"
        for key, entry in entries.items()
    )
