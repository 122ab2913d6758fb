"""Observations in the policy contract's layout (openpi's LIBERO keys), for the server tests."""

from __future__ import annotations

import numpy as np


def make_obs(seed: int, prompt: str = "pick up the bowl", side: int = 32) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "observation/image": rng.integers(0, 256, (side, side, 3), dtype=np.uint8),
        "observation/wrist_image": rng.integers(0, 256, (side, side, 3), dtype=np.uint8),
        "observation/state": rng.normal(size=8).astype(np.float32),
        "prompt": prompt,
    }
