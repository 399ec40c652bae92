"""What every bench section shares: sizes, the bench workspace, timing, targets and the results table.

Pure helpers (``Target``, ``format_table``, ``cosine_stats``, ``matmul_gflops``, ``extrapolate_phase``,
``parse_sections``) carry the maths and are unit-tested in tests/bench/test_bench.py; the rest touches the
machine. The machine is often shared, so sections time competing variants back to back, several
rounds, and keep the best of each: the best is the closest to what the variant costs undisturbed.
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

SECTIONS = (
    "roofline",
    "extraction",
    "reference",
    "heads",
    "probes",
    "tsne",
    "maps",
    "pages",
    "browser",
    "demo",
    "scale",
    "cost",
    "agreement",
    "onnx",
    "attentive",
    "gpu",
)
# Sections run only when named with --only: "gpu" needs an NVIDIA GPU to mean anything (bench/gpu_check.sh runs it).
ON_REQUEST = ("gpu",)
OPERATORS = (">=", "<")
DEFAULT_WORKSPACE = Path("/tmp/flower-probe-bench")
# Marks a folder the bench created, so it only ever clears caches in a workspace of its own.
_MARKER = ".flower-probe-bench"


@dataclass(frozen=True)
class Sizes:
    """How much each section measures; ``quick`` shrinks everything to a smoke run of a few minutes."""

    matmul_n: int = 4096  # square matmul side: large enough for the BLAS kernels' peak, ~1 s a call on 2 cores
    matmul_repeats: int = 10  # best of 10 (~0.4 s each) rides out a shared machine's bursts
    images: int = 128  # images per extraction measurement: two engine batches of 64
    feature_batch: int = 64  # the engine's extraction batch
    rounds: int = 5  # interleaved rounds of the competing extraction variants (best and per-round ratios kept)
    images_per_class: int | None = None  # None: the full Synthetic Flowers (80 a class, 1,360 images)
    reference_batches: int = 3  # batches timed per phase of the reference protocol before extrapolating
    head_samples: int = 680  # the reference train split
    big_head_samples: int = 20_000  # a large folder dataset's worth of cached features
    tsne_points: tuple[int, ...] = (1_360, 20_000)
    head_repeats: int = 3

    @classmethod
    def gpu(cls) -> Sizes:
        """Inputs sized for a datacentre GPU: a matmul big enough for its tensor cores, batches that fill it."""
        return cls(matmul_n=16384, matmul_repeats=5, images=2048, feature_batch=256, rounds=3)

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            matmul_n=1024,
            matmul_repeats=2,
            images=16,
            feature_batch=8,
            rounds=1,
            images_per_class=8,
            reference_batches=2,
            big_head_samples=2_000,
            tsne_points=(1_360,),
            head_repeats=1,
        )


@dataclass
class Context:
    """State the sections share during one bench run."""

    sizes: Sizes
    workspace_root: Path
    quick: bool
    log: Callable[[str], None] = field(default=lambda message: print(message, file=sys.stderr, flush=True))
    peaks: dict[str, float] = field(default_factory=dict)  # dtype name -> best matmul GFLOP/s seen in this run
    _dataset: object = None

    @property
    def workspace(self):
        from core.base.workspace import Workspace

        return Workspace(root=self.workspace_root, data_root=self.workspace_root / "datasets")

    def dataset(self):
        """Synthetic Flowers in the bench workspace, generated on first use (not timed)."""
        if self._dataset is None:
            from core.data.datasets import load_synthetic, synthetic_folder
            from core.data.synthetic import generate_synthetic_flowers

            kwargs = {} if self.sizes.images_per_class is None else {"images_per_class": self.sizes.images_per_class}
            generate_synthetic_flowers(synthetic_folder(self.workspace), seed=0, **kwargs)
            self._dataset = load_synthetic(self.workspace)
        return self._dataset


def bench_workspace(root: Path, *, quick: bool) -> Path:
    """The bench's own workspace (``root/quick`` or ``root/full``), with runs, heads and features cleared.

    Raises
    ------
    ValueError
        ``root`` exists, is not empty and was not made by the bench: the bench never clears a user's workspace.
    """
    root = Path(root).expanduser().resolve()
    if root.exists() and any(root.iterdir()) and not (root / _MARKER).exists():
        raise ValueError(f"--workspace must be a new folder or one the bench made earlier; {root} holds other files.")
    root.mkdir(parents=True, exist_ok=True)
    (root / _MARKER).touch()
    path = root / ("quick" if quick else "full")
    for name in ("features", "heads", "thumbnails"):
        shutil.rmtree(path / name, ignore_errors=True)
    for name in ("runs.sqlite", "runs.sqlite-wal", "runs.sqlite-shm"):
        (path / name).unlink(missing_ok=True)
    path.mkdir(parents=True, exist_ok=True)
    return path


def parse_sections(text: str | None) -> tuple[str, ...]:
    """``"tsne,heads"`` -> the named sections in run order; None or "" -> all of them but ``ON_REQUEST``."""
    if not text:
        return tuple(name for name in SECTIONS if name not in ON_REQUEST)
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SECTIONS]
    if unknown or not names:
        raise ValueError(f"--only must list sections from {', '.join(SECTIONS)} separated by commas; got {text!r}.")
    return tuple(name for name in SECTIONS if name in names)


# ------------------------------------------------------------------------------------------------ timing


def seconds(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def interleaved(variants: dict[str, Callable[[], object]], *, rounds: int) -> dict[str, list[float]]:
    """Wall seconds of each variant per round, the variants run back to back within each round."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, function in variants.items():
            times[name].append(seconds(function))
    return times


