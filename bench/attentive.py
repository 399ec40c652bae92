"""Section "attentive": the attentive probe's grid on cached patch tokens of ViT-S/14's size.

Issue 25's target: the default grid (``core.probing.attentive.AttentiveConfig``: 6 learning rates x 2 weight
decays, trained together) on 1,360 images x 256 tokens x 384 dims (Synthetic Flowers through ViT-S/14;
680 train / 340 valid / 340 test, 17 classes) in under 120 s on this 2-core CPU. The tokens are random fp16
(the cost does not depend on the values) with the class written into one token position, so the probe has
something to find; they sit in a memory-mapped ``.npy`` as the token cache does, and are read a batch at a time.
Also reported: the file's size on disk (N x T x D x 2 bytes) and the process's peak resident memory while
training, sampled every 20 ms, against the memory before.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from .common import Context, Target

IMAGES, TOKENS, DIM, CLASSES = 1360, 256, 384, 17


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class _PeakRss:
    """The largest resident set size seen while in the block, sampled on a thread."""

    def __init__(self, every_s: float = 0.02) -> None:
        self.every_s, self.peak, self._stop = every_s, 0, threading.Event()

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.every_s)

    def __enter__(self) -> _PeakRss:
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def write_tokens(path: Path, *, images: int = IMAGES, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random fp16 tokens (images, 256, 384) written chunk by chunk to ``path``; returns (memmap, labels)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, images)
    prototypes = rng.normal(size=(CLASSES, DIM)).astype(np.float32)
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(images, TOKENS, DIM))
    for start in range(0, images, 128):
        stop = min(images, start + 128)
        block = rng.normal(size=(stop - start, TOKENS, DIM)).astype(np.float32)
        block[:, 37] += 2 * prototypes[labels[start:stop]]  # the class lives in one patch position
        array[start:stop] = block.astype(np.float16)
    array.flush()
    del array
    return np.load(path, mmap_mode="r"), labels


def run(context: Context) -> tuple[dict, list[Target]]:
    from core.features.tokens import TokenPart
    from core.probing.attentive import AttentiveConfig, attentive_probe

    images = 272 if context.quick else IMAGES
    path = context.workspace_root / "attentive-tokens.npy"
    tokens, labels = write_tokens(path, images=images)
    half, three_quarters = images // 2, images * 3 // 4
    part = TokenPart(tokens, np.arange(images))
    cuts = [np.arange(0, half), np.arange(half, three_quarters), np.arange(three_quarters, images)]
    config = AttentiveConfig()
    before = _rss_bytes()
    started = time.perf_counter()
    with _PeakRss() as peak:
        result = attentive_probe(*[(part[c], labels[c]) for c in cuts], num_classes=CLASSES, config=config)
    seconds = time.perf_counter() - started
    results = {
        "shape": [images, TOKENS, DIM],
        "grid": {"learning_rates": list(config.learning_rates), "weight_decays": list(config.weight_decays)},
        "epochs": config.epochs,
        "seconds": round(seconds, 1),
        "cache_bytes_on_disk": path.stat().st_size,
        "cache_bytes_formula": images * TOKENS * DIM * 2,
        "rss_before_bytes": before,
        "rss_peak_bytes": peak.peak,
        "rss_growth_bytes": peak.peak - before,
        "test_acc": result.test.accuracy,
        "chosen": result.hyperparameter,
    }
    context.log(
        f"attentive grid: {seconds:.1f} s on {images} x {TOKENS} x {DIM} tokens; "
        f"cache {path.stat().st_size / 1e6:.1f} MB; "
        f"peak RSS {peak.peak / 1e6:.0f} MB (+{(peak.peak - before) / 1e6:.0f} MB); test {result.test.accuracy:.1f} %"
    )
    path.unlink(missing_ok=True)
    name = f"attentive grid ({len(config.learning_rates)} x {len(config.weight_decays)} heads) on {images} x 256 x 384"
    return results, [Target(name, seconds, "<", 120, "s", note=f"peak RSS +{(peak.peak - before) / 1e6:.0f} MB")]
