"""Section "scale" (issue 13): extraction memory at 10k vs 100k images, local vs Ray speed, listing + fingerprints.

A generated folder dataset of tiny JPEGs (``generate_folder``, under ``/tmp``, never the repo) goes through
the real engine in child processes, each measured on its own (the child reports its own peak RSS, VmHWM):

- listing + fingerprint of the 100k folder, cold (a new workspace, the files evicted from the OS page cache: every
  file read from disk and hashed) and warm
  (a second process on the same workspace: the on-disk digest cache turns reads into ``stat``s);
- ``extract_features`` with a random-weight ``timm:resnet18`` at ``LOW_RES`` px on 10k and on 100k images:
  peak RSS (goal: within 10 % of each other) and images/s;
- the same backbone on ``RAY_IMAGES`` images with the local engine and with the Ray engine (a local Ray
  started with this machine's cores): images/s of each.

Low resolution: the backbone's input size is lowered (``LOW_RES``) in the child processes and, for Ray, in
every worker process (``worker_process_setup_hook``), so 100k images fit in minutes on 2 cores. Only the
sizes the bench chose change; decode, transform, model and cache are the engine's own.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .common import Context, Target, load_average

SCALE_ROOT = Path("/tmp/flower-probe-scale")
BACKBONE = "timm:resnet18"
LOW_RES = 16  # input px: resnet18 at 16 px costs 0.5 % of 224 px (100k images in minutes, not hours, on 2 cores)
LOW_RES_ENV = "FLOWER_PROBE_BENCH_LOW_RES"
CLASSES = 10
JPEG_SIDE = 40  # generated photo size: decodes in ~0.1 ms
RAY_IMAGES = 2_000
LISTING_IMAGES = 100_000  # the folder listed and fingerprinted
SIZES = (10_000, 100_000)  # extraction memory is compared between these
QUICK_SIZES = (1_000, 4_000)
# Override SIZES ("10000,30000"): a loaded 2-core machine decodes ~30 images/s, so 100k images take an hour.
SIZES_ENV = "FLOWER_PROBE_BENCH_SCALE_SIZES"


def generate_folder(folder: Path, n_images: int, *, classes: int = CLASSES, seed: int = 0) -> Path:
    """``classes`` subfolders of tiny, distinct JPEGs, ``n_images`` in all; kept when already complete.

    Each image is a random colour field (numpy) encoded by Pillow: distinct bytes, so fingerprints hash real
    content; about 20k images/s on one core.
    """
    import numpy as np
    from PIL import Image

    marker = folder / ".complete"
    if marker.is_file() and marker.read_text() == str(n_images):
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(seed)
    tiles = rng.integers(0, 256, size=(256, 4, 4, 3), dtype=np.uint8)  # upsampled: JPEG-friendly smooth fields
    for c in range(classes):
        (folder / f"class_{c:02d}").mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        tile = tiles[i % len(tiles)].copy()
        tile[i % 4, (i // 4) % 4] = (i % 251, (i // 251) % 251, (i // 63001) % 251)  # distinct in every image
        buffer = io.BytesIO()
        Image.fromarray(tile).resize((JPEG_SIDE, JPEG_SIDE), Image.BILINEAR).save(buffer, "JPEG", quality=80)
        (folder / f"class_{i % classes:02d}" / f"img_{i:06d}.jpg").write_bytes(buffer.getvalue())
    marker.write_text(str(n_images))
    return folder


def evict_from_page_cache(folder: Path) -> int:
    """Ask the kernel to drop ``folder``'s files from its page cache, so a "cold" fingerprint reads them from disk.

    Without it the files just generated (or read by the last run) sit in memory and "cold" only measures hashing.
    ``posix_fadvise(DONTNEED)`` needs no privileges; where the OS has none (macOS) nothing is evicted. Returns the
    number of files evicted.
    """
    if not hasattr(os, "posix_fadvise"):
        return 0
    count = 0
    for path in folder.rglob("*.jpg"):
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)
        count += 1
    return count


def low_res_hook() -> None:
    """Lower every backbone's input size to ``$FLOWER_PROBE_BENCH_LOW_RES`` px in this process (bench only)."""
    import dataclasses

    import core.backbones.resolved
    import core.features.extract

    size = int(os.environ[LOW_RES_ENV])
    real = core.backbones.resolved.resolve_backbone

    def low(spec, **kwargs):
        # Only the preprocessing shrinks (as before: the resolved record's config); the model is built as usual.
        resolved = real(spec, **kwargs)
        return dataclasses.replace(resolved, config=dataclasses.replace(resolved.config, input_size=size, resize=size))

    core.backbones.resolved.resolve_backbone = low
    core.features.extract.resolve_backbone = low


