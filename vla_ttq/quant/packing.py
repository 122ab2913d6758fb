"""Bit-packing of integer codes into bytes, and the packed weight container.

Layout (one row of the weight at a time, little-endian): every 8 consecutive codes of ``bits``
bits form one ``8*bits``-bit word, code j at bit offset ``bits*j``, stored as ``bits`` bytes.
So 2-bit codes take 4 per byte, 4-bit 2 per byte (low nibble first), 8-bit one per byte and
3-bit 8 codes per 3 bytes. Rows are padded with zero codes to a multiple of 8.
GPU kernels may repack this into their own layout; this one is the storage format.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from .groupwise import GroupQuantized, check_bits, dequantize_groupwise

SCALE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def packed_row_bytes(cols: int, bits: int) -> int:
    return (cols + 7) // 8 * bits


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack a (rows, cols) tensor of codes < 2**bits into a (rows, packed_row_bytes) uint8 tensor."""
    check_bits(bits)
    if codes.dim() != 2:
        raise ValueError(f"codes must be 2-D, got shape {tuple(codes.shape)}")
    rows, cols = codes.shape
    c = codes.to(torch.int64)
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= 2**bits):
        raise ValueError(f"codes out of range for {bits}-bit packing: [{int(c.min())}, {int(c.max())}]")
    pad = (-cols) % 8
    if pad:
        c = torch.nn.functional.pad(c, (0, pad))
    if bits == 8:  # one code per byte; also keeps the 64-bit word below from overflowing
        return c.to(torch.uint8)
    c = c.reshape(rows, -1, 8)
    shifts = torch.arange(8, device=c.device, dtype=torch.int64) * bits
    word = (c << shifts).sum(dim=-1)  # (rows, words); 8*bits <= 56 bits, fits int64
    byte_shifts = torch.arange(bits, device=c.device, dtype=torch.int64) * 8
    out = (word.unsqueeze(-1) >> byte_shifts) & 0xFF  # (rows, words, bits)
    return out.to(torch.uint8).reshape(rows, -1)


def unpack_codes(packed: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """Exact inverse of :func:`pack_codes`; returns uint8 codes of shape (rows, cols)."""
    check_bits(bits)
    rows = packed.shape[0]
    if packed.shape[1] != packed_row_bytes(cols, bits):
        raise ValueError(
            f"packed rows have {packed.shape[1]} bytes, expected {packed_row_bytes(cols, bits)} "
            f"for {cols} columns at {bits} bits"
        )
    if bits == 8:
        return packed[:, :cols].clone()
    b = packed.to(torch.int64).reshape(rows, -1, bits)
    byte_shifts = torch.arange(bits, device=b.device, dtype=torch.int64) * 8
    word = (b << byte_shifts).sum(dim=-1)  # (rows, words)
    shifts = torch.arange(8, device=b.device, dtype=torch.int64) * bits
    codes = (word.unsqueeze(-1) >> shifts) & (2**bits - 1)
    return codes.reshape(rows, -1)[:, :cols].to(torch.uint8)


@dataclass
class PackedWeight:
    """A groupwise-quantized weight in real packed storage.

    ``nbytes`` counts every byte the layer keeps for its weight (codes, scales, zeros), so memory
    savings are measured from the tensors, not assumed from the bit width.
    """

    data: torch.Tensor  # uint8 (rows, packed_row_bytes(cols, bits))
    scale: torch.Tensor  # (rows, cols // group) in the storage dtype
    zero: torch.Tensor  # (rows, cols // group) in the storage dtype
    bits: int
    group: int
    shape: tuple[int, int]

    @classmethod
    def from_quantized(cls, q: GroupQuantized, scale_dtype: torch.dtype = torch.float16) -> PackedWeight:
        return cls(
            data=pack_codes(q.codes, q.bits),
            scale=q.scale.to(scale_dtype),
            zero=q.zero.to(scale_dtype),
            bits=q.bits,
            group=q.group,
            shape=tuple(q.codes.shape),
        )

    def codes(self) -> torch.Tensor:
        return unpack_codes(self.data, self.bits, self.shape[1])

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_groupwise(self.codes(), self.scale, self.zero, self.group).to(dtype)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor field by name: the storage format's, plus the copies in a kernel's own layout
        that a backend's subclass adds (all must be copied or refreshed together)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}

    def clone(self) -> PackedWeight:
        """A copy of every tensor (same class, same layout and strides)."""
        return replace(self, **{name: t.clone() for name, t in self.tensors().items()})

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.data, self.scale, self.zero))

    def to(self, device: torch.device | str) -> PackedWeight:
        return PackedWeight(
            self.data.to(device), self.scale.to(device), self.zero.to(device), self.bits, self.group, self.shape
        )
