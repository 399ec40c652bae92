"""``python -m core`` in a subprocess on a workspace of its own, its output read line by line as it comes.

The kill tests (``tests/core/base/test_reliability.py``, ``tests/core/probing/test_suite_groups.py``) watch the
real CLI's output to know when to strike; nothing in the engine knows it is being tested.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
PROCESS_TIMEOUT_S = 420  # a whole CLI run on a loaded 2-core machine stays well under this


class Cli:
    """``python -m core *args`` with ``FLOWER_PROBE_WORKSPACE`` at ``workspace_root`` (datasets inside it), stdout
    and stderr read line by line as they come."""

    def __init__(self, args: list[str], *, workspace_root: Path) -> None:
        env = {**os.environ, "FLOWER_PROBE_WORKSPACE": str(workspace_root), "PYTHONUNBUFFERED": "1"}
        env.pop("FLOWER_PROBE_DATA_ROOT", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "core", *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, predicate: Callable[[str], bool], *, timeout_s: float = PROCESS_TIMEOUT_S) -> str:
        """The first output line satisfying ``predicate``; fails if the process ends or time runs out first."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                pytest.fail(f"the CLI ended (exit {self.process.wait()}) before the awaited line:\n{self.output}")
            if predicate(line):
                return line
        self.process.kill()
        pytest.fail(f"no awaited line within {timeout_s} s:\n{self.output}")

    def kill_9(self) -> None:
        """SIGKILL the CLI itself (not its children, as a user's kill -9 would) and check no child outlives it."""
        children = psutil.Process(self.process.pid).children(recursive=True)
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(30)
        # DataLoader workers notice their parent is gone within seconds; until then they hold the cache lock.
        _, alive = psutil.wait_procs(children, timeout=60)
        assert not alive, f"children outlived the killed CLI: {alive}"

    def finish(self, *, timeout_s: float = PROCESS_TIMEOUT_S) -> str:
        """Wait for the CLI to end, check it succeeded and return its whole output."""
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            pytest.fail(f"the CLI did not finish within {timeout_s} s:\n{self.output}")
        self._reader.join(10)  # the last lines
        assert code == 0, f"the CLI failed with exit {code}:\n{self.output}"
        return self.output
