"""Progress lines on stderr while the benchmark runs: one per scenario, and a heartbeat during long ones."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from .results import Result

__all__ = ["Progress"]


class Progress:
    """Periodic progress lines on a text stream (stderr) while the benchmark runs.

    A line is written when each scenario starts and ends, and a heartbeat every ``interval`` seconds during long
    ones, so a user sees the run is alive.
    """

    def __init__(
        self, total: int, *, stream: TextIO | None = None, interval: float = 5.0, enabled: bool = True
    ) -> None:
        self.total = total
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.enabled = enabled
        self.started = time.perf_counter()
        self._current: str | None = None
        self._current_started = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _line(self, text: str) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.started
        with self._lock:
            self.stream.write(f"[bench {self.done}/{self.total} {elapsed:6.1f}s] {text}\n")
            self.stream.flush()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.interval):
            current = self._current
            if current is not None:
                running = time.perf_counter() - self._current_started
                self._line(f"... {current} running for {running:.0f}s")

    def __enter__(self) -> Progress:
        if self.enabled:
            self._thread = threading.Thread(target=self._heartbeat, name="bench-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @contextmanager
    def scenario(self, name: str) -> Iterator[None]:
        """Report the start and the end of one scenario."""
        self._current, self._current_started = name, time.perf_counter()
        self._line(f"{name} ...")
        try:
            yield
        finally:
            self._current = None
            self.done += 1

    def finished(self, result: Result) -> None:
        """Report one scenario's headline number."""
        if result.ok:
            self._line(f"{result.name}: {result.value:,.1f} {result.unit}")
        else:
            self._line(f"{result.name}: {result.status}")
