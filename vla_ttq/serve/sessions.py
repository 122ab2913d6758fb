"""Per-client state: each connection keeps its own TTQ calibration and its own noise stream.

One policy serves every client, so before a client's request the server swaps in

* the TTQ layers' episode caches (``recompute="episode"``; ``vla_ttq.quant.ttq_state`` /
  ``load_ttq_state``), reset to "not calibrated" when the client starts a new episode, and
* the state of every ``torch.Generator`` the policy owns (flow-matching noise), which starts at
  the policy's initial state for every client and carries on across that client's episodes,

and snapshots both after it. A client thus gets exactly the actions it would get from its own
freshly loaded copy of the policy, whatever other clients do. Restoring and snapshotting assign
references (a calibration is never changed in place), except that a snapshot copies the tensors of
layers the fast sampler (``vla_ttq.models.fast``) shares and refreshes in place.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any


def _torch_attrs(policy: Any):
    import torch  # here, so that clients importing vla_ttq.serve need no torch

    values = [policy] if isinstance(policy, torch.nn.Module) else list(getattr(policy, "__dict__", {}).values())
    modules = [v for v in values if isinstance(v, torch.nn.Module)]
    generators = [v for v in values if isinstance(v, torch.Generator)]
    return modules, generators


def outermost_modules(modules: list) -> list:
    """Drop modules that are submodules of another one in the list (a policy may keep both)."""
    out = []
    for m in modules:
        if any(o is not m and any(sub is m for sub in o.modules()) for o in modules):
            continue
        if not any(o is m for o in out):
            out.append(m)
    return out


@dataclass
class ClientState:
    ttq: list[dict] | None = None  # per outermost module; None: not calibrated (new episode)
    rng: list[Any] = field(default_factory=list)


class ClientStateAccess:
    """Reads and writes the per-client parts of a policy's state (see the module docstring)."""

    def __init__(self, policy: Any):
        modules, self.generators = _torch_attrs(policy)
        self.modules = outermost_modules(modules)
        self.initial_rng = [g.get_state() for g in self.generators]

    @property
    def stateful(self) -> bool:
        return bool(self.modules or self.generators)

    def new_client(self) -> ClientState:
        return ClientState(ttq=None, rng=[s.clone() for s in self.initial_rng])

    def capture(self) -> ClientState:
        from ..quant import ttq_state

        return ClientState(ttq=[ttq_state(m) for m in self.modules], rng=[g.get_state() for g in self.generators])

    def restore(self, state: ClientState) -> None:
        from ..quant import load_ttq_state

        for i, m in enumerate(self.modules):
            load_ttq_state(m, state.ttq[i] if state.ttq is not None else {})
        for g, s in zip(self.generators, state.rng):
            g.set_state(s)


_ids = itertools.count(1)


@dataclass
class ClientSession:
    """Everything the server remembers about one connection."""

    peer: str
    state: ClientState = field(default_factory=ClientState)
    id: int = 0
    episodes: int = 1
    steps: int = 0  # inferences in the current episode
    requests: int = 0
    errors: int = 0
    prev_total_ms: float | None = None

    def __post_init__(self) -> None:
        if not self.id:
            self.id = next(_ids)

    def new_episode(self) -> None:
        self.state = ClientState(ttq=None, rng=self.state.rng)  # the noise stream carries on
        if self.steps:
            self.episodes += 1
        self.steps = 0


__all__ = ["ClientSession", "ClientState", "ClientStateAccess", "outermost_modules"]
