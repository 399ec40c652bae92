"""How things are named on a page: runs, weights, heads, datasets, sizes and ages.

User-controlled strings shown through Markdown go through ``core.base.text.markdown_text`` first.
"""

from __future__ import annotations

import time

from core.probing.heads import head_architecture
from core.runs.naming import run_name


def format_age(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    seconds = time.time() - timestamp
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return "just now"


# The one name of a run is core.runs.naming.run_name (every page, CSV and the CLI); run_label is the same function,
# kept under its old name for modules not yet moved over.
run_label = run_name


def head_label(head_config: dict) -> str:
    """``mlp`` or ``linear``, with ``· standardised`` when the head standardised its features."""
    architecture = head_architecture(head_config) or "no trained head"
    return architecture + (" · standardised" if _standardised(head_config) else "")


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
