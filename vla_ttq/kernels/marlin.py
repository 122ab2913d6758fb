"""W4 through vLLM's Marlin kernel, used where vLLM is installed (the ``marlin`` extra).

The paper's runtime benchmark used Marlin. We go through its float-zero-point mode (HQQ's), in which
Marlin computes ``(q - z) * s``: our ``q * S + Z`` maps to ``z = -Z / S``. vLLM's op signatures change
between releases, so the backend proves itself once per process: a small layer is run through it and
compared with the reference; if the import, the call or the comparison fails, the backend reports
itself unavailable (``unavailable_reason()`` says why) and "auto" moves on. vLLM cannot be installed
on the machines this project was developed on, so this path has not been run here.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch

from ..quant.packing import PackedWeight
from . import reference

_STATE: dict = {}  # "ok": bool, "reason": str


def unavailable_reason() -> str | None:
    return None if _STATE.get("ok") else _STATE.get("reason", "not probed yet")


def _ops():
    from vllm import _custom_ops as ops
    from vllm.model_executor.layers.quantization.utils import marlin_utils as mu
    from vllm.scalar_type import scalar_types

    return ops, mu, scalar_types


@dataclass
class MarlinPackedWeight(PackedWeight):
    qweight: torch.Tensor | None = None
    m_scales: torch.Tensor | None = None
    m_zeros: torch.Tensor | None = None
    workspace: torch.Tensor | None = None

    def to(self, device):
        return prepare(PackedWeight.to(self, device))


def _gptq_pack(codes: torch.Tensor) -> torch.Tensor:
    """(N, K) 4-bit codes -> GPTQ's (K/8, N) int32, code i of 8 consecutive input channels at bits 4i."""
    N, K = codes.shape
    c = codes.t().to(torch.int64).reshape(K // 8, 8, N)
    word = (c << (torch.arange(8, device=c.device) * 4).view(1, 8, 1)).sum(dim=1)
    return (word - (word >= 2**31).to(torch.int64) * 2**32).to(torch.int32).contiguous()


def prepare(packed: PackedWeight) -> MarlinPackedWeight:
    if isinstance(packed, MarlinPackedWeight):
        return packed
    ops, mu, _ = _ops()
    N, K = packed.shape
    dev = packed.data.device
    qweight = ops.gptq_marlin_repack(_gptq_pack(packed.codes()), torch.empty(0, dtype=torch.int, device=dev), K, N, 4)
    s = packed.scale.float()
    z = -packed.zero.float() / s
    m_s = mu.marlin_permute_scales(s.t().to(torch.float16).contiguous(), K, N, packed.group)
    m_z = mu.marlin_permute_scales(z.t().to(torch.float16).contiguous(), K, N, packed.group)
    ws = mu.marlin_make_workspace(N, dev) if hasattr(mu, "marlin_make_workspace") else mu.marlin_make_workspace_new(dev)
    return MarlinPackedWeight(packed.data, packed.scale, packed.zero, packed.bits, packed.group, packed.shape,
                              qweight, m_s, m_z, ws)


def _gemm(x2: torch.Tensor, p: MarlinPackedWeight) -> torch.Tensor:
    ops, mu, st = _ops()
    N, K = p.shape
    empty = torch.empty(0, dtype=torch.int, device=x2.device)
    return ops.gptq_marlin_gemm(x2.to(torch.float16).contiguous(), p.qweight, p.m_scales, p.m_zeros, empty, empty,
                                p.workspace, st.uint4, x2.shape[0], N, K, True, True, True, True)


def quant_matmul(x, packed, col_scale=None, lowrank=None, bias=None) -> torch.Tensor:
    p = prepare(packed)
    return reference.prescaled_gemm(x, p.shape[0], lambda xs: _gemm(xs, p), col_scale, lowrank, bias)


def quantize_pack(w, col_scale, bits, group, symmetric=False, nu=1.0, scale_dtype=torch.float16,
                  lowrank=None) -> MarlinPackedWeight:
    return prepare(reference.quantize_pack(w, col_scale, bits, group, symmetric, nu, scale_dtype, lowrank))


def _probe(device: torch.device) -> None:
    """Run one small layer through Marlin and compare with the reference (see module docstring)."""
    if importlib.util.find_spec("vllm") is None:
        _STATE.update(ok=False, reason="vllm is not installed")
        return
    try:
        g = torch.Generator(device="cpu").manual_seed(0)
        w = torch.randn(256, 512, generator=g).to(device)
        x = torch.randn(4, 512, generator=g).to(device, torch.float16)
        packed = reference.quantize_pack(w, None, 4, 128)
        ref = reference.quant_matmul(x.float(), packed)
        err = float((quant_matmul(x, packed).float() - ref).norm() / ref.norm())
        _STATE.update(ok=err < 1e-2, reason=None if err < 1e-2 else f"probe relative error {err:.2e} >= 1e-2")
    except Exception as exc:  # any import or signature mismatch makes the backend unavailable, not the program fail
        _STATE.update(ok=False, reason=f"{type(exc).__name__}: {exc}")


def is_available(device: torch.device, bits: int, group: int) -> bool:
    if bits != 4 or group not in (32, 64, 128) or device.type != "cuda":
        return False
    if "ok" not in _STATE:
        _probe(device)
    return bool(_STATE["ok"])
