"""Progress reporting shared by the CLI and the dashboard.

Every long step takes ``progress: ProgressCallback | None`` and calls it with a ``ProgressEvent``.
The CLI prints them; the job runner stores the latest one for the page to poll; the job runner's
callback raises ``CancelledError`` when the user cancels, which stops the step cleanly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class ProgressEvent:
    stage: str  # "download", "extract", "features", "train", "tsne", ...
    done: int
    total: int
    message: str = ""
    rate: float | None = None  # items per second, when meaningful (images/s for features)
    metrics: dict = field(default_factory=dict)  # per-epoch numbers during training

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0


ProgressCallback = Callable[[ProgressEvent], None]


def report(progress: ProgressCallback | None, stage: str, done: int, total: int, **kwargs) -> None:
    """Call ``progress`` if given; keeps every caller free of ``if progress:`` noise."""
    if progress is not None:
        progress(ProgressEvent(stage=stage, done=done, total=total, **kwargs))


class RateMeter:
    """Items per second since construction, for progress events."""

    def __init__(self) -> None:
        self._start = time.perf_counter()

    def rate(self, done: int) -> float:
        elapsed = time.perf_counter() - self._start
        return done / elapsed if elapsed > 0 else 0.0
