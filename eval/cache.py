"""The cache folder of the evaluations (tiny checkpoint, AWQ statistics, the quality benchmark's model)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "VLA_TTQ_CACHE"


def default_cache_dir() -> Path:
    """``$VLA_TTQ_CACHE``, else ``~/.cache/vla_ttq``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "vla_ttq").expanduser()
