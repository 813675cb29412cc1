"""Injectable clocks: every timestamp that decides money comes from one of these.

Tests and the demo move time forward instantly instead of waiting for an hour (STYLE.md).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch, UTC."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()


class SettableClock:
    """Wall time plus an offset, or frozen at a fixed instant. Thread-safe.

    `set(t)` jumps to `t` and keeps running from there (frozen stays frozen);
    `advance(s)` moves forward by `s` seconds.
    """

    def __init__(self, start: float | None = None, *, frozen: bool = False) -> None:
        self._lock = threading.Lock()
        self._frozen = frozen
        base = time.time() if start is None else start
        self._offset = base - time.time()
        self._fixed = base

    def now(self) -> float:
        with self._lock:
            return self._fixed if self._frozen else time.time() + self._offset

    @property
    def frozen(self) -> bool:
        return self._frozen

    def set(self, t: float) -> None:
        with self._lock:
            self._fixed = t
            self._offset = t - time.time()

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._fixed += seconds
            self._offset += seconds

    def freeze(self, frozen: bool = True) -> None:
        with self._lock:
            current = self._fixed if self._frozen else time.time() + self._offset
            self._frozen = frozen
            self._fixed = current
            self._offset = current - time.time()


class FileOffsetClock:
    """The system clock plus an offset read from a file (testing and demos only), so that another
    process can move this one's time forward. The file is re-read when it changes."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: tuple[int, int] | None = None
        self._offset = 0.0

    def now(self) -> float:
        try:
            st = self._path.stat()
        except FileNotFoundError:
            return time.time() + self._offset
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                self._offset = float(self._path.read_text().strip() or 0)
                self._stamp = stamp
            except (OSError, ValueError):
                pass  # a half-written file: keep the last offset, read it again next time
        return time.time() + self._offset


def iso(ts: float) -> str:
    """UTC, to the second, as the API and logs show times."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
