"""Large-M matmuls (π0.5's ~800-token prefix) with the dequantized weight kept in L2 (GPU).

    python scripts/l2_chunk_ab.py --out DIR      (L2_MS=800 picks the token counts)

At large M ``quant_matmul`` dequantizes the whole weight to bf16 (``dequantize_t``) and cuBLAS
multiplies; TTQ's per-call step does the same from W (``qdq_weight``). The dense weight is written
to memory and read back: on Gemma-2B gate/up 67 MB written, ~16 µs of a 96 µs call. Here the
same work runs in chunks of output features (N) or input channels (K), each dequantized into one
reused buffer of a few MB that cuBLAS reads straight after, so that the buffer's lines may stay
in L2 and never reach memory. Side by side in one run: bf16 cuBLAS, the whole-weight path, and
each chunk size; every variant is checked against float64 first. Timing as in
``vla_ttq.kernels.bench`` (CUDA-graph replays, weights rotating past L2). Writes l2_chunk_ab.json.
"""

from __future__ import annotations

import json
import os
import time

import torch
import torch.nn.functional as F

from vla_ttq.kernels import triton_backend as tb
from vla_ttq.kernels.bench import checked_time, graph_time_us, l2_bytes, rotating_copies, script_args
from vla_ttq.kernels.layout import PlanarPackedWeight

LAYERS = {"gate/up": (16384, 2048), "gate+up": (32768, 2048), "down": (2048, 16384), "q/o": (2048, 2048)}
GROUP = 64
N_CHUNKS = (1024, 2048, 4096, 8192)
K_CHUNKS = (2048, 4096)


def column_chunks(p: PlanarPackedWeight, nc: int) -> list:
    """The packed weight cut into contiguous blocks of ``nc`` output features."""
    N, K = p.shape
    return [(n0, PlanarPackedWeight(p.data[:, n0:n0 + nc].contiguous(), p.scale_t[:, n0:n0 + nc].contiguous().t(),
                                    p.zero_t[:, n0:n0 + nc].contiguous().t(), p.bits, p.group, (min(nc, N - n0), K)))
            for n0 in range(0, N, nc)]


def row_chunks(p: PlanarPackedWeight, kc: int) -> list:
    """The packed weight cut into blocks of ``kc`` input channels (one code slice: 2 or 4 bits)."""
    N, K = p.shape
    wpr = p.bits * kc // 32  # word rows per chunk
    return [(k0, PlanarPackedWeight(p.data[k0 * p.bits // 32:][:wpr], p.scale_t[k0 // p.group:][:kc // p.group].t(),
                                    p.zero_t[k0 // p.group:][:kc // p.group].t(), p.bits, p.group, (N, kc)))
            for k0 in range(0, K, kc)]


def packed_by_columns(x, chunks, cs, nc):
    M, K = x.shape
    N = chunks[-1][0] + chunks[-1][1].shape[0]
    y = torch.empty((M, N), device=x.device, dtype=x.dtype)
    buf = torch.empty((K, nc), device=x.device, dtype=x.dtype)
    for n0, p in chunks:
        n = p.shape[0]
        wt = tb.dequantize_t(p, cs, x.dtype, out=buf[:, :n] if n == nc else None)
        torch.mm(x, wt, out=y[:, n0:n0 + n])
    return y


def packed_by_rows(x, chunks, cs, kc):
    M, K = x.shape
    N = chunks[0][1].shape[0]
    y = torch.empty((M, N), device=x.device, dtype=x.dtype)
    buf = torch.empty((kc, N), device=x.device, dtype=x.dtype)
    for i, (k0, p) in enumerate(chunks):
        wt = tb.dequantize_t(p, cs[k0:k0 + kc], x.dtype, out=buf)
        if i == 0:
            torch.mm(x[:, k0:k0 + kc], wt, out=y)
        else:
            y.addmm_(x[:, k0:k0 + kc], wt)
    return y


def ttq_by_columns(x, w, s, bits, nc):
    M, K = x.shape
    N = w.shape[0]
    y = torch.empty((M, N), device=x.device, dtype=x.dtype)
    buf = torch.empty((K, nc), device=x.device, dtype=x.dtype)
    for n0 in range(0, N, nc):
        n = min(nc, N - n0)
        wq = tb.qdq_weight(w[n0:n0 + n], s, bits, GROUP, dtype=x.dtype, out=buf[:, :n] if n == nc else None)
        torch.mm(x, wq.t(), out=y[:, n0:n0 + n])
    return y


def main() -> None:
    args = script_args(__doc__)
    l2 = l2_bytes()
    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, l2_bytes=l2, rows=[])
    t_start = time.time()
    for name, (N, K) in LAYERS.items():
        g = torch.Generator(device="cuda").manual_seed(N + K)
        w = (torch.randn(N, K, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
        cs = torch.rand(K, device="cuda", generator=g) * 1.5 + 0.5
        w_copies = rotating_copies(w, N * K * 2, l2)
        for M in [int(v) for v in os.environ.get("L2_MS", "800").split(",")]:
            x = (torch.randn(M, K, device="cuda", generator=g) * (1 + 4 * torch.rand(K, device="cuda", generator=g))
                 ).to(torch.bfloat16)
            bf16 = graph_time_us([lambda c=c: F.linear(x, c) for c in w_copies])
            for bits in (4, 2):
                packed = tb.quantize_pack(w, cs, bits, GROUP)
                p_copies = rotating_copies(packed, N * K * bits // 8, l2)
                want = x.double() @ tb.dequantize_t(packed, cs, torch.float32).double()
                row = dict(layer=name, N=N, K=K, M=M, bits=bits, bf16_us=bf16, path=tb.path_for(M, N, K, bits))
                row["packed_whole"] = checked_time(lambda p: tb.quant_matmul(x, p, cs, path="dequant"), p_copies,
                                                   want)
                for nc in N_CHUNKS:
                    if N >= 2 * nc:
                        cc = [column_chunks(p, nc) for p in p_copies]
                        row[f"packed_n{nc}"] = checked_time(lambda c, nc=nc: packed_by_columns(x, c, cs, nc), cc,
                                                            want)
                for kc in K_CHUNKS:
                    if K >= 2 * kc:
                        cc = [row_chunks(p, kc) for p in p_copies]
                        row[f"packed_k{kc}"] = checked_time(lambda c, kc=kc: packed_by_rows(x, c, cs, kc), cc, want)
                s = cs  # TTQ's column scale (any positive vector times the same work)
                want_t = x.double() @ tb.qdq_weight(w, s, bits, GROUP, dtype=torch.float32).double().t()
                row["ttq_whole"] = checked_time(lambda c: tb.online_matmul(x, c, s, None, None, bits, GROUP), w_copies,
                                                want_t)
                for nc in N_CHUNKS:
                    if N >= 2 * nc:
                        row[f"ttq_n{nc}"] = checked_time(lambda c, nc=nc: ttq_by_columns(x, c, s, bits, nc),
                                                         w_copies, want_t)
                res["rows"].append(row)
                cells = "  ".join(f"{k} {v['us']:.1f}" for k, v in row.items() if isinstance(v, dict))
                print(f"{name:8s} M={M} W{bits} bf16 {bf16:.1f}  {cells}  [{time.time() - t_start:.0f}s]", flush=True)
                (args.out / "l2_chunk_ab.json").write_text(json.dumps(res, indent=1))
                del p_copies


if __name__ == "__main__":
    main()
