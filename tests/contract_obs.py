"""Random observations in the policy contract's layout (openpi's LIBERO keys), shared by the tests."""

from __future__ import annotations

import numpy as np


def make_obs(seed: int, prompt: str = "pick up the bowl", side: int | tuple[int, int] = 32,
             wrist: bool = True) -> dict:
    """Images of ``side`` (square, or (h, w)), an 8-dim state, ``prompt``; ``wrist=False``: no wrist camera."""
    rng = np.random.default_rng(seed)
    hw = (side, side) if isinstance(side, int) else tuple(side)
    obs = {
        "observation/image": rng.integers(0, 256, (*hw, 3), dtype=np.uint8),
        "observation/state": rng.normal(0, 0.3, 8).astype(np.float32),
        "prompt": prompt,
    }
    if wrist:
        obs["observation/wrist_image"] = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    return obs
