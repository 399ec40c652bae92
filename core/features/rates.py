"""Extraction's measured speed, kept in the workspace: images per second end to end, per backbone and device.

Every extraction that computed features (not read them from the cache) records its final rate here; the
duration estimates (``core.probing.experiment``) and the cost of a backbone (``core.cost``) read it back, so a
figure the user's own extraction measured is reused rather than measured again.
"""

from __future__ import annotations

import contextlib
import json
import time

from core.base.errors import FlowerProbeError
from core.base.fileio import atomic_write_bytes
from core.base.workspace import Workspace

RATES_FILENAME = "measured-rates.json"  # in the workspace: images/s measured by past extractions


def rate_entries(workspace: Workspace) -> dict[str, dict[str, dict]]:
    """``{what: {device: {"images_per_s": float, "measured_at": unix time}}}``; ``{}`` when none was measured."""
    try:
        data = json.loads((workspace.root / RATES_FILENAME).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def measured_rates(workspace: Workspace) -> dict[str, dict[str, float]]:
    """``{what: {device: images per second}}`` from the workspace's rates file; ``{}`` when none was measured."""
    return {
        what: {device: float(entry["images_per_s"]) for device, entry in devices.items()}
        for what, devices in rate_entries(workspace).items()
    }


def record_rate(workspace: Workspace, *, what: str, device: str, images_per_s: float) -> None:
    """Keep the latest measured rate of ``what`` (a backbone name, or the dataset generator's key) on ``device``.

    Best effort: an estimate is not worth failing a finished run for, so a read-only workspace is skipped.
    """
    if not images_per_s > 0:
        return
    data = rate_entries(workspace)
    data.setdefault(what, {})[device] = {"images_per_s": round(float(images_per_s), 3), "measured_at": time.time()}
    with contextlib.suppress(FlowerProbeError):
        atomic_write_bytes(workspace.root / RATES_FILENAME, json.dumps(data, indent=1, sort_keys=True).encode("utf-8"))
