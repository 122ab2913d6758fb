"""Groupwise round-to-nearest quantization (paper eq. 1, 6-9, 21-30).

A weight W of shape (d', d) is cut into groups of ``group`` consecutive input channels per row.
Each group gets a scale S and a zero-point Z and integer codes in [0, 2^q - 1]:

    W_int = clamp_q(round((W - Z) / S)),     W_hat = W_int * S + Z          (eq. 6-7)

Asymmetric (eq. 25-26, optionally expanded by nu, eq. 27-28):  Z = W'min, S = (W'max - W'min)/(2^q-1)
Symmetric  (eq. 29-30):                                      Z = -|W|max, S = 2|W|max/(2^q-1)

All arithmetic is done in float32 whatever the input dtype, so results do not depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MIN_BITS, MAX_BITS = 1, 8


@dataclass
class GroupQuantized:
    """Integer codes with their per-group scale and zero-point (unpacked, float32 parameters)."""

    codes: torch.Tensor  # uint8, (d', d)
    scale: torch.Tensor  # float32, (d', d // group)
    zero: torch.Tensor  # float32, (d', d // group)
    bits: int
    group: int

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_groupwise(self.codes, self.scale, self.zero, self.group).to(dtype)


def _where(name: str | None) -> str:
    return f" of layer '{name}'" if name else ""


def check_bits(bits: int) -> None:
    if not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an integer in [{MIN_BITS}, {MAX_BITS}], got {bits!r}")


def check_group(shape: tuple[int, ...], group: int, name: str | None = None) -> None:
    if len(shape) != 2:
        raise ValueError(f"expected a 2-D weight{_where(name)}, got shape {tuple(shape)}")
    if not isinstance(group, int) or group <= 0:
        raise ValueError(f"group size must be a positive integer, got {group!r}")
    if shape[1] % group:
        raise ValueError(
            f"group size {group} does not divide the input dimension {shape[1]}{_where(name)} "
            f"(weight shape {shape[0]}x{shape[1]}); choose a group size that divides {shape[1]}"
        )


def check_finite(t: torch.Tensor, what: str, name: str | None = None) -> None:
    """Raise if ``t`` holds NaN or inf. Costs a device sync: callers on a hot path may skip it."""
    finite = torch.isfinite(t)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ValueError(f"{what}{_where(name)} contains {bad} NaN/inf value(s); refusing to quantize")


def group_params(
    wg: torch.Tensor, bits: int, symmetric: bool = False, nu: float = 1.0,
    param_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero-point for grouped float32 weights ``wg`` of shape (..., group).

    They are rounded to ``param_dtype`` (how they will be stored) before the codes are chosen,
    so the codes are the nearest ones for the parameters actually kept.
    """
    qmax = 2**bits - 1
    if symmetric:
        amax = wg.abs().amax(dim=-1, keepdim=True)
        wmax, wmin = amax, -amax
    else:
        wmax = wg.amax(dim=-1, keepdim=True)
        wmin = wg.amin(dim=-1, keepdim=True)
    if nu != 1.0:  # eq. 27-28: expand (nu > 1) or shrink (nu < 1) the range about its centre
        wmax, wmin = (1 + nu) / 2 * wmax + (1 - nu) / 2 * wmin, (1 - nu) / 2 * wmax + (1 + nu) / 2 * wmin
    scale = (wmax - wmin) / qmax
    # A constant group (range 0) gets a tiny positive scale so codes are 0 and W_hat == Z exactly:
    # no 0/0. The floor is relative to the group's magnitude so it never changes a real scale.
    tiny = torch.finfo(torch.float32).tiny
    floor = torch.clamp(wmax.abs().maximum(wmin.abs()) * 2**-20, min=tiny)
    scale = torch.where(scale > 0, scale, floor)
    if param_dtype != torch.float32:
        scale = scale.to(param_dtype).float()
        scale = torch.where(scale > 0, scale, torch.finfo(param_dtype).smallest_normal)  # fp16 underflow
        wmin = wmin.to(param_dtype).float()
    return scale, wmin


def quantize_groupwise(
    w: torch.Tensor,
    bits: int,
    group: int,
    symmetric: bool = False,
    nu: float = 1.0,
    name: str | None = None,
    check: bool = True,
    param_dtype: torch.dtype = torch.float32,
) -> GroupQuantized:
    """Quantize a 2-D weight groupwise along its input dimension (rows of ``group`` columns).

    ``param_dtype`` is the dtype S and Z will be stored in (see :func:`group_params`).
    """
    check_bits(bits)
    check_group(tuple(w.shape), group, name)
    if nu <= 0:
        raise ValueError(f"expansion factor nu must be > 0, got {nu}")
    if check:
        check_finite(w, "weight", name)
    rows, cols = w.shape
    wg = w.detach().float().reshape(rows, cols // group, group)
    scale, zero = group_params(wg, bits, symmetric, nu, param_dtype)
    codes = torch.clamp(torch.round((wg - zero) / scale), 0, 2**bits - 1)
    return GroupQuantized(
        codes=codes.to(torch.uint8).reshape(rows, cols),
        scale=scale.squeeze(-1),
        zero=zero.squeeze(-1),
        bits=bits,
        group=group,
    )


def dequantize_groupwise(
    codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group: int
) -> torch.Tensor:
    """W_hat = codes * S + Z (eq. 7), returned in float32."""
    rows, cols = codes.shape
    cg = codes.float().reshape(rows, cols // group, group)
    return (cg * scale.float().unsqueeze(-1) + zero.float().unsqueeze(-1)).reshape(rows, cols)


def qdq(
    w: torch.Tensor,
    bits: int,
    group: int,
    symmetric: bool = False,
    nu: float = 1.0,
    name: str | None = None,
    check: bool = True,
) -> torch.Tensor:
    """Quantize-dequantize Q[W] (eq. 5) in float32: the RTN of the paper's pseudo-code."""
    return quantize_groupwise(w, bits, group, symmetric, nu, name, check).dequantize()