def _child(job: dict) -> dict:
    """Runs in a fresh process: one measured step, its figures as JSON."""
    os.environ[LOW_RES_ENV] = str(job.get("low_res", LOW_RES))
    low_res_hook()
    from core.base.workspace import Workspace
    from core.data.datasets import load_dataset

    workspace = Workspace(root=Path(job["workspace"]), data_root=Path(job["data_root"]))
    started = time.perf_counter()
    dataset = load_dataset(job["dataset"], workspace)
    listed = time.perf_counter() - started
    if job["step"] == "fingerprint":
        started = time.perf_counter()
        dataset.compute_fingerprint()
        fingerprint_s = time.perf_counter() - started
        return {
            "images": len(dataset.image_paths),
            "listing_s": listed,
            "fingerprint_s": fingerprint_s,
            "peak_rss_mb": _own_peak_rss_mb(),
        }
    started = time.perf_counter()
    if job["step"] == "ray":
        import ray

        from core.features.ray_engine import extract_features_ray

        ray.init(
            num_cpus=os.cpu_count(),
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={
                "worker_process_setup_hook": "bench.scale.low_res_hook",
                "env_vars": {LOW_RES_ENV: os.environ[LOW_RES_ENV], "PYTHONPATH": os.getcwd()},
            },
        )
        result = extract_features_ray(dataset, BACKBONE, workspace=workspace, weights="random", precision="fp32")
        ray.shutdown()
    else:
        from core.features.extract import extract_features

        result = extract_features(dataset, BACKBONE, workspace=workspace, weights="random", precision="fp32")
    elapsed = time.perf_counter() - started
    return {
        "images": len(result.rows),
        "listing_s": listed,
        "extract_s": elapsed,
        "images_per_s": len(result.rows) / elapsed,
        "device": result.device,
        "peak_rss_mb": _own_peak_rss_mb(),
    }


def _own_peak_rss_mb() -> float | None:
    """This process's peak resident memory since its ``exec`` (Linux's VmHWM), in MB.

    Not ``wait4``'s ``ru_maxrss``: Linux carries the parent's resident size at ``fork`` into the child's
    ``ru_maxrss``, so after the maps section had grown the bench process to 2 GB every child "peaked" at 2,096 MB.
    """
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    kilobytes = next((line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")), None)
    return None if kilobytes is None else round(int(kilobytes) / 1024, 1)


def _measure(job: dict) -> dict:
    """``_child(job)`` in a new Python process; its figures plus its own peak RSS (MB) and wall time."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "bench.scale", json.dumps(job)], stdout=subprocess.PIPE, text=True)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"bench child {job['step']} on {job['dataset']} exited with {child.returncode}")
    figures = json.loads(output.strip().splitlines()[-1])
    return {
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # replaced by the child's own figure where it gives one
        **{key: value for key, value in figures.items() if value is not None},
        "wall_s": round(time.perf_counter() - started, 2),
        "load_average": load_average(),
    }


def run(context: Context) -> tuple[dict, list[Target]]:
    sizes = (
        QUICK_SIZES if context.quick else tuple(int(n) for n in os.environ.get(SIZES_ENV, "").split(",") if n) or SIZES
    )
    listed = sizes[-1] if context.quick else LISTING_IMAGES
    root = SCALE_ROOT / ("quick" if context.quick else "full")
    data_root = root / "datasets"
    results: dict = {
        "backbone": BACKBONE,
        "weights": "random",
        "input_px": LOW_RES,
        "jpeg_px": JPEG_SIDE,
        "sizes": list(sizes),
    }
    for n in sorted({*sizes, listed}):
        started = time.perf_counter()
        generate_folder(data_root / f"scale{n}", n)
        context.log(f"  generated {n:,} images in {time.perf_counter() - started:.1f} s")
    generate_folder(data_root / f"scale{RAY_IMAGES}", RAY_IMAGES)

    def workspace(name: str) -> str:
        path = root / "workspaces" / name
        shutil.rmtree(path, ignore_errors=True)  # every measured step starts from an empty cache
        return str(path)

    big = f"folder:scale{listed}"
    fingerprint_ws = workspace("fingerprint")
    results["evicted_from_page_cache"] = evict_from_page_cache(data_root / f"scale{listed}")
    for label in ("cold", "warm"):  # warm: a second process, same workspace, same files
        figures = _measure(
            {"step": "fingerprint", "dataset": big, "workspace": fingerprint_ws, "data_root": str(data_root)}
        )
        results[f"fingerprint_{label}"] = figures
        context.log(
            f"  listing {figures['listing_s']:.1f} s + fingerprint {figures['fingerprint_s']:.1f} s "
            f"({label}, {figures['images']:,} files)"
        )

    for n in sizes:
        figures = _measure(
            {
                "step": "local",
                "dataset": f"folder:scale{n}",
                "workspace": workspace(f"extract{n}"),
                "data_root": str(data_root),
            }
        )
        results[f"extract_{n}"] = figures
        context.log(
            f"  extraction of {n:,}: peak RSS {figures['peak_rss_mb']:.0f} MB, {figures['images_per_s']:.0f} images/s"
        )

    for engine in ("local", "ray"):
        figures = _measure(
            {
                "step": engine,
                "dataset": f"folder:scale{RAY_IMAGES}",
                "workspace": workspace(f"engine-{engine}"),
                "data_root": str(data_root),
            }
        )
        results[f"engine_{engine}"] = figures
        context.log(
            f"  {engine} engine, {RAY_IMAGES:,} images: {figures['images_per_s']:.0f} images/s ({figures['device']})"
        )

    small, large = (results[f"extract_{n}"]["peak_rss_mb"] for n in sizes)
    growth = 100 * (large - small) / small
    results["rss_growth_percent"] = round(growth, 1)
    cold, warm = results["fingerprint_cold"], results["fingerprint_warm"]
    targets = [
        Target(f"extraction peak RSS, {sizes[-1]:,} vs {sizes[0]:,} images (growth)", growth, "<", 10, "%"),
        Target(
            f"listing + fingerprint of {listed:,} files, warm",
            warm["listing_s"] + warm["fingerprint_s"],
            "<",
            0.5 * (cold["listing_s"] + cold["fingerprint_s"]),
            "s",
            "goal: under half the cold time",
        ),
    ]
    return results, targets


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
