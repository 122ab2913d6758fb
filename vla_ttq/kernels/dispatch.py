"""Backend registry and automatic choice (override with ``backend=``)."""

from __future__ import annotations

from typing import Callable

import torch

from ..quant.packing import PackedWeight
from . import reference

# name -> (is_available(device, bits, group) -> bool, quant_matmul, quantize_pack)
_BACKENDS: dict[str, tuple[Callable[..., bool], Callable[..., torch.Tensor], Callable[..., PackedWeight]]] = {
    "reference": (lambda device, bits, group: True, reference.quant_matmul, reference.quantize_pack),
}
# Preference order for "auto": the first available one wins.
_AUTO_ORDER: list[str] = ["reference"]


def register_backend(name: str, is_available, matmul, pack, prefer: bool = False) -> None:
    _BACKENDS[name] = (is_available, matmul, pack)
    if name not in _AUTO_ORDER:
        _AUTO_ORDER.insert(0 if prefer else len(_AUTO_ORDER) - 1, name)


def available_backends(device: torch.device | str = "cpu", bits: int = 4, group: int = 64) -> list[str]:
    return [n for n in _AUTO_ORDER if _BACKENDS[n][0](torch.device(device), bits, group)]


def select_backend(device: torch.device | str, bits: int, group: int, override: str | None = None) -> str:
    if override and override != "auto":
        if override not in _BACKENDS:
            raise ValueError(f"unknown kernel backend {override!r}; known: {', '.join(sorted(_BACKENDS))}")
        if not _BACKENDS[override][0](torch.device(device), bits, group):
            raise ValueError(f"kernel backend {override!r} cannot run {bits}-bit g{group} on {device}")
        return override
    return available_backends(device, bits, group)[0]


def quant_matmul(x, packed, col_scale=None, lowrank=None, bias=None, backend: str = "reference"):
    return _BACKENDS[backend][1](x, packed, col_scale, lowrank, bias)


def quantize_pack(w, col_scale, bits, group, symmetric=False, nu=1.0, scale_dtype=torch.float16, backend="reference"):
    return _BACKENDS[backend][2](w, col_scale, bits, group, symmetric, nu, scale_dtype)
