"""The dense online step's error against float64 with ``QDQ_FAST_DIV`` off and on (GPU; prints only).

    python scripts/qdq_fastdiv_check.py

Gemma-2B gate/up and down shapes, W4 g64, rank 0 and a real rank-16 term (top-16 SVD of W), two
column scales (uniform in [0.5, 1.5) and log-normal): the fraction of dense weights that differ
between the two divisions, and each one's relative error against the float64 reference, of the
weight and of y = x Ŵᵀ for 800 tokens. Session 13 (H200): r0 bit-identical; r16 6–9e-6 of the
weights differ; errors equal to 4 digits (1.56–1.89e-3).
"""

from __future__ import annotations

import torch

from vla_ttq.kernels import reference, triton_backend


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.double() - ref).norm() / ref.norm())


def main() -> None:
    torch.manual_seed(0)
    for N, K in ((16384, 2048), (2048, 16384)):
        w = (torch.randn(N, K, device="cuda") * 0.02).to(torch.bfloat16)
        U, S, Vh = torch.linalg.svd(w.float(), full_matrices=False)
        b, a = (U[:, :16] * S[:16]).to(torch.bfloat16), Vh[:16].to(torch.bfloat16)
        scales = {"uniform": torch.rand(K, device="cuda") + 0.5,
                  "lognormal": torch.exp(torch.randn(K, device="cuda") * 1.5)}
        for name, cs in scales.items():
            x = torch.randn(800, K, device="cuda").to(torch.bfloat16)
            for lowrank in (None, (b, a)):
                want = reference.effective_weight(reference.quantize_pack(w, cs, 4, 64, lowrank=lowrank), cs).double()
                if lowrank is not None:
                    want = want + b.double() @ a.double()
                y_want = x.double() @ want.t()
                out = {}
                for fast in (False, True):
                    triton_backend.QDQ_FAST_DIV = fast
                    out[fast] = triton_backend.qdq_weight(w, cs, 4, 64, lowrank=lowrank)
                triton_backend.QDQ_FAST_DIV = True
                differ = float((out[True] != out[False]).double().mean())
                errs = "  ".join(f"{'fast' if f else 'full'}: w {rel(d, want):.3e} "
                                 f"y {rel(x.double() @ d.double().t(), y_want):.3e}" for f, d in out.items())
                print(f"{N}x{K} {name:9s} r{0 if lowrank is None else 16:2d} differ {differ:.1e}  {errs}", flush=True)


if __name__ == "__main__":
    main()
