"""Progress reporting shared by the CLI and the dashboard.

Every long step takes ``progress: ProgressCallback | None`` and calls it with a ``ProgressEvent``.
The CLI prints them; the job runner stores the latest one for the page to poll; the job runner's
callback raises ``CancelledError`` when the user cancels, which stops the step cleanly. An event with a
``rate`` knows its time left (``seconds_left``), which the job card and the CLI bar show.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

# The stages events name (``ProgressEvent.stage``) and what a person reads for each (job cards, the sidebar). A step
# of a new kind adds its name here.
STAGES = {
    "download": "Downloading",
    "extract": "Extracting",
    "weights": "Checking weights",
    "features": "Feature extraction",
    "generate": "Generating images",
    "listing": "Listing images",
    "fingerprint": "Fingerprinting files",
    "thumbnails": "Thumbnails",
    "tsne": "t-SNE",
    "map": "Map",
    "health": "Data health",
    "train": "Training",  # one event per epoch, with its metrics
    "probe": "Probe runs",  # one event per run of a probe suite
    "attentive": "Attentive probe grid",
    "onnx": "ONNX export",  # the feature engine's graph, once per weights and input size
    "runtime": "Runtime",  # timing PyTorch against onnxruntime once, and the choice
    "export": "Bundle export",
    "cost": "Measuring the cost",
    "patches": "Patch features",
}


@dataclass(frozen=True)
class ProgressEvent:
    stage: str  # a name of STAGES: "download", "features", "train", "tsne", ...
    done: int
    total: int
    message: str = ""
    rate: float | None = None  # items per second, when meaningful (images/s for features)
    metrics: dict = field(default_factory=dict)  # per-epoch numbers during training
    from_cache: bool = False  # the step's result was read from a cache: nothing was computed (and no rate measured)

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0

    @property
    def seconds_left(self) -> float | None:
        """Time to finish this step at the current rate: ``(total - done) / rate``; None when unknown."""
        if not self.rate or self.rate <= 0 or not self.total:
            return None
        return max(0, self.total - self.done) / self.rate


ProgressCallback = Callable[[ProgressEvent], None]


def report(progress: ProgressCallback | None, stage: str, done: int, total: int, **kwargs) -> None:
    """Call ``progress`` if given; keeps every caller free of ``if progress:`` noise."""
    if progress is not None:
        progress(ProgressEvent(stage=stage, done=done, total=total, **kwargs))


def format_duration(seconds: float) -> str:
    """``"45 s"``, ``"3 min 05 s"`` or ``"1 h 02 min"``: durations for estimates and time left."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class RateMeter:
    """Items per second since construction, for progress events (``ProgressEvent.seconds_left`` follows from it)."""

    def __init__(self) -> None:
        self._start = time.perf_counter()

    def rate(self, done: int) -> float:
        elapsed = time.perf_counter() - self._start
        return done / elapsed if elapsed > 0 else 0.0
