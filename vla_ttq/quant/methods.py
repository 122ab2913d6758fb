"""RTN, AWQ and TTQ as functions of (W, X): the maths of the paper, no model knowledge.

All three are the scaled QDQ of eq. 20 applied to the (optionally low-rank-corrected) weight:

    W_hat = BA + Q[(W - BA) s] / s,   s = D^½ (see ``scaling.py`` for D)

RTN: s = 1, no low rank.  AWQ: s from offline calibration statistics, α line-searched on the
activation-aware loss (eq. 14-15).  TTQ: s from the incoming activation X itself on every call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .groupwise import GroupQuantized, check_finite, quantize_groupwise
from .scaling import channel_stat, column_scale


@dataclass
class ScaledQuantized:
    """Codes of ``Q[(W - BA) s]`` plus the column scale needed to undo the prescale."""

    q: GroupQuantized
    col_scale: torch.Tensor | None  # (d,) float32, None means s = 1

    def dequantize(self) -> torch.Tensor:
        w = self.q.dequantize()
        return w if self.col_scale is None else w / self.col_scale


def lowrank_factors(w: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-r SVD factors (appendix E): B = U Λ^½ (d' x r), A = Λ^½ V (r x d), so BA = svd_r(W).

    (The paper's eq. 33 prints Λ^-½; Λ^½ is what makes BA the rank-r approximation.)
    """
    if not isinstance(rank, int) or rank < 0:
        raise ValueError(f"rank must be a non-negative integer, got {rank!r}")
    if rank > min(w.shape):
        raise ValueError(f"rank {rank} exceeds min(weight shape) = {min(w.shape)}")
    u, sv, vh = torch.linalg.svd(w.detach().float(), full_matrices=False)
    root = sv[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


def scaled_quantize(
    w: torch.Tensor,
    bits: int,
    group: int,
    col_scale: torch.Tensor | None = None,
    symmetric: bool = False,
    nu: float = 1.0,
    name: str | None = None,
    check: bool = True,
) -> ScaledQuantized:
    """``Q[W s]`` groupwise; ``w`` should already have any low-rank part removed."""
    wf = w.detach().float()
    if col_scale is not None:
        if col_scale.shape != (w.shape[1],):
            raise ValueError(f"column scale has shape {tuple(col_scale.shape)}, expected ({w.shape[1]},)")
        wf = wf * col_scale
    return ScaledQuantized(quantize_groupwise(wf, bits, group, symmetric, nu, name, check), col_scale)


def rtn(w: torch.Tensor, bits: int, group: int, symmetric: bool = False, nu: float = 1.0) -> torch.Tensor:
    """Plain groupwise RTN, dequantized (the paper's ``rtn`` pseudo-code)."""
    return scaled_quantize(w, bits, group, None, symmetric, nu).dequantize()


def awq_qdq(
    w: torch.Tensor, c: torch.Tensor, bits: int, group: int, lam: float, alpha: float, **kw
) -> torch.Tensor:
    """AWQ's scaled QDQ for a given channel statistic ``c`` (eq. 19-20), dequantized."""
    return scaled_quantize(w, bits, group, column_scale(c, lam, alpha), **kw).dequantize()


def ttq_qdq(
    w: torch.Tensor,
    x: torch.Tensor,
    bits: int,
    group: int,
    p: float = 2.0,
    lam: float = 0.4,
    alpha: float = 0.5,
    lowrank: tuple[torch.Tensor, torch.Tensor] | None = None,
    symmetric: bool = False,
    nu: float = 1.0,
) -> torch.Tensor:
    """TTQ's effective weight for input ``x`` (..., d): BA + Q[(W - BA) D^½] D^-½, D from x."""
    check_finite(x, "activation")
    s = column_scale(channel_stat(x, p), lam, alpha)
    if lowrank is None:
        return scaled_quantize(w, bits, group, s, symmetric, nu).dequantize()
    b, a = lowrank
    ba = b.float() @ a.float()
    return ba + scaled_quantize(w.float() - ba, bits, group, s, symmetric, nu).dequantize()


def activation_aware_loss(
    w: torch.Tensor, w_hat: torch.Tensor, x: torch.Tensor, lam: float = 0.0
) -> torch.Tensor:
    """Eq. 14: (1-λ)||(W - W_hat) X||² + λ η ||W - W_hat||², η = ||X||²/d, per token (mean over T).

    ``x`` is (T, d) (rows are tokens). With λ = 0 this is the output error of eq. 10.
    """
    x2 = x.reshape(-1, x.shape[-1]).double()
    delta = (w.double() - w_hat.double())
    out_err = (x2 @ delta.T).pow(2).sum() / x2.shape[0]
    if lam == 0.0:
        return out_err
    eta = x2.pow(2).sum() / (x2.shape[0] * x2.shape[1])
    return (1 - lam) * out_err + lam * eta * delta.pow(2).sum()


DEFAULT_ALPHA_GRID = tuple(i / 20 for i in range(21))  # 0, 0.05, ..., 1.0


def awq_search_alpha(
    w: torch.Tensor,
    c: torch.Tensor,
    x_sample: torch.Tensor,
    bits: int,
    group: int,
    lam: float,
    grid: tuple[float, ...] = DEFAULT_ALPHA_GRID,
    **kw,
) -> tuple[float, float]:
    """Line search of α minimising eq. 14-15 on calibration tokens; returns (best α, its loss).

    α = 0 is plain RTN, so the search can never do worse than RTN on the calibration sample.
    """
    if x_sample.shape[0] == 0:
        raise ValueError("AWQ α search needs calibration tokens; the reservoir is empty")
    best = (float("nan"), float("inf"))
    for alpha in grid:
        loss = float(activation_aware_loss(w, awq_qdq(w, c, bits, group, lam, alpha, **kw), x_sample, lam))
        if loss < best[1]:
            best = (alpha, loss)
    return best
