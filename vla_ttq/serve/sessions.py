"""Per-client episode state: each connection keeps its own TTQ calibration.

One policy serves every client, so the TTQ layers' episode caches (``recompute="episode"``) are
swapped in before a client's request and snapshotted after it (``vla_ttq.quant.ttq_state`` /
``load_ttq_state``). A snapshot only holds references to immutable tensors, so swapping is cheap.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

_MODEL_ATTRS = ("model", "module", "net", "policy")


def find_torch_module(policy: Any):
    """The ``nn.Module`` that holds the policy's layers: the policy itself, a well-known
    attribute (``model``, ...), or the only ``nn.Module`` among its attributes."""
    import torch.nn as nn  # here, so that clients importing vla_ttq.serve need no torch

    if isinstance(policy, nn.Module):
        return policy
    for name in _MODEL_ATTRS:
        m = getattr(policy, name, None)
        if isinstance(m, nn.Module):
            return m
    found = [v for v in vars(policy).values() if isinstance(v, nn.Module)] if hasattr(policy, "__dict__") else []
    return found[0] if len(found) == 1 else None


class EpisodeStateAccess:
    """Reads and writes the policy's per-episode state. A fresh episode is ``None``."""

    def __init__(self, policy: Any):
        self.module = find_torch_module(policy)

    @property
    def stateful(self) -> bool:
        return self.module is not None

    def capture(self) -> dict[str, dict] | None:
        from ..quant import ttq_state

        return None if self.module is None else ttq_state(self.module)

    def restore(self, state: dict[str, dict] | None) -> None:
        from ..quant import load_ttq_state

        if self.module is not None:
            load_ttq_state(self.module, state or {})


_ids = itertools.count(1)


@dataclass
class ClientSession:
    """Everything the server remembers about one connection."""

    peer: str
    id: int = 0
    episode_state: Any = None  # None: the next request starts (calibrates) a new episode
    episodes: int = 1
    steps: int = 0  # inferences in the current episode
    requests: int = 0
    errors: int = 0
    prev_total_ms: float | None = None

    def __post_init__(self) -> None:
        if not self.id:
            self.id = next(_ids)

    def new_episode(self) -> None:
        self.episode_state = None
        if self.steps:
            self.episodes += 1
        self.steps = 0


__all__ = ["ClientSession", "EpisodeStateAccess", "find_torch_module"]
