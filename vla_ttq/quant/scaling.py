"""The diagonal correlation D of the activation-aware methods (paper eq. 13, 17, 19).

Definitions used throughout this package (the paper writes them in several equivalent forms):

* ``c_i``: the ℓp statistic of input channel i over the T tokens of X (d x T):
  ``c_i = (mean_t |X_it|^p)^(2/p)``. For p = 2 this is ``diag(X Xᵀ)/T``, the diagonal of the
  auto-correlation C of eq. 11; p = inf uses ``max_t |X_it|^2``.
* ``λ`` (``lam``): the **shrinkage** of eq. 13, ``C_λ = (1-λ) X Xᵀ + λ η I`` with
  ``η = ||X||²/d`` — on the diagonal, ``(1-λ) c_i + λ mean_j c_j``. λ ∈ [0, 1]: 0 is pure
  activation-aware, 1 is plain RTN; appendix F finds λ ≈ 0.4-0.5 best. Because the scaled QDQ is
  invariant to a global scale of D, this equals the damping form of eq. 17 (``X Xᵀ + λ' I``) with
  ``λ' = λ η / (1 - λ)``, but unlike an absolute λ' it means the same at any activation scale.
* ``D = diag(C_λ)^α`` (eq. 19), and the weight is scaled by ``D^½`` (eq. 20). With α = 0.5 the
  column scale is ``c_i^¼ ≈ ||X_i||^½``, the AWQ-style square root of the channel magnitude —
  the same as the pseudo-code's ``(X.norm(p) + lam) ** alpha`` multiplying W directly.

The returned column scale ``s = D^½`` is normalised to geometric mean 1 (harmless, by the
invariance above) so that the scaled weight ``W·s`` stays within fp16 range.
"""

from __future__ import annotations

import math

import torch


def channel_stat_from_sums(power_sum: torch.Tensor, count: int, p: float) -> torch.Tensor:
    """``c_i`` from streamed sums of ``|x|^p`` (or running max of ``|x|`` when p is inf)."""
    if math.isinf(p):
        return power_sum.double() ** 2
    return (power_sum.double() / max(count, 1)) ** (2.0 / p)


def channel_stat(x: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """``c_i`` for activations ``x`` of shape (..., d): statistics over all leading dims."""
    x2 = x.detach().reshape(-1, x.shape[-1]).float()
    if math.isinf(p):
        return x2.abs().amax(dim=0) ** 2
    if p == 2.0:
        return (x2 * x2).mean(dim=0)
    return x2.abs().pow(p).mean(dim=0) ** (2.0 / p)


def check_scale_params(lam: float, alpha: float) -> None:
    """The shrinkage λ and exponent α of D, checked by every implementation of ``column_scale``."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"shrinkage lambda must be in [0, 1], got {lam}")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")


def column_scale(c: torch.Tensor, lam: float, alpha: float) -> torch.Tensor:
    """``s = D^½`` with ``D = ((1-λ) c + λ mean(c))^α``, float32, geometric mean 1.

    Channels with zero statistics (dead inputs) are floored at 1e-12 of the largest statistic
    instead of 0, which would divide by zero; an all-zero input gives all-ones (plain RTN).
    """
    check_scale_params(lam, alpha)
    c = c.double()
    c_lam = (1.0 - lam) * c + lam * c.mean()
    peak = c_lam.max()
    c_lam = torch.where(peak > 0, torch.clamp(c_lam, min=peak * 1e-12), torch.ones_like(c_lam))
    log_s = 0.5 * alpha * torch.log(c_lam)
    return torch.exp(log_s - log_s.mean()).float()


def scale_columns(w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``w.float() * s`` (s per input column) without the float32 copy of a half-precision ``w``:
    with a float32 ``s`` the product is computed in float32 from the exact upcast of ``w``, so the
    result is the same, with one full-size temporary instead of two."""
    if s.dtype == torch.float32 and w.dtype in (torch.float16, torch.bfloat16, torch.float32):
        return w * s
    return w.float() * s
