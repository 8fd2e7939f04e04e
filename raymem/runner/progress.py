"""A one-line progress bar on stderr: trials done/running/failed, throughput and ETA."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, already_done: int = 0, *, enabled: bool = True, stream=sys.stderr):
        self.total = total
        self.done = already_done
        self.start_done = already_done
        self.failed = 0
        self.retried = 0
        self.enabled = enabled
        self.stream = stream
        self.started = time.monotonic()
        self.last_shown = 0.0
        self.tty = getattr(stream, "isatty", lambda: False)()

    def advance(self, done: int = 0, failed: int = 0, retried: int = 0) -> None:
        self.done += done
        self.failed += failed
        self.retried += retried

    def line(self, running: int) -> str:
        elapsed = time.monotonic() - self.started
        new = self.done - self.start_done
        rate = new / elapsed if elapsed > 0 else 0.0
        remaining = self.total - self.done - self.failed
        eta = f"{remaining / rate:,.0f}s" if rate > 0 else "?"
        width = 30
        filled = int(width * self.done / self.total) if self.total else width
        return (
            f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} done, {running} running, "
            f"{self.failed} failed, {self.retried} retried | {rate * 3600:,.0f} trials/h | ETA {eta}"
        )

    def show(self, running: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self.last_shown < (0.5 if self.tty else 10.0):
            return
        self.last_shown = now
        end = "\r" if self.tty else "\n"
        self.stream.write(self.line(running) + end)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.show(0, force=True)
            if self.tty:
                self.stream.write("\n")
