"""Tests for ui.server: the garbage collector's freeze of what the server has imported."""

from __future__ import annotations

import gc
import sys
import types

from ui import server


def test_freezes_once_per_batch_of_new_imports(monkeypatch):
    monkeypatch.setattr(server, "_modules_when_frozen", 0)
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(len(sys.modules)))  # the test process stays unfrozen
    frozen: list[int] = []
    assert server.freeze_imported_objects() is True
    assert server.freeze_imported_objects() is False, "no module imported since: nothing to collect or freeze"
    monkeypatch.setitem(sys.modules, "flower_probe_test_new_module", types.ModuleType("flower_probe_test_new_module"))
    assert server.freeze_imported_objects() is True, "a page's first visit imported more: freeze again"
    assert frozen == [len(sys.modules) - 1, len(sys.modules)]


def test_the_entry_file_freezes_before_every_run():
    from pathlib import Path

    entry = (Path(__file__).parents[2] / "dashboard.py").read_text(encoding="utf-8")
    assert entry.index("freeze_imported_objects()") < entry.index("navigation.run()")
