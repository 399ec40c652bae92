"""Section ``gpu``: feature extraction on an NVIDIA GPU, model-only and end to end from JPEG files on disk.

Run by ``bench/gpu_check.sh`` on the lent GPU machine (and by its ``--dry-run`` on a CPU, with tiny sizes, to
prove every step before device time is spent). For ViT-S/14 and ResNet-50 (random weights: speed depends on
the architecture, not the weights):

- model-only images/s in bf16, channels-last, over a ladder of batch sizes (the largest that fits the sizes'
  ``feature_batch`` first), with and without ``torch.compile``, and the share of the bf16 matmul peak the
  roofline section measured in the same run;
- end to end from a generated folder of JPEGs at Oxford 17's typical size (500 x 375): decode on the GPU
  (``torchvision.io.decode_jpeg(device="cuda")`` on a list of files, then resize, crop and normalise on the
  GPU) against the engine's own path (``core.features.extract.feature_loader``: Pillow decode in CPU
  workers, pinned memory, non-blocking copies).

The two goals of the GPU issue are targets here: ViT-S/14 end to end >= 10,000 images/s; model-only >= 40 % of
the measured bf16 peak. On a CPU (the dry run) the figures are recorded but the targets are not judged.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path

import numpy as np
import torch

from .common import Context, Target
from .extraction import gflops_per_image
from .roofline import measure_peak

BACKBONES = ("dinov2_vits14", "resnet50")
VIT = "dinov2_vits14"
JPEG_SIZE = (500, 375)  # Oxford 17's photos are about this size (shared/reference/oxford17.md)
# 20,000 files on a GPU machine (a folder dataset's worth, seconds of work at the goal rate); a handful on a CPU.
GPU_JPEGS = 20_000
CPU_JPEGS = 48
BATCH_LADDER = (64, 128, 256, 512)
GOAL_END_TO_END = 10_000.0  # images/s, ViT-S/14, decode included
GOAL_ROOFLINE = 0.40  # model-only share of the measured bf16 peak


def write_jpegs(folder: Path, count: int, *, size: tuple[int, int] = JPEG_SIZE, seed: int = 0) -> list[Path]:
    """``count`` JPEGs of ``size`` (width, height) with photo-like content (smooth gradients plus noise).

    Files already there are reused, so a second run of the section does not pay for them again. Written with
    a pool of threads (Pillow's encoder releases the GIL).
    """
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)

    def one(index: int) -> Path:
        path = folder / f"photo-{index:06d}.jpg"
        if not path.exists():
            rng = np.random.default_rng(seed + index)
            phase = rng.uniform(0, 2 * np.pi, size=3)
            scale = rng.uniform(20, 120, size=3)
            channels = [127 + 90 * np.sin(x / scale[c] + phase[c]) * np.cos(y / scale[(c + 1) % 3]) for c in range(3)]
            pixels = np.stack(channels, axis=-1) + rng.normal(0, 12, size=(height, width, 3))
            image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
            partial = path.with_suffix(".part")
            image.save(partial, format="JPEG", quality=90)
            partial.rename(path)
        return path

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return list(pool.map(one, range(count)))


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(function, *, images: int, device: torch.device, repeats: int) -> float:
    """Best images/s over ``repeats`` timed calls after one warm-up call."""
    function()
    _synchronise(device)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        _synchronise(device)
        best = min(best, time.perf_counter() - started)
    return images / best


def model_only(model: torch.nn.Module, *, device: torch.device, batch: int, input_size: int, repeats: int) -> float:
    """images/s of ``model`` (already prepared: bf16, channels-last) on one random batch kept on the device."""
    dtype = torch.bfloat16
    images = torch.randn(batch, 3, input_size, input_size, device=device).to(
        dtype=dtype, memory_format=torch.channels_last
    )

    @torch.inference_mode()
    def run():
        model(images)

    return _rate(run, images=batch, device=device, repeats=repeats)


def gpu_decode_rate(
    paths: list[Path], model: torch.nn.Module, *, device: torch.device, input_size: int, batch: int, repeats: int
) -> float:
    """End-to-end images/s with JPEG decode on ``device`` (nvJPEG on a GPU), resize/crop/normalise there too.

    Files are read by a thread pool (file reads release the GIL); ``decode_jpeg`` takes the whole batch at once.
    The resize matches the engine's transform in kind (shorter side to ``input_size / 0.875``, bilinear with
    antialiasing, centre crop): this is a speed measurement, its features are not compared with the engine's.
    """
    from concurrent.futures import ThreadPoolExecutor

    import torch.nn.functional as F
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    dtype = torch.bfloat16
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1) * 255
    resize_to = int(round(input_size / 0.875))
    pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2)

    @torch.inference_mode()
    def run():
        for start in range(0, len(paths), batch):
            data = list(pool.map(read_file, [str(p) for p in paths[start : start + batch]]))
            decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
            images = torch.stack(
                [
                    F.interpolate(
                        image.unsqueeze(0).float(),
                        size=(resize_to, resize_to * image.shape[2] // image.shape[1]),
                        mode="bilinear",
                        antialias=True,
                    )[0]
                    for image in decoded
                ]
            )
            top = (images.shape[2] - input_size) // 2
            left = (images.shape[3] - input_size) // 2
            images = images[:, :, top : top + input_size, left : left + input_size]
            images = ((images - mean) / std).to(dtype=dtype, memory_format=torch.channels_last)
            model(images)

    try:
        return _rate(run, images=len(paths), device=device, repeats=repeats)
    finally:
        pool.shutdown()


def engine_decode_rate(
    paths: list[Path], model: torch.nn.Module, backbone: str, *, device: torch.device, batch: int, workers: int
) -> float:
    """End-to-end images/s through the engine's own loader (Pillow in ``workers`` processes) and forward."""
    from core.features.extract import compute_features, feature_loader

    def run():
        loader = feature_loader(paths, backbone, device=device, batch_size=batch, num_workers=workers)
        compute_features(model, loader, device=device, precision="bf16", total=len(paths))

    return _rate(run, images=len(paths), device=device, repeats=1)


