"""What a long single job shows while it works: its steps, each with the seconds it took, and a spinner
with the running time of the current one. Only on a terminal: piped or redirected, nothing is printed."""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType
from typing import TextIO

_FRAMES = "|/-\\"


class Steps:
    """`with Steps("export") as step: step("trace"); ...; step("verify")`: on a terminal (`stream`,
    stderr by default), the current step redrawn with its elapsed time several times a second, and each
    finished step left on a line of its own ("export: trace 12.3 s"); elsewhere nothing at all."""

    def __init__(self, label: str, stream: TextIO | None = None, interval: float = 0.2) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval
        self._name: str | None = None
        self._started = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Steps:
        if self.enabled:
            self._thread = threading.Thread(target=self._spin, name="raft-engine-steps", daemon=True)
            self._thread.start()
        return self

    def __call__(self, name: str) -> None:
        """Finish the current step, if any, and start `name`."""
        if not self.enabled:
            return
        with self._lock:
            self._finish()
            self._name, self._started = name, time.perf_counter()
            self._draw()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if not self.enabled:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            self._finish(failed=kind is not None)

    def _finish(self, failed: bool = False) -> None:
        if self._name is None:
            return
        elapsed = time.perf_counter() - self._started
        outcome = "stopped after" if failed else ""
        self.stream.write(f"\r\033[K{self.label}: {self._name} {outcome}{' ' if failed else ''}{elapsed:.1f} s\n")
        self.stream.flush()
        self._name = None

    def _draw(self, frame: int = 0) -> None:
        if self._name is None:
            return
        elapsed = time.perf_counter() - self._started
        self.stream.write(f"\r\033[K{self.label}: {self._name} {_FRAMES[frame % len(_FRAMES)]} {elapsed:.0f} s")
        self.stream.flush()

    def _spin(self) -> None:
        frame = 0
        while not self._stop.wait(self.interval):
            frame += 1
            with self._lock:
                self._draw(frame)
