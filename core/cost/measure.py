"""What a backbone costs on this machine, measured once per (backbone, weights, precision, device, input size).

For each backbone, within about ``DEFAULT_BUDGET_S`` seconds:

- **parameters** and the **weights file**'s size (None for random weights: there is no file);
- **FLOPs per image**, counted by ``torch.utils.flop_counter.FlopCounterMode`` on one forward of one image
  (multiply-adds count 2; what the aten ops do, not a hand formula), and the **feature size** of that forward;
- **latency of one image**: median and 95th percentile over warm repeats of a batch of one;
- **images/s, model only**, at the extraction batch size (preprocessed tensors already in memory; the first
  batch warms up, the next is timed when the budget allows, otherwise the cold batch is kept and marked so);
- **images/s end to end**: extraction's own measured rate when this workspace has one for the backbone and
  device (``core.features.rates``), else decoding and preprocessing a batch of JPEGs plus the model's batch,
  one after the other in one process (extraction overlaps them with loader workers, so this is the slower bound);
- **peak memory of a forward**: on a GPU ``torch.cuda.max_memory_allocated``; on a CPU the process's resident
  memory (RSS, psutil, sampled every millisecond during the batch forwards), as the peak and as its rise over
  the RSS before the forward.

Every figure carries the machine's state when it was measured (CPU, its vector-instruction flags, threads,
load average before and after): on a machine that other work keeps busy the speeds are lower than idle, and
``busy_note`` says so beside them. The records are kept in the workspace (``COSTS_FILENAME``, atomic JSON), so
a backbone is measured once; ``remeasure`` measures again.
"""

from __future__ import annotations

import ctypes
import gc
import io
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import psutil
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from core.backbones.registry import build_backbone, get_config, make_transform, resolve_weights
from core.base.errors import FlowerProbeError
from core.base.fileio import atomic_write_bytes
from core.base.progress import ProgressCallback, report
from core.base.workspace import Workspace
from core.data.images import load_image
from core.features.extract import device_name, prepare_model, select_device, select_precision
from core.features.rates import rate_entries

COSTS_FILENAME = "backbone-costs.json"
DEFAULT_BATCH_SIZE = 64  # core.probing.experiment.ExperimentConfig.feature_batch_size: extraction's batch
DEFAULT_BUDGET_S = 30.0  # per backbone, building included
LATENCY_REPEATS = 20  # at most; at least MIN_LATENCY_REPEATS, within a sixth of the budget
MIN_LATENCY_REPEATS = 3
DECODE_SAMPLE = 16  # JPEGs decoded and preprocessed to time a batch's decoding (scaled to the batch)
# The CPU features that decide a forward's speed on a CPU (AVX-512 BF16 and AMX make bf16 fast).
CPU_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")
BUSY_LOAD_PER_CORE = 0.5  # a 1-minute load average above half the cores: other work competed for the CPU
_RSS_SAMPLE_S = 0.001


# ----------------------------------------------------------------------------------------------- machine


