"""One name for a run everywhere: every page that lists runs, the runs CSV and `python -m core runs` show
``core.runs.naming.run_name`` character for character (each page rendered under AppTest through dashboard.py)."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from streamlit.testing.v1 import AppTest

from core.runs.naming import run_name
from core.runs.registry import RunRegistry

ENTRY = Path(__file__).resolve().parents[2] / "dashboard.py"


def _page_texts(page: str) -> list[str]:
    """Every run-bearing string a page shows: table cells, picker options, Markdown."""
    at = AppTest.from_file(str(ENTRY), default_timeout=120)
    at.run()
    at.switch_page(page).run()
    assert not at.exception, f"{page}: {[e.message for e in at.exception]}"
    # Markdown shows names escaped (core.base.text.markdown_text): read them as the reader sees them.
    texts = [re.sub(r"\\(.)", r"\1", m.value) for m in [*at.markdown, *at.caption]]
    for widget in [*at.selectbox, *at.multiselect]:
        texts += [str(option) for option in widget.options]
    for frame in at.dataframe:
        texts += [str(cell) for cell in frame.value.to_numpy().ravel()]
    return texts


def _names_in(texts: list[str], runs: dict[int, dict]) -> dict[int, set[str]]:
    """For each run id mentioned as ``#<id> `` at the start of a name, the name as written there (up to the end of the
    generated part, which ends with the accuracy)."""
    found: dict[int, set[str]] = {}
    for text in texts:
        for match in re.finditer(r"(?<!Run )#(\d+) ", text):  # "Run #2 predicts one class" is a warning, not a name
            run_id = int(match.group(1))
            if run_id in runs:
                expected = run_name(runs[run_id])
                found.setdefault(run_id, set()).add(text[match.start() : match.start() + len(expected)])
    return found


def test_run_names_are_identical_on_every_page_in_the_csv_and_the_cli(populated_workspace, capsys):
    registry = RunRegistry(populated_workspace.registry_path)
    runs = {run["id"]: run for run in registry.list_runs(status="completed", few_shot=False)}
    assert len(runs) >= 2
    expected = {run_id: {run_name(run)} for run_id, run in runs.items()}
    for page, must_list in (
        ("pages/home.py", True),
        ("pages/compare.py", True),
        ("pages/explorer.py", True),
        ("pages/classify.py", True),
    ):
        names = _names_in(_page_texts(page), runs)
        if must_list:
            assert names, f"{page} names no run"
        for run_id, written in names.items():
            assert written == expected[run_id], f"{page} names run #{run_id} {written}, not {expected[run_id]}"

    # The Explorer queued its maps as jobs on this shared workspace: let them finish, so no job writes to it (its
    # history) while a later test copies it.
    from ui.state import job_runner

    for job in job_runner().jobs():
        if job.active:
            job_runner().wait(job.id, timeout_s=900)

    from core.base.csv_export import csv_text
    from ui.compare import runs_table

    rows = list(csv.DictReader(io.StringIO(csv_text(runs_table(list(runs.values()))))))
    assert {int(row["run"]): row["name"] for row in rows} == {i: run_name(run) for i, run in runs.items()}

    from core.__main__ import main

    assert main(["runs"]) == 0
    printed = capsys.readouterr().out
    for run in runs.values():
        assert f"{run_name(run)} · completed" in printed
