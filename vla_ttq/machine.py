"""What machine a result was measured on (written into benchmark and evaluation outputs)."""

from __future__ import annotations

import contextlib
from pathlib import Path


def cpu_model_name() -> str | None:
    """The CPU's "model name" from /proc/cpuinfo, or None where there is none (not Linux)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None