def measure(context: Context, backbone: str, paths: list[Path], device: torch.device) -> dict:
    from core.backbones.registry import build_backbone, get_config
    from core.features.extract import prepare_model

    input_size = get_config(backbone).input_size
    model, _ = build_backbone(backbone, weights="random", workspace=context.workspace)
    gflops = gflops_per_image(model, input_size)
    prepared = prepare_model(copy.deepcopy(model), device=device, precision="bf16")
    on_gpu = device.type == "cuda"
    ladder = [b for b in BATCH_LADDER if b <= max(context.sizes.feature_batch, BATCH_LADDER[0])] if on_gpu else [8]
    repeats = 10 if on_gpu else 2
    eager = {}
    for batch in ladder:
        try:
            eager[batch] = model_only(prepared, device=device, batch=batch, input_size=input_size, repeats=repeats)
        except torch.OutOfMemoryError:
            break
    best_batch = max(eager, key=eager.get)
    compiled_rate, compile_error = None, None
    try:
        # The default mode: max-autotune's GEMM search takes minutes a model, more than the one device call allows.
        compiled = torch.compile(prepared)
        compiled_rate = model_only(compiled, device=device, batch=best_batch, input_size=input_size, repeats=repeats)
    except Exception as exc:  # a compiler failure is a finding, not a crash of the whole report
        compile_error = f"{type(exc).__name__}: {str(exc)[:300]}"
    best_model_only = max([*eager.values(), compiled_rate or 0.0])
    peak = context.peaks.get("bf16") or measure_peak(context, "bf16")
    decode_batch = best_batch if on_gpu else 8
    gpu_decode = gpu_decode_rate(
        paths, prepared, device=device, input_size=input_size, batch=decode_batch, repeats=2 if on_gpu else 1
    )
    workers = min(16, os.cpu_count() or 2)
    engine = engine_decode_rate(paths, prepared, backbone, device=device, batch=decode_batch, workers=workers)
    result = {
        "input_size": input_size,
        "gflops_per_image": round(gflops, 3),
        "model_only_bf16_channels_last_images_per_s": {str(b): round(r, 1) for b, r in eager.items()},
        "best_batch": best_batch,
        "torch_compile_images_per_s": None if compiled_rate is None else round(compiled_rate, 1),
        "torch_compile_error": compile_error,
        "bf16_peak_gflops": round(peak, 1),
        "roofline_fraction": best_model_only * gflops / peak,
        "jpegs": len(paths),
        "jpeg_size": list(JPEG_SIZE),
        "end_to_end_decode_on_device_images_per_s": round(gpu_decode, 1),
        "end_to_end_engine_loader_images_per_s": round(engine, 1),
        "engine_loader_workers": workers,
    }
    context.log(
        f"  {backbone}: model-only best {best_model_only:.0f} img/s at batch {best_batch} "
        f"({result['roofline_fraction']:.0%} of bf16 peak), compile {result['torch_compile_images_per_s']}; "
        f"end to end: decode on {device.type} {gpu_decode:.0f} img/s, engine loader ({workers} workers) {engine:.0f}"
    )
    return result


def run(context: Context) -> tuple[dict, list[Target]]:
    from core.features.extract import select_device

    device = select_device("auto")
    count = GPU_JPEGS if device.type == "cuda" else CPU_JPEGS
    started = time.perf_counter()
    paths = write_jpegs(context.workspace_root / "jpegs", count)
    results: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "jpegs_written_s": round(time.perf_counter() - started, 1),
        "backbones": {},
    }
    for backbone in BACKBONES:
        results["backbones"][backbone] = measure(context, backbone, paths, device)
    if device.type != "cuda":
        return results, []  # a dry run proves the steps; CPU figures are not judged against GPU goals
    vit = results["backbones"][VIT]
    best_end_to_end = max(vit["end_to_end_decode_on_device_images_per_s"], vit["end_to_end_engine_loader_images_per_s"])
    return results, [
        Target("ViT-S/14 end to end from JPEG, images/s", best_end_to_end, ">=", GOAL_END_TO_END, "img/s"),
        Target("ViT-S/14 model-only share of bf16 peak", vit["roofline_fraction"], ">=", GOAL_ROOFLINE, "fraction"),
    ]
