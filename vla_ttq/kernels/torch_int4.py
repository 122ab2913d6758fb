"""W4 through torch's built-in tinygemm kernel (``aten._weight_int4pack_mm``, CUDA, bf16).

tinygemm dequantizes ``(q - 8) * scale + zero``, so our ``q * S + Z`` maps to ``zero = Z + 8 S``.
It has no input prescale and no low-rank term: x / cs, the low-rank product and the bias are
separate torch ops around it (as in the paper's Marlin set-up).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..quant.packing import PackedWeight
from . import reference

GROUPS = (32, 64, 128, 256)


def is_available(device: torch.device, bits: int, group: int) -> bool:
    return (bits == 4 and group in GROUPS and device.type == "cuda"
            and hasattr(torch.ops.aten, "_weight_int4pack_mm") and torch.cuda.get_device_capability(device)[0] >= 8)


@dataclass
class Int4PackedWeight(PackedWeight):
    """Storage-format weight plus tinygemm's tiled copy of it (built once by :func:`prepare`)."""

    int4pack: torch.Tensor | None = None
    scales_and_zeros: torch.Tensor | None = None

    def to(self, device):
        return prepare(PackedWeight.to(self, device))


def _inner_k_tiles(K: int) -> int:
    for tiles in (8, 4, 2):
        if K % (tiles * 16) == 0:
            return tiles
    raise ValueError(f"torch_int4 needs the input dimension to be a multiple of 32, got {K}")


def prepare(packed: PackedWeight) -> Int4PackedWeight:
    if isinstance(packed, Int4PackedWeight):
        return packed
    if packed.bits != 4 or packed.group not in GROUPS:
        raise ValueError(f"torch_int4 runs 4-bit weights with group in {GROUPS}, got {packed.bits}-bit g{packed.group}")
    N, K = packed.shape
    if N % 8:
        raise ValueError(f"torch_int4 needs the output dimension to be a multiple of 8, got {N}")
    codes = packed.codes().to(torch.int32)
    u8 = ((codes[:, ::2] << 4) | codes[:, 1::2]).to(torch.uint8).contiguous()  # even column in the high nibble
    wp = torch.ops.aten._convert_weight_to_int4pack(u8, _inner_k_tiles(K))
    s, z = packed.scale.float(), packed.zero.float()
    sz = torch.stack([s.t(), (z + 8 * s).t()], dim=-1).to(torch.bfloat16).contiguous()  # (G, N, 2)
    return Int4PackedWeight(packed.data, packed.scale, packed.zero, packed.bits, packed.group, packed.shape, wp, sz)


def quant_matmul(x, packed, col_scale=None, lowrank=None, bias=None) -> torch.Tensor:
    p = prepare(packed)

    def gemm(xs: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm(xs.to(torch.bfloat16).contiguous(), p.int4pack, p.group,
                                                  p.scales_and_zeros)

    return reference.prescaled_gemm(x, p.shape[0], gemm, col_scale, lowrank, bias)


def quantize_pack(w, col_scale, bits, group, symmetric=False, nu=1.0, scale_dtype=torch.float16,
                  lowrank=None) -> Int4PackedWeight:
    """The reference online step, then tinygemm's repack (torch has no fused quantize for it)."""
    return prepare(reference.quantize_pack(w, col_scale, bits, group, symmetric, nu, scale_dtype, lowrank))
