"""Finding and ending the processes a test started (never `ray stop`): those whose command line or environment
holds a marker, e.g. the test's own RAY_TMPDIR. Ray's dashboard and runtime-env agents outlive a SIGTERM of their
raylet, so tests that start Ray heads end everything holding their temp dir."""

from __future__ import annotations

import os
import signal
from pathlib import Path


def processes_holding(marker: str):
    """(pid, command line, environment) of every live (not zombie) process, other than this one, whose
    environment or command line holds ``marker``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environment = (entry / "environ").read_bytes()
            command_line = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if state != "Z" and (marker.encode() in environment or marker.encode() in command_line):
            yield int(entry.name), command_line, environment


def kill_processes_holding(marker: str) -> list[int]:
    """SIGKILL every process :func:`processes_holding` finds; return their pids."""
    killed = []
    for pid, _, _ in list(processes_holding(marker)):
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except OSError:
            pass
    return killed
