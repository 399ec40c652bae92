"""Section 1, the matmul roofline: the best GFLOP/s a large square matmul reaches in each dtype on this device.

It is the ceiling the extraction section compares against: a backbone's forward is mostly matmuls and
convolutions, so the fraction of this peak it reaches says how much speed is left on the table.
"""

from __future__ import annotations

import torch

from .common import Context, Target, matmul_gflops, seconds


def _dtypes(device: torch.device) -> dict[str, torch.dtype]:
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    if device.type == "cuda":
        dtypes["fp16"] = torch.float16
    return dtypes


def _synchronised(device: torch.device, function):
    def run():
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return run


def measure_peak(context: Context, dtype_name: str, *, n: int | None = None, repeats: int | None = None) -> float:
    """Best GFLOP/s of an (n x n) @ (n x n) matmul in ``dtype_name``; also raises ``context.peaks`` to it."""
    from core.features.extract import select_device

    device = select_device("auto")
    n = n or context.sizes.matmul_n
    dtype = _dtypes(device)[dtype_name]
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(device, dtype)
    b = torch.randn(n, n, generator=generator).to(device, dtype)
    run = _synchronised(device, lambda: a @ b)
    run()  # warm-up: the BLAS library picks and caches its kernel
    best = min(seconds(run) for _ in range(repeats or context.sizes.matmul_repeats))
    gflops = matmul_gflops(n, best)
    context.peaks[dtype_name] = max(context.peaks.get(dtype_name, 0.0), gflops)
    return gflops


def run(context: Context) -> tuple[dict, list[Target]]:
    from core.features.extract import select_device

    device = select_device("auto")
    results = {"n": context.sizes.matmul_n, "repeats": context.sizes.matmul_repeats, "gflops": {}}
    for name in _dtypes(device):
        results["gflops"][name] = round(measure_peak(context, name), 1)
        context.log(f"  matmul {name}: {results['gflops'][name]:.1f} GFLOP/s")
    return results, []
