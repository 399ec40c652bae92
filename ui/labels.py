"""How things are named on a page: runs, weights, heads, datasets, sizes and ages.

User-controlled strings shown through Markdown go through ``core.base.text.markdown_text`` first.
"""

from __future__ import annotations

import time


def format_age(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    seconds = time.time() - timestamp
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return "just now"


# How often a live view of jobs redraws itself: every second or two while one of its jobs runs (progress moves), every
# 15 s while none does, so that a job started elsewhere (another tab, the CLI) still shows up. The views used to rerun
# every 1-2 s whatever happened: every open tab cost the server a rerun a second, and a page load in the browser bench
# that met one of those reruns settled ~2 s late (python -m bench --only browser, sidebar clicks).


def weights_label(weights: str) -> str:
    return "random weights" if weights == "random" else "pretrained" if weights == "pretrained" else "checkpoint file"


def run_label(run: dict) -> str:
    """``#12 resnet50 (random weights), split 1``, then ``, standardised`` if it was: short, unique, plain text."""
    standardised = ", standardised" if _standardised(run["config"]["head"]) else ""
    return f"#{run['id']} {run['backbone']} ({weights_label(run['weights'])}), split {run['split']}{standardised}"


def head_label(head_config: dict) -> str:
    """``mlp`` or ``linear``, with ``· standardised`` when the head standardised its features."""
    return head_config["head"] + (" · standardised" if _standardised(head_config) else "")


def _standardised(head_config: dict) -> bool:
    # .get: runs recorded before the option existed have no "standardise" key, and did not standardise.
    return bool(head_config.get("standardise"))


def dataset_label(name: str, synthetic: bool) -> str:
    """Dataset names carry their synthetic mark wherever they appear."""
    return name if not synthetic or "synthetic" in name.lower() else f"{name} (synthetic)"


def format_bytes(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")