def cpu_model_and_flags() -> tuple[str, list[str]]:
    """The CPU's model name and which of ``CPU_FLAGS`` it has (from /proc/cpuinfo; empty elsewhere)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return model, [f for f in CPU_FLAGS if f in flags]


def load_average() -> list[float]:
    """The 1, 5 and 15-minute load averages (the bench records the same)."""
    return [round(value, 2) for value in os.getloadavg()]


def busy_note(load_before: list[float], cores: int) -> str | None:
    """A sentence when other work was running as the figures were measured, else None."""
    if load_before and load_before[0] > BUSY_LOAD_PER_CORE * cores:
        return (
            f"measured while other work ran (load average {load_before[0]:.1f} on {cores} cores): "
            f"speeds are lower than on an idle machine"
        )
    return None


# ----------------------------------------------------------------------------------------------- counting


def count_flops(model: torch.nn.Module, example: torch.Tensor) -> tuple[int, torch.Tensor]:
    """FLOPs per image of ``model(example)`` as ``FlopCounterMode`` counts them, and the output.

    Parameters
    ----------
    example : tensor of shape (batch, ...); the total is divided by ``batch``
    """
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        output = model(example)
    return int(counter.get_total_flops() // len(example)), output


def count_parameters(model: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


# ----------------------------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(model: torch.nn.Module, batch: torch.Tensor, device: torch.device) -> float:
    _sync(device)
    started = time.perf_counter()
    with torch.inference_mode():
        model(batch)
    _sync(device)
    return time.perf_counter() - started


def _release_freed_memory() -> None:
    """Hand memory freed earlier (a previous backbone's tensors) back to the OS, so an RSS rise is this forward's.

    glibc keeps freed heap memory in the process (RSS does not fall), and a forward reusing it would look free;
    ``malloc_trim(0)`` returns it. A no-op where there is no glibc.
    """
    gc.collect()
    with suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class _PeakRss:
    """The process's largest resident memory while the block runs, sampled by a thread every millisecond."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self.before = self.peak = self._process.memory_info().rss
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(_RSS_SAMPLE_S)

    @contextmanager
    def watch(self) -> Iterator[None]:
        thread = threading.Thread(target=self._sample, daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join()
            self.peak = max(self.peak, self._process.memory_info().rss)


def _example_jpeg(size: tuple[int, int] = (500, 375), *, seed: int = 0) -> bytes:
    """A photo-sized JPEG (Oxford 17's typical 500 x 375) of smooth noise: what decoding a dataset image costs."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize(size, Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------- records


@dataclass(frozen=True, kw_only=True)
class BackboneCost:
    """One backbone's cost on one device; see the module docstring for how each figure is measured."""

    backbone: str
    weights: str  # "pretrained", "random" or a checkpoint path, as asked
    weights_tag: str  # the weights' identity ("random" or "sha256:..."), as runs record it
    precision: str
    device: str  # core.features.extract.device_name, as runs record it
    input_size: int
    batch_size: int
    parameters: int
    flops_per_image: int
    feature_dim: int
    weights_file_bytes: int | None  # None: random weights, no file
    latency_ms_median: float
    latency_ms_p95: float
    latency_repeats: int
    images_per_s_model: float
    model_batch_warm: bool  # False: only one (cold) batch fit the budget
    images_per_s_end_to_end: float
    end_to_end_source: str  # "extraction" (this workspace's measured rate) or "decode+forward"
    end_to_end_note: str
    peak_memory_bytes: int  # peak RSS (CPU) or max_memory_allocated (GPU) during the batch forwards
    forward_memory_bytes: int  # the rise over the memory before the forward
    memory_kind: str  # "process RSS (psutil)" or "torch.cuda.max_memory_allocated"
    cpu: str
    cpu_flags: list[str]
    cores: int
    torch_threads: int
    load_before: list[float]
    load_after: list[float]
    busy: str | None  # busy_note, None when the machine was quiet enough
    runtime: str  # what ran the forward
    stage_seconds: dict  # wall time of each step: build_s, flops_s, latency_s, batches_s, decode_s
    seconds: float  # the measurement's own wall time
    measured_at: float  # unix time

    @property
    def key(self) -> str:
        return cost_key(
            backbone=self.backbone,
            weights_tag=self.weights_tag,
            precision=self.precision,
            device=self.device,
            input_size=self.input_size,
        )

    def to_dict(self) -> dict:
        return asdict(self)


def cost_key(*, backbone: str, weights_tag: str, precision: str, device: str, input_size: int) -> str:
    return f"{backbone}|{weights_tag}|{precision}|{device}|{input_size}"


def stored_costs(workspace: Workspace) -> dict[str, dict]:
    """Every cost this workspace measured, by ``cost_key``; ``{}`` when none."""
    try:
        data = json.loads((workspace.root / COSTS_FILENAME).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _store(workspace: Workspace, cost: BackboneCost) -> None:
    data = stored_costs(workspace)
    data[cost.key] = cost.to_dict()
    atomic_write_bytes(workspace.root / COSTS_FILENAME, json.dumps(data, indent=1, sort_keys=True).encode("utf-8"))


def cost_for_run(costs: dict[str, dict], run: dict) -> dict | None:
    """The stored cost of the backbone a run used (same backbone, weights tag, precision and device), or None."""
    for record in costs.values():
        if (
            record.get("backbone") == run.get("backbone")
            and record.get("weights_tag") == run.get("weights_tag")
            and record.get("precision") == run.get("precision")
            and record.get("device") == run.get("device")
        ):
            return record
    return None


# ----------------------------------------------------------------------------------------------- measuring


def _check_arguments(batch_size: int, budget_s: float) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise FlowerProbeError(f"batch_size must be a whole number >= 1, got {batch_size!r}.")
    if isinstance(budget_s, bool) or not isinstance(budget_s, (int, float)) or not budget_s > 0:
        raise FlowerProbeError(f"budget_s must be a positive number of seconds, got {budget_s!r}.")


def measure_cost(
    backbone: str,
    *,
    weights: str = "pretrained",
    workspace: Workspace,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    budget_s: float = DEFAULT_BUDGET_S,
    remeasure: bool = False,
    progress: ProgressCallback | None = None,
) -> tuple[BackboneCost, bool]:
    """The cost of ``backbone`` with ``weights`` on ``device`` at ``precision``: (cost, reused).

    ``reused`` is True when the workspace already held it (nothing was run). Precision and device are resolved
    as extraction resolves them ("auto": ``core.features.extract.select_precision``), so the figure matches the
    runs the backbone makes.

    Raises
    ------
    FlowerProbeError
        Unknown backbone, weights not on this machine (offline), a bad batch size or budget.
    """
    _check_arguments(batch_size, budget_s)
    config = get_config(backbone)  # an unknown name fails here, with the closest names
    torch_device = select_device(device)
    chosen_precision = select_precision(torch_device, precision, backbone=backbone)
    source = resolve_weights(backbone, weights=weights, workspace=workspace)  # offline, missing: a clear message
    key = cost_key(
        backbone=backbone,
        weights_tag=source.tag,
        precision=chosen_precision,
        device=device_name(torch_device),
        input_size=config.input_size,
    )
    if not remeasure and (stored := stored_costs(workspace).get(key)):
        try:
            return BackboneCost(**stored), True
        except TypeError:
            pass  # written by an older version with other fields: measure again
    cost = _measure(
        backbone,
        weights=weights,
        weights_tag=source.tag,
        weights_path=source.path,
        workspace=workspace,
        device=torch_device,
        precision=chosen_precision,
        batch_size=batch_size,
        budget_s=float(budget_s),
        progress=progress,
    )
    _store(workspace, cost)
    return cost, False


def _measure(
    backbone: str,
    *,
    weights: str,
    weights_tag: str,
    weights_path,
    workspace: Workspace,
    device: torch.device,
    precision: str,
    batch_size: int,
    budget_s: float,
    progress: ProgressCallback | None,
) -> BackboneCost:
    started = time.perf_counter()
    deadline = started + budget_s
    cores = os.cpu_count() or 1
    load_before = load_average()
    config = get_config(backbone)
    steps = 5
    report(progress, "cost", 0, steps, message=f"{backbone}: building")
    model, _ = build_backbone(backbone, weights=weights, workspace=workspace)
    stages = {"build_s": time.perf_counter() - started}
    parameters = count_parameters(model)
    model = prepare_model(model, device=device, precision=precision, in_place=True)
    dtype = next(model.parameters()).dtype
    layout = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    size = config.input_size

    def images(n: int) -> torch.Tensor:
        return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0)).to(
            device, dtype=dtype, memory_format=layout
        )

    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
        if device.type != "cpu" and precision in ("bf16", "fp16")
        else torch.autocast(device_type=device.type, enabled=False)
    )
    with autocast:
        # FLOPs, feature size, and the first (warm-up) forward of a single image.
        report(progress, "cost", 1, steps, message=f"{backbone}: counting FLOPs")
        one = images(1)
        flops, output = count_flops(model, one)
        feature_dim = int(output.reshape(1, -1).shape[1])

        report(progress, "cost", 2, steps, message=f"{backbone}: latency of one image")
        stages["flops_s"] = time.perf_counter() - started - stages["build_s"]
        latencies = []
        latency_deadline = time.perf_counter() + budget_s / 6
        while len(latencies) < LATENCY_REPEATS and (
            len(latencies) < MIN_LATENCY_REPEATS or time.perf_counter() < latency_deadline
        ):
            latencies.append(_timed(model, one, device))

        stages["latency_s"] = sum(latencies)
        report(progress, "cost", 3, steps, message=f"{backbone}: {batch_size} images a batch")
        batch = images(batch_size)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            memory_before = torch.cuda.memory_allocated(device)
            cold = _timed(model, batch, device)
            warm = _timed(model, batch, device) if time.perf_counter() + cold < deadline - 2 else None
            peak = torch.cuda.max_memory_allocated(device)
            memory_kind = "torch.cuda.max_memory_allocated"
        else:
            _release_freed_memory()
            rss = _PeakRss()
            memory_before = rss.before
            with rss.watch():
                cold = _timed(model, batch, device)
                # A warm batch when it fits: the end-to-end step below needs about a batch's decode time more.
                warm = _timed(model, batch, device) if time.perf_counter() + cold < deadline - 2 else None
            peak = rss.peak
            memory_kind = "process RSS (psutil, sampled every 1 ms)"
    batch_seconds = warm if warm is not None else cold
    stages["batches_s"] = cold + (warm or 0.0)
    del batch

    report(progress, "cost", 4, steps, message=f"{backbone}: end to end")
    device_label = device_name(device)
    extraction = rate_entries(workspace).get(backbone, {}).get(device_label)
    if extraction and extraction.get("images_per_s"):
        end_to_end = float(extraction["images_per_s"])
        source_kind = "extraction"
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(extraction.get("measured_at", 0)))
        end_to_end_note = f"this workspace's extraction of a dataset with {backbone} on this device ({when})"
    else:
        jpeg, transform = _example_jpeg(), make_transform(config)
        decode_started = time.perf_counter()
        for _ in range(min(DECODE_SAMPLE, batch_size)):
            transform(load_image(jpeg, draft_size=config.resize))
        per_image = (time.perf_counter() - decode_started) / min(DECODE_SAMPLE, batch_size)
        stages["decode_s"] = per_image * min(DECODE_SAMPLE, batch_size)
        end_to_end = batch_size / (per_image * batch_size + batch_seconds)
        source_kind = "decode+forward"
        end_to_end_note = (
            f"decoding and preprocessing 500x375 JPEGs ({per_image * 1000:.0f} ms each, timed on "
            f"{min(DECODE_SAMPLE, batch_size)}) then the model's batch, in sequence in one process; an extraction "
            f"overlaps them with loader workers"
        )
    report(progress, "cost", steps, steps, message=f"{backbone}: done")
    cpu, cpu_flags = cpu_model_and_flags()
    return BackboneCost(
        backbone=backbone,
        weights=str(weights),
        weights_tag=weights_tag,
        precision=precision,
        device=device_label,
        input_size=size,
        batch_size=batch_size,
        parameters=parameters,
        flops_per_image=flops,
        feature_dim=feature_dim,
        weights_file_bytes=weights_path.stat().st_size if weights_path is not None else None,
        latency_ms_median=statistics.median(latencies) * 1000,
        latency_ms_p95=float(np.percentile(latencies, 95)) * 1000,
        latency_repeats=len(latencies),
        images_per_s_model=batch_size / batch_seconds,
        model_batch_warm=warm is not None,
        images_per_s_end_to_end=end_to_end,
        end_to_end_source=source_kind,
        end_to_end_note=end_to_end_note,
        peak_memory_bytes=int(peak),
        forward_memory_bytes=int(max(0, peak - memory_before)),
        memory_kind=memory_kind,
        cpu=cpu,
        cpu_flags=cpu_flags,
        cores=os.cpu_count() or 1,
        torch_threads=torch.get_num_threads(),
        load_before=load_before,
        load_after=load_average(),
        busy=busy_note(load_before, cores),
        runtime=f"PyTorch {torch.__version__} (eager)",
        stage_seconds={k: round(v, 3) for k, v in stages.items()},
        seconds=time.perf_counter() - started,
        measured_at=time.time(),
    )


