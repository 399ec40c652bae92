"""Settings of the Streamlit server process itself, not of any one page: the garbage collector's start-up freeze.

Why the freeze: the server holds ~475,000 Python objects from its imports alone (torch, scipy, sympy, pandas,
streamlit), and CPython's full (generation 2) collection walks every one of them. On the project's 2-core
machine that took 230-370 ms, and one such collection came at the end of nearly every script run, before
Streamlit sent "script finished" to the browser, so every page waited for it. Objects moved into the
permanent generation with ``gc.freeze`` are never walked again (reference counting still frees them when
unused; only a cycle among them would stay). Measured in Chromium with ``python -m bench --only browser``
(README, Performance).
"""

from __future__ import annotations

import gc
import sys
import threading

_lock = threading.Lock()
_modules_when_frozen = 0


def freeze_imported_objects() -> bool:
    """Freeze every object alive now, when modules were imported since the last freeze; True when it froze.

    Call it at the start of every script run: a first visit to a page imports its libraries during that
    run, and the next run freezes them too. Each freeze first collects the garbage (one full collection,
    a few hundred ms, a handful of times in a server's life), so no garbage is frozen with the rest.
    """
    global _modules_when_frozen
    with _lock:  # sessions run their scripts in threads of their own
        if len(sys.modules) <= _modules_when_frozen:
            return False
        _modules_when_frozen = len(sys.modules)
        gc.collect()
        gc.freeze()
        return True
