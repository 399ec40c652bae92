"""The one CSV writer for every download and ``--csv`` file: formula-safe cells, ISO timestamps, no "None".

A spreadsheet runs a cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return as a
formula (CSV injection: a class named ``=HYPERLINK(...)`` would become a live link). Such text cells get a
leading apostrophe, which spreadsheets show as text. Numbers stay numbers (a negative score is not text).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: object) -> object:
    """One CSV cell: formula-looking text quoted, datetimes as ISO 8601, None and NaN as empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value  # the quote makes spreadsheets show the text instead of running it
    return value


def iso_time(unix_seconds: float | None) -> str:
    """A Unix time as an ISO 8601 UTC timestamp (``2026-12-01T08:03:49+00:00``); '' for None."""
    if unix_seconds is None:
        return ""
    return datetime.fromtimestamp(float(unix_seconds), tz=UTC).isoformat(timespec="seconds")


def csv_text(rows: Iterable[Mapping] | object, *, columns: Sequence[str] | None = None) -> str:
    """CSV text of ``rows`` (mappings with the same keys, or a pandas DataFrame), every cell through ``safe_cell``.

    Parameters
    ----------
    rows : iterable of mappings, or pandas.DataFrame
    columns : sequence of str, optional
        Column order; defaults to the first row's keys (the DataFrame's columns).
    """
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):  # a DataFrame, without importing pandas here
        columns = list(columns or rows.columns)
        rows = rows.to_dict(orient="records")
    rows = list(rows)
    if not rows and not columns:
        return ""
    fieldnames = list(columns or rows[0])
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fieldnames, lineterminator="\n", extrasaction="ignore")
    writer.writerow({name: safe_cell(name) for name in fieldnames})
    for row in rows:
        writer.writerow({name: safe_cell(row.get(name)) for name in fieldnames})
    return out.getvalue()
