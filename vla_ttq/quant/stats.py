"""Streaming activation statistics for offline calibration (AWQ).

One :class:`ActivationStats` per linear layer accumulates, over any number of calibration
batches, the per-channel sum of ``|x|^p`` (float64, so long streams do not lose precision) and
a bounded uniform sample of input tokens (reservoir sampling) on which AWQ's α line search
evaluates the activation-aware loss of eq. 14-15. Memory is O(d * reservoir) per layer however
long the calibration stream is.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .scaling import channel_stat_from_sums


class ActivationStats:
    def __init__(self, dim: int, p: float = 2.0, reservoir: int = 1024, seed: int = 0):
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        if reservoir < 0:
            raise ValueError(f"reservoir must be >= 0, got {reservoir}")
        self.dim, self.p, self.reservoir = dim, float(p), reservoir
        self.power_sum = torch.zeros(dim, dtype=torch.float64)
        self.count = 0
        self.samples = torch.zeros(0, dim)
        self._gen = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Add activations of shape (..., dim) (all leading dims are tokens)."""
        if x.shape[-1] != self.dim:
            raise ValueError(f"activation has {x.shape[-1]} channels, statistics expect {self.dim}")
        x2 = x.detach().reshape(-1, self.dim).float()
        if not bool(torch.isfinite(x2).all()):
            raise ValueError("calibration activations contain NaN/inf")
        a = x2.abs()
        self.power_sum = self.power_sum.to(x2.device)
        if math.isinf(self.p):
            self.power_sum = torch.maximum(self.power_sum, a.amax(dim=0).double())
        else:
            self.power_sum += (a * a if self.p == 2.0 else a.pow(self.p)).sum(dim=0).double()
        self._reservoir_add(x2)
        self.count += x2.shape[0]

    def _reservoir_add(self, x2: torch.Tensor) -> None:
        """Algorithm R: every token seen so far is kept with equal probability."""
        if self.reservoir == 0:
            return
        self.samples = self.samples.to(x2.device)
        n = x2.shape[0]
        room = max(0, self.reservoir - self.samples.shape[0])
        if room:
            self.samples = torch.cat([self.samples, x2[:room]])
        if n > room:
            seen = self.count + room + torch.arange(n - room, dtype=torch.float64)
            u = torch.rand(n - room, generator=self._gen, dtype=torch.float64)
            slot = (u * (seen + 1)).long()  # uniform in [0, seen]
            keep = slot < self.reservoir
            idx = torch.nonzero(keep).squeeze(1)
            if idx.numel():
                self.samples[slot[idx].to(x2.device)] = x2[room:][idx.to(x2.device)]

    def channel_stat(self) -> torch.Tensor:
        if self.count == 0:
            raise ValueError("no calibration activations were recorded for this layer")
        return channel_stat_from_sums(self.power_sum, self.count, self.p).float()

    # --- persistence: calibration is expensive (simulator rollouts), so it is saved and reused.
    def state(self, prefix: str) -> dict[str, torch.Tensor]:
        meta = torch.tensor([self.dim, self.count, self.reservoir], dtype=torch.int64)
        return {
            f"{prefix}.power_sum": self.power_sum.cpu(),
            f"{prefix}.samples": self.samples.cpu().contiguous(),
            f"{prefix}.meta": meta,
            f"{prefix}.p": torch.tensor([self.p], dtype=torch.float64),
        }

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], prefix: str) -> ActivationStats:
        dim, count, reservoir = (int(v) for v in tensors[f"{prefix}.meta"])
        s = cls(dim, float(tensors[f"{prefix}.p"][0]), reservoir)
        s.power_sum = tensors[f"{prefix}.power_sum"].double()
        s.samples = tensors[f"{prefix}.samples"].float()
        s.count = count
        return s


def save_stats(stats: dict[str, ActivationStats], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    tensors: dict[str, torch.Tensor] = {}
    for name, st in stats.items():
        tensors.update(st.state(name))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(path) + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata or {})
    tmp.replace(path)  # atomic: a crash never leaves a half-written calibration file


def load_stats(path: str | Path) -> dict[str, ActivationStats]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"calibration statistics file not found: {path}")
    tensors = load_file(str(path))
    names = sorted({k.rsplit(".", 1)[0] for k in tensors if k.endswith(".meta")})
    return {n: ActivationStats.from_state(tensors, n) for n in names}