def measure_costs(
    specs: list[tuple[str, str]] | list[tuple[str, str, str]],
    *,
    workspace: Workspace,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    remeasure: bool = False,
    progress: ProgressCallback | None = None,
) -> list[tuple[str, str, BackboneCost | None, bool, str | None]]:
    """``measure_cost`` for each (backbone, weights) or (backbone, weights, precision) (that precision instead of
    ``precision``: the Compare page measures each backbone at its runs' precision); one that cannot be built here
    does not stop the others.

    Returns
    -------
    list of (backbone, weights, cost or None, reused, error message or None), in order.
    """
    results = []
    for backbone, weights, *own_precision in specs:
        try:
            cost, reused = measure_cost(
                backbone,
                weights=weights,
                workspace=workspace,
                device=device,
                precision=own_precision[0] if own_precision else precision,
                batch_size=batch_size,
                remeasure=remeasure,
                progress=progress,
            )
        except FlowerProbeError as exc:
            results.append((backbone, weights, None, False, str(exc)))
            continue
        results.append((backbone, weights, cost, reused, None))
    return results


# ----------------------------------------------------------------------------------------------- text


def _size(n_bytes: float | None) -> str:
    if n_bytes is None:
        return "-"
    return f"{n_bytes / 2**20:,.0f} MiB" if n_bytes >= 2**20 else f"{n_bytes / 2**10:,.0f} KiB"


def cost_table(costs: list[BackboneCost]) -> str:
    """One line per backbone: the figures ``python -m core cost`` prints."""
    header = (
        f"{'backbone':<30} {'precision':>9} {'params':>8} {'GFLOPs/img':>10} {'feature':>7} {'weights file':>12} "
        f"{'latency ms (median / p95)':>25} {'img/s model':>11} {'img/s e2e':>9} {'forward mem':>11} {'load':>5}"
    )
    lines = [header]
    for c in costs:
        label = c.backbone + ("" if c.weights == "pretrained" else f"@{c.weights}")
        latency = f"{c.latency_ms_median:.1f} / {c.latency_ms_p95:.1f}"
        lines.append(
            f"{label:<30} {c.precision:>9} {c.parameters / 1e6:>7.1f}M {c.flops_per_image / 1e9:>10.2f} "
            f"{c.feature_dim:>7} {_size(c.weights_file_bytes):>12} {latency:>25} "
            f"{c.images_per_s_model:>10.1f}{'' if c.model_batch_warm else '*'} {c.images_per_s_end_to_end:>9.1f} "
            f"{_size(c.forward_memory_bytes):>11} {c.load_before[0]:>5.1f}"
        )
    return "\n".join(lines)
