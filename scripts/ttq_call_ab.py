"""TTQ's per-call step, layer by layer, before and after the fused path (GPU).

    python scripts/ttq_call_ab.py --out DIR

TTQ with ``recompute="call"`` (the paper's setting) computes s = D(x)^½ from every activation,
quantizes (W - B A)·s and multiplies. Side by side in one run, per layer of π0.5 (Gemma-2B at
1 and 800 tokens, the Gemma-300M expert at 1 and 50), 2/4 bits, rank 0/16:

* ``bf16``: F.linear with the full-precision weight (what TTQ replaces);
* ``before``: the path TTQLinear took until this script's commit: s from ~15 torch ops, W - B A
  written by torch in float32, the one-pass quantize into the planar layout, then ``quant_matmul``
  (GEMV / GEMM, or dequantize + cuBLAS at large M, plus the low-rank products);
* ``after``: ``column_scale`` (two launches) and ``online_matmul``: B A subtracted inside the
  quantize kernel; at large M the kernel writes the dequantized weight (B A folded back in) and
  one cuBLAS call does the rest.

Each variant is checked against the float64 product of the reference quantization first. Timing
as in ``vla_ttq.kernels.bench``: CUDA-graph replays cycling through copies of W past L2.
"""

from __future__ import annotations

import json
import statistics

import torch
import torch.nn.functional as F

from vla_ttq.kernels import reference, triton_backend
from vla_ttq.kernels.bench import graph_time_us, l2_bytes, rel_err, rotating_copies, script_args

LAYERS = [("gemma2b q/o", 2048, 2048, (1, 800)), ("gemma2b k/v", 256, 2048, (1, 800)),
          ("gemma2b gate/up", 16384, 2048, (1, 800)), ("gemma2b down", 2048, 16384, (1, 800)),
          ("gemma300m q", 2048, 1024, (1, 50)), ("gemma300m k/v", 256, 1024, (1, 50)),
          ("gemma300m o", 1024, 2048, (1, 50)), ("gemma300m gate/up", 4096, 1024, (1, 50)),
          ("gemma300m down", 1024, 4096, (1, 50))]
P, LAM, ALPHA, GROUP = 2.0, 0.4, 0.5, 64


def before(x, w, lowrank, bits):
    s = reference.column_scale(x, P, LAM, ALPHA)
    packed = triton_backend.quantize_pack(reference.residual(w, lowrank), s, bits, GROUP)
    return triton_backend.quant_matmul(x, packed, s, lowrank, None)


def after(x, w, lowrank, bits):
    s = triton_backend.column_scale(x, P, LAM, ALPHA)
    return triton_backend.online_matmul(x, w, s, lowrank, None, bits, GROUP)


def main() -> None:
    args = script_args(__doc__)
    l2 = l2_bytes()
    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, rows=[])
    for name, N, K, ms in LAYERS:
        g = torch.Generator(device="cuda").manual_seed(N + K)
        w = (torch.randn(N, K, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
        b = (torch.randn(N, 16, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
        a = (torch.randn(16, K, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
        copies = rotating_copies(w, N * K * 2, l2)
        for M in ms:
            x = (torch.randn(M, K, device="cuda", generator=g) * (1 + 4 * torch.rand(K, device="cuda", generator=g))
                 ).to(torch.bfloat16)
            row0 = dict(layer=name, N=N, K=K, M=M)
            row0["bf16_us"] = graph_time_us([lambda c=c: F.linear(x, c) for c in copies])
            row0["scale_torch_us"] = graph_time_us([lambda: reference.column_scale(x, P, LAM, ALPHA)])
            row0["scale_triton_us"] = graph_time_us([lambda: triton_backend.column_scale(x, P, LAM, ALPHA)])
            for bits in (2, 4):
                for rank in (0, 16):
                    lowrank = None if rank == 0 else (b, a)
                    row = dict(row0, bits=bits, rank=rank, path=triton_backend.path_for(M, N, K, bits))
                    s = reference.column_scale(x, P, LAM, ALPHA)
                    want = x.double() @ (reference.effective_weight(
                        reference.quantize_pack(w, s, bits, GROUP, lowrank=lowrank), s).double()
                        + (0 if lowrank is None else b.double() @ a.double())).t()
                    for variant, fn in (("before", before), ("after", after)):
                        row[f"{variant}_err"] = rel_err(fn(x, w, lowrank, bits), want)
                        row[f"{variant}_us"] = graph_time_us([lambda c=c: fn(x, c, lowrank, bits) for c in copies])
                    res["rows"].append(row)
                    print(f"{name:18s} M={M:4d} W{bits} r{rank:2d} {row['path']:7s} bf16 {row['bf16_us']:7.1f}  "
                          f"before {row['before_us']:7.1f}  after {row['after_us']:7.1f} us  "
                          f"({row['before_us'] / row['after_us']:.2f}x; scale torch {row['scale_torch_us']:.1f} "
                          f"triton {row['scale_triton_us']:.1f})  err {row['before_err']:.1e} / {row['after_err']:.1e}",
                          flush=True)
            (args.out / "ttq_call_ab.json").write_text(json.dumps(res, indent=1))
    ratios = [r["before_us"] / r["after_us"] for r in res["rows"]]
    print(f"after vs before: median {statistics.median(ratios):.2f}x, min {min(ratios):.2f}x, max {max(ratios):.2f}x")


if __name__ == "__main__":
    main()