def median_ratio(numerators: list[float], denominators: list[float]) -> float:
    """Median over rounds of ``numerators[i] / denominators[i]``.

    Two variants timed back to back in the same round share that moment's load, so their ratio is
    steadier than a ratio of two bests that may come from different, unequally loaded, rounds.
    """
    if len(numerators) != len(denominators) or not numerators:
        raise ValueError(
            "need equally many numerators and denominators, at least one; "
            f"got {len(numerators)} and {len(denominators)}."
        )
    return float(np.median(np.asarray(numerators, dtype=np.float64) / np.asarray(denominators, dtype=np.float64)))


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


_PROBE_ADDITIONS = 2_000_000


def cpu_probe_s() -> float:
    """Seconds for a fixed single-thread workload (2,000,000 additions in the interpreter), best of 3.

    Recorded with every section beside the load average: on this project's shared 2-core VM, at a load average of
    0.1, it took 0.06 s and 0.11 s a few seconds apart, whichever vCPU ran it, and a whole bench run under a slow
    spell read 1.5-2x slower everywhere (browser pages, demo, fingerprints, AppTest renders).
    """
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        total = 0
        for value in range(_PROBE_ADDITIONS):
            total += value
        best = min(best, time.perf_counter() - started)
    return round(best, 3)


def machine() -> dict:
    import torch

    from core.features.extract import cpu_supports_bf16, device_name, select_device

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    device = select_device("auto")
    return {
        "cpu": model,
        "cpu_count": os.cpu_count(),
        "cpu_bf16": cpu_supports_bf16(),
        "torch_threads": torch.get_num_threads(),
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


# ------------------------------------------------------------------------------------------------ maths


def matmul_gflops(n: int, elapsed: float) -> float:
    """GFLOP/s of one (n x n) @ (n x n) matmul that took ``elapsed`` seconds (2 n^3 flops)."""
    if n < 1 or not elapsed > 0:
        raise ValueError(f"n must be >= 1 and elapsed > 0; got n={n!r}, elapsed={elapsed!r}.")
    return 2.0 * n**3 / elapsed / 1e9


def cosine_stats(a: np.ndarray, b: np.ndarray, *, centre: bool = False) -> dict[str, float]:
    """Row-wise cosine similarity of two feature arrays of shape (n, dim): its min and mean.

    ``centre`` subtracts ``b``'s mean row from both first, so only the image-dependent part is compared:
    features that are nearly the same for every image (a random-weight ViT's) look alike under any
    precision, and only centring shows whether what tells images apart survived.
    """
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a64.shape != b64.shape or a64.ndim != 2 or len(a64) == 0:
        raise ValueError(
            f"a and b must be non-empty arrays of the same shape (n, dim); got {a64.shape} and {b64.shape}."
        )
    if centre:
        mean = b64.mean(axis=0)
        a64, b64 = a64 - mean, b64 - mean
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    cosine = np.einsum("nd,nd->n", a64, b64) / np.where(norms > 0, norms, 1.0)
    return {"min": float(cosine.min()), "mean": float(cosine.mean())}


def extrapolate_phase(
    *, n_images: int, first_batch: tuple[float, int], later_batches: list[tuple[float, int]]
) -> float:
    """Seconds one pass over ``n_images`` takes, from its first few batches, each ``(seconds, images)``.

    The first batch carries the DataLoader's start (workers, first decode) and counts once, as measured;
    every further image costs the per-image time of the fastest later batch. The fastest, not the mean:
    on a shared machine a burst of load during the few timed batches would otherwise be multiplied
    into the whole extrapolated pass, inflating the reference's cost and so the engine's speed-up.
    A pass measured whole is returned as measured.
    """
    first_s, first_images = first_batch
    measured = first_images + sum(images for _, images in later_batches)
    if n_images < 1 or first_images < 1 or measured > n_images:
        raise ValueError(
            f"need 1 <= first batch images <= measured images ({measured}) <= n_images ({n_images}); "
            f"got first batch {first_batch}."
        )
    if measured == n_images:
        return first_s + sum(s for s, _ in later_batches)
    if not later_batches:
        raise ValueError(
            f"a partly measured pass ({measured} of {n_images} images) needs at least one batch after the first."
        )
    per_image = min(s / images for s, images in later_batches)
    return first_s + (n_images - first_images) * per_image


# ------------------------------------------------------------------------------------------------ targets


@dataclass(frozen=True)
class Target:
    """One target of issue 6: ``figure`` compared with ``threshold`` by ``op`` (">=" or "<")."""

    name: str
    figure: float | None  # None: not measured (e.g. a page that does not exist yet)
    op: str
    threshold: float
    unit: str  # "%", "x", "s", "pp" (percentage points) or "" (a plain number)
    note: str = ""

    def __post_init__(self) -> None:
        if self.op not in OPERATORS:
            raise ValueError(f"op must be one of {OPERATORS}; got {self.op!r}.")

    @property
    def met(self) -> bool | None:
        if self.figure is None or math.isnan(self.figure):
            return None
        return self.figure >= self.threshold if self.op == ">=" else self.figure < self.threshold

    def to_dict(self) -> dict:
        return {**asdict(self), "met": self.met}


def format_value(value: float | None, unit: str) -> str:
    if value is None or math.isnan(value):
        return "-"
    if unit == "%":
        return f"{value:.1f} %"
    if unit == "x":
        return f"{value:.1f}x"
    if unit == "s":
        return f"{value:.3f} s" if value < 1 else f"{value:.2f} s"
    if unit == "pp":
        return f"{value:.2f} pp"
    return f"{value:.5f}" if abs(value) < 10 else f"{value:.1f}"


def format_table(targets: list[Target]) -> str:
    """The closing table: target, figure measured, goal, met (yes / NO / n/a)."""
    rows = [("Target", "Figure", "Goal", "Met")]
    for target in targets:
        met = {True: "yes", False: "NO", None: "n/a"}[target.met]
        figure = format_value(target.figure, target.unit) + (f" ({target.note})" if target.note else "")
        rows.append((target.name, figure, f"{target.op} {format_value(target.threshold, target.unit)}", met))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
