"""What every benchmark prints with: its table lines, flushed one by one, and the name of the machine's CPU."""

from __future__ import annotations

import platform
import sys


def emit(line: str = "") -> None:
    """One line of a benchmark's output (its table), flushed at once so that a stopped run keeps what it printed."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (elsewhere what ``platform`` knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"
