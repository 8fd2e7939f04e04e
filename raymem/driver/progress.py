"""The run's progress display on stderr, drawn by ``rich``: trials done/running/failed/retried, throughput, ETA.

On a terminal it is a live bar; elsewhere (logs, CI) rich prints nothing until :meth:`Progress.close`,
which prints one final line, so log files are not flooded.
"""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress


class Progress:
    """Counts of a run's trials, shown live with rich.

    Args:
        total: trials the run should hold.
        already_done: trials already in the log when this invocation started.
        enabled: False shows nothing.
        stream: where to draw (stderr by default).
    """

    def __init__(self, total: int, already_done: int = 0, *, enabled: bool = True, stream=sys.stderr):
        self.total, self.done, self.start_done = total, already_done, already_done
        self.failed = self.retried = self.running = 0
        self.started = time.monotonic()
        self.enabled = enabled
        self._console = Console(file=stream, stderr=stream is sys.stderr)
        self._live = enabled and self._console.is_terminal  # off a terminal: one line at the end
        self._bar = RichProgress(
            TextColumn("trials"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(), console=self._console, transient=False, disable=not self._live,
        )
        self._task = self._bar.add_task("trials", total=total, completed=already_done, detail=self.detail())
        if self._live:
            self._bar.start()

    def advance(self, done: int = 0, failed: int = 0, retried: int = 0) -> None:
        """Count trials that were acknowledged, failed for good, or will be tried again."""
        self.done += done
        self.failed += failed
        self.retried += retried

    def rate_per_hour(self) -> float:
        """Trials acknowledged per hour by this invocation."""
        elapsed = time.monotonic() - self.started
        return (self.done - self.start_done) / elapsed * 3600.0 if elapsed > 0 else 0.0

    def detail(self) -> str:
        """``3 running, 0 failed, 1 retried | 950 trials/h | ETA 4m``."""
        rate = self.rate_per_hour()
        remaining = self.total - self.done - self.failed
        eta = f"{remaining / rate * 3600:,.0f}s" if rate > 0 else "?"
        return (f"{self.running} running, {self.failed} failed, {self.retried} retried | "
                f"{rate:,.0f} trials/h | ETA {eta}")

    def note(self, message: str) -> None:
        """Print one line above the live display (also with the display off: a note is never a progress line)."""
        self._console.print(message, soft_wrap=True, highlight=False, markup=False)

    def show(self, running: int) -> None:
        """Refresh the display with ``running`` trials in flight."""
        self.running = running
        self._bar.update(self._task, completed=self.done, detail=self.detail())

    def close(self) -> None:
        """Draw the final state and stop the live display."""
        self.show(0)
        if self._live:
            self._bar.stop()
        elif self.enabled:
            self._console.print(f"trials {self.done}/{self.total}: {self.detail()}", soft_wrap=True, highlight=False)
