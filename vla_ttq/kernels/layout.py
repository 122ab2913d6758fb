"""The planar weight layout the Triton kernels read (and the online quantize kernel writes).

A ``bits``-bit code is split into power-of-two wide slices, lowest bits first: 3 = 2+1, 5 = 4+1,
6 = 4+2, 7 = 4+2+1 (2, 4 and 8 are one slice). Each slice of width ``w`` is packed on its own into
int32 words, so a kernel only ever extracts fields of width 1, 2, 4 or 8 with one shift and one
mask, whatever ``bits`` is, and no field crosses a word boundary.

Inside one quantization group of ``g`` codes (g a multiple of 32) a slice takes ``wg = g*w/32``
words; word ``j`` holds, in its bit field ``i`` (bits ``i*w .. i*w+w-1``), the code at position
``i*wg + j`` of the group. So a kernel that shifts all the words of a tile by ``i*w`` gets codes
of ``wg`` consecutive input channels per group ("slab" i), and multiplies them with one
contiguous run of x per group: no register shuffles and no reshapes.

Row storage: the slices follow each other, ``K*w/32`` words each, so a row takes ``K*bits/32``
int32 words, exactly the bytes of the storage format of ``vla_ttq.quant.packing``.

:class:`PlanarPackedWeight` keeps the words and S, Z **transposed** (word row major, output
features contiguous): a warp then reads one word row of 32·4 consecutive outputs with 16-byte
loads, and every thread reduces over the input dimension in its own registers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..quant.packing import PackedWeight


def slice_widths(bits: int) -> list[tuple[int, int]]:
    """(bit offset, width) of each power-of-two slice of a ``bits``-bit code, lowest bits first."""
    if not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an integer in [1, 8], got {bits!r}")
    out, off = [], 0
    for w in (8, 4, 2, 1):
        if bits - off >= w:
            out.append((off, w))
            off += w
    return out


def check_planar_shape(shape: tuple[int, int], group: int) -> None:
    rows, cols = shape
    if group % 32:
        raise ValueError(f"the planar layout needs a group size that is a multiple of 32, got {group}")
    if cols % group:
        raise ValueError(f"group size {group} does not divide the input dimension {cols}")


def planar_pack(codes: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """Pack (rows, cols) codes < 2**bits into (rows, cols*bits/32) int32 words (module docstring)."""
    rows, cols = codes.shape
    check_planar_shape((rows, cols), group)
    c = codes.to(torch.int64)
    parts = []
    for off, w in slice_widths(bits):
        wg, cpw = group * w // 32, 32 // w
        field = ((c >> off) & (2**w - 1)).reshape(rows, cols // group, cpw, wg)
        shifts = (torch.arange(cpw, device=c.device, dtype=torch.int64) * w).view(1, 1, cpw, 1)
        word = (field << shifts).sum(dim=2)  # disjoint bit fields: the sum is an OR, < 2**32
        parts.append(word.reshape(rows, -1))
    words = torch.cat(parts, dim=1)
    return (words - (words >= 2**31).to(torch.int64) * 2**32).to(torch.int32)  # reinterpret as int32


def planar_unpack(words: torch.Tensor, bits: int, group: int, cols: int) -> torch.Tensor:
    """Exact inverse of :func:`planar_pack`; returns uint8 codes of shape (rows, cols)."""
    rows = words.shape[0]
    check_planar_shape((rows, cols), group)
    if tuple(words.shape) != (rows, cols * bits // 32):
        raise ValueError(f"planar words have shape {tuple(words.shape)}, expected {(rows, cols * bits // 32)}")
    u = words.to(torch.int64) & 0xFFFFFFFF
    codes = torch.zeros(rows, cols, dtype=torch.int64, device=words.device)
    col = 0
    for off, w in slice_widths(bits):
        wg, cpw, n = group * w // 32, 32 // w, cols * w // 32
        part = u[:, col:col + n].reshape(rows, cols // group, 1, wg)
        shifts = (torch.arange(cpw, device=u.device, dtype=torch.int64) * w).view(1, 1, cpw, 1)
        codes |= (((part >> shifts) & (2**w - 1)) << off).reshape(rows, cols)
        col += n
    return codes.to(torch.uint8)


@dataclass
class PlanarPackedWeight(PackedWeight):
    """A :class:`PackedWeight` in the planar layout, transposed (same byte count).

    ``data`` is int32 of shape (K*bits/32, N); ``scale`` and ``zero`` keep the (N, K/g) shape of
    every PackedWeight but are transposed views of contiguous (K/g, N) tensors (``scale_t``).
    """

    def codes(self) -> torch.Tensor:
        return planar_unpack(self.data.t(), self.bits, self.group, self.shape[1])

    @property
    def scale_t(self) -> torch.Tensor:
        return self.scale.t()

    @property
    def zero_t(self) -> torch.Tensor:
        return self.zero.t()

    def to(self, device: torch.device | str) -> PlanarPackedWeight:
        return PlanarPackedWeight(self.data.to(device), self.scale_t.to(device).t(), self.zero_t.to(device).t(),
                                  self.bits, self.group, self.shape)

    @classmethod
    def from_packed(cls, packed: PackedWeight) -> PlanarPackedWeight:
        """Repack the storage format (once per static layer; TTQ's online step writes planar directly)."""
        if isinstance(packed, PlanarPackedWeight):
            return packed
        words = planar_pack(packed.codes(), packed.bits, packed.group)
        return cls(words.t().contiguous(), packed.scale.t().contiguous().t(), packed.zero.t().contiguous().t(),
                   packed.bits, packed.group, packed.shape)
