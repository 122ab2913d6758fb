"""Backend registry and automatic choice (override with ``backend=``).

A backend computes ``y = (x / cs) @ Ŵᵀ + (x Aᵀ) Bᵀ + bias`` (``quant_matmul``) and TTQ's online
``quantize_pack``; ``prepare`` turns the storage-format :class:`PackedWeight` into whatever the
backend reads (once per static layer: :class:`~vla_ttq.quant.modules.QuantLinear` caches it).
"auto" takes the first backend in preference order that can run the case *and* is meant for
automatic use on that device (the Triton interpreter runs on CPU, but only when asked for).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Callable

import torch

from ..quant.packing import PackedWeight
from . import marlin, reference, torch_int4, triton_backend


@dataclass(frozen=True)
class Backend:
    is_available: Callable[[torch.device, int, int], bool]  # (device, bits, group) -> can run it
    matmul: Callable[..., torch.Tensor]
    pack: Callable[..., PackedWeight]
    prepare: Callable[[PackedWeight], PackedWeight] = lambda packed: packed
    auto_ok: Callable[[torch.device], bool] = lambda device: True
    # Optional fused forms of "pack, then matmul" (TTQ's per-call step) and of the column scale; the
    # composition of ``pack`` and ``matmul`` and the torch reference stand in where a backend has none.
    online_matmul: Callable[..., torch.Tensor] | None = None
    column_scale: Callable[..., torch.Tensor] = reference.column_scale


_BACKENDS: dict[str, Backend] = {
    "reference": Backend(lambda device, bits, group: True, reference.quant_matmul, reference.quantize_pack),
}
# Preference order for "auto": the first available one wins.
_AUTO_ORDER: list[str] = ["reference"]


def register_backend(name: str, is_available, matmul, pack, prefer: bool = False,
                     prepare=None, auto_ok=None, online_matmul=None, column_scale=None) -> None:
    """Add a backend; ``prefer`` puts it first in the auto order, else just before 'reference'."""
    optional = {k: v for k, v in (("prepare", prepare), ("auto_ok", auto_ok), ("online_matmul", online_matmul),
                                  ("column_scale", column_scale)) if v is not None}
    _BACKENDS[name] = Backend(is_available, matmul, pack, **optional)  # Backend's defaults otherwise
    if name not in _AUTO_ORDER:
        _AUTO_ORDER.insert(0 if prefer else len(_AUTO_ORDER) - 1, name)


def available_backends(device: torch.device | str = "cpu", bits: int = 4, group: int = 64) -> list[str]:
    """Backends that can run ``bits``/``group`` on ``device``, in auto preference order."""
    return [n for n in _AUTO_ORDER if _BACKENDS[n].is_available(torch.device(device), bits, group)]


def select_backend(device: torch.device | str, bits: int, group: int, override: str | None = None) -> str:
    device = torch.device(device)
    if override and override != "auto":
        if override not in _BACKENDS:
            raise ValueError(f"unknown kernel backend {override!r}; known: {', '.join(sorted(_BACKENDS))}")
        if not _BACKENDS[override].is_available(device, bits, group):
            raise ValueError(f"kernel backend {override!r} cannot run {bits}-bit g{group} on {device}")
        return override
    return next(n for n in available_backends(device, bits, group) if _BACKENDS[n].auto_ok(device))


def _get(backend: str) -> Backend:
    if backend not in _BACKENDS:
        raise ValueError(f"unknown kernel backend {backend!r}; known: {', '.join(sorted(_BACKENDS))}")
    return _BACKENDS[backend]


def prepare(packed: PackedWeight, backend: str = "reference") -> PackedWeight:
    return _get(backend).prepare(packed)


def quant_matmul(x, packed, col_scale=None, lowrank=None, bias=None, backend: str = "reference"):
    return _get(backend).matmul(x, packed, col_scale, lowrank, bias)


def quantize_pack(w, col_scale, bits, group, symmetric=False, nu=1.0, scale_dtype=torch.float16, backend="reference",
                  lowrank=None):
    """Q[(w - B A) · col_scale] in ``backend``'s layout (``lowrank`` = (B, A) or None). A backend
    whose ``pack`` takes no ``lowrank`` gets the residual W - B A computed by torch."""
    return _pack(_get(backend), w, col_scale, bits, group, symmetric, nu, scale_dtype, lowrank)


def _pack(be: Backend, w, col_scale, bits, group, symmetric, nu, scale_dtype, lowrank):
    if lowrank is None:
        return be.pack(w, col_scale, bits, group, symmetric, nu, scale_dtype)
    if _takes_lowrank(be.pack):
        return be.pack(w, col_scale, bits, group, symmetric, nu, scale_dtype, lowrank=lowrank)
    return be.pack(reference.residual(w, lowrank), col_scale, bits, group, symmetric, nu, scale_dtype)


@functools.cache
def _takes_lowrank(pack) -> bool:
    return "lowrank" in inspect.signature(pack).parameters


def online_matmul(x, w, col_scale, lowrank, bias, bits, group, symmetric=False, nu=1.0, scale_dtype=torch.float16,
                  backend="reference"):
    """y = (x / s) · Q[(W - B A) s]ᵀ + (x Aᵀ) Bᵀ + bias with W quantized for this call only (TTQ's
    per-call step); a backend may fuse it, else it is ``quantize_pack`` then ``quant_matmul``."""
    be = _get(backend)
    if be.online_matmul is not None:
        return be.online_matmul(x, w, col_scale, lowrank, bias, bits, group, symmetric, nu, scale_dtype)
    packed = _pack(be, w, col_scale, bits, group, symmetric, nu, scale_dtype, lowrank)
    return be.matmul(x, packed, col_scale, lowrank, bias)


def column_scale(x, p=2.0, lam=0.4, alpha=0.5, backend="reference"):
    """s = D^½ per input channel of activation ``x`` (``vla_ttq.quant.scaling``), fused where the backend can."""
    return _get(backend).column_scale(x, p, lam, alpha)


# Auto order after registration: triton, torch_int4 (W4, CUDA), marlin (W4, where vLLM is importable), reference.
register_backend("torch_int4", torch_int4.is_available, torch_int4.quant_matmul, torch_int4.quantize_pack,
                 prepare=torch_int4.prepare)
register_backend("triton", triton_backend.is_available, triton_backend.quant_matmul, triton_backend.quantize_pack,
                 prefer=True, prepare=triton_backend.prepare, auto_ok=lambda device: device.type == "cuda",
                 online_matmul=triton_backend.online_matmul, column_scale=triton_backend.column_scale)
register_backend("marlin", marlin.is_available, marlin.quant_matmul, marlin.quantize_pack, prefer=False,
                 prepare=marlin.prepare)
