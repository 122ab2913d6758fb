"""The torch reference backend: dequantize then matmul. Defines what every backend must compute."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..quant.groupwise import quantize_groupwise
from ..quant.packing import PackedWeight
from ..quant.scaling import channel_stat, scale_columns
from ..quant.scaling import column_scale as _column_scale


def residual(w: torch.Tensor, lowrank: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """W - B A (float32), or W itself without a low-rank part.

    One full-size temporary: B A, negated and W added in place. -(BA) + W is exactly W - BA in
    IEEE arithmetic, and add_ reads W (bf16 or fp32) converted to float32 on the fly, so the result
    is bit-identical to w.float() - BA without W's float32 copy."""
    if lowrank is None:
        return w
    b, a = lowrank
    ba = b.float().to(w.device) @ a.float().to(w.device)
    return ba.neg_().add_(w)


def quantize_pack(
    w: torch.Tensor,
    col_scale: torch.Tensor | None,
    bits: int,
    group: int,
    symmetric: bool = False,
    nu: float = 1.0,
    scale_dtype: torch.dtype = torch.float16,
    lowrank: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> PackedWeight:
    """Pack ``Q[(w - B A) * col_scale]`` (the online TTQ step, or the offline one of RTN/AWQ;
    ``lowrank`` = (B, A) or None)."""
    w = residual(w, lowrank)
    wf = w.float() if col_scale is None else scale_columns(w, col_scale)
    return PackedWeight.from_quantized(quantize_groupwise(wf, bits, group, symmetric, nu, check=False, param_dtype=scale_dtype), scale_dtype)


def column_scale(x: torch.Tensor, p: float = 2.0, lam: float = 0.4, alpha: float = 0.5) -> torch.Tensor:
    """s = D^½ of activation x (``vla_ttq.quant.scaling``), the definition the kernels fuse."""
    return _column_scale(channel_stat(x, p), lam, alpha)


def effective_weight(packed: PackedWeight, col_scale: torch.Tensor | None) -> torch.Tensor:
    w = packed.dequantize()
    return w if col_scale is None else w / col_scale


def quant_matmul(
    x: torch.Tensor,
    packed: PackedWeight,
    col_scale: torch.Tensor | None = None,
    lowrank: tuple[torch.Tensor, torch.Tensor] | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    y = F.linear(x, effective_weight(packed, col_scale).to(x.dtype), bias)
    return y if lowrank is None else y + lowrank_term(x, lowrank)


def lowrank_term(x: torch.Tensor, lowrank: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """(x Aᵀ) Bᵀ in x's dtype: the full-precision low-rank part that every backend adds."""
    b, a = lowrank
    return F.linear(F.linear(x, a.to(x.dtype)), b.to(x.dtype))


def prescaled_gemm(x: torch.Tensor, n_out: int, gemm, col_scale: torch.Tensor | None = None,
                   lowrank: tuple[torch.Tensor, torch.Tensor] | None = None,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = gemm(x / col_scale) + (x Aᵀ) Bᵀ + bias for a library GEMM that cannot fuse the prescale
    or the low-rank term (torch int4, Marlin): ``gemm`` maps the 2-D prescaled input to (M, n_out)."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    xs = x2 if col_scale is None else x2 / col_scale.to(x2.dtype)
    y = gemm(xs).to(x.dtype)
    if lowrank is not None:
        y = y + lowrank_term(x2, lowrank)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.reshape(*lead, n_out)
