"""Does a dequantized tile that never passes through shared memory beat the GEMM at M = 8-64? (GPU)

    python scripts/hoist_ab.py --out DIR [--check]

The split-K tensor-core GEMM (``quant_matmul_kernel``) dequantizes each slab of words to an fp32
tile in a blocked layout, then Triton converts it to the tensor-core operand layout through
shared memory: a store and a load of every weight, every slab (its TTGIR: one local_alloc and
local_load per tl.dot). This variant computes yᵀ = Ŵ xᵀ (so on Hopper Ŵ is wgmma's operand A,
which may sit in registers) and keeps every op between the loads and the dot elementwise and
never narrowing (16-bit words, fp16 S and Z, codes made fp16 with the 0x6400 exponent trick):
that is what Triton's MMAV3HoistLayoutConversion needs to move the layout conversion onto the
loads, so words, S and Z cross shared memory once per tile instead of the dequantized weights
once per slab. Times both, and bf16 cuBLAS, on Gemma-2B layers, after checking against float64.
"""

from __future__ import annotations

import json
import math

import torch
import triton
import triton.language as tl

from vla_ttq.kernels import reference, triton_backend
from vla_ttq.kernels.bench import l2_bytes, script_args, script_layers


@triton.jit
def hq_kernel(x_ptr, cs_ptr, w_ptr, s_ptr, z_ptr, part_ptr, M, N, K, G, tiles_per_split,
              WBITS: tl.constexpr, GROUP: tl.constexpr, GT: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
              DOT_DTYPE: tl.constexpr):
    """Program (n, k): columns [n·BN, (n+1)·BN) over its K split; writes fp32 partial sums."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_m = tl.arange(0, BM)
    mask_m = offs_m < M
    WG: tl.constexpr = GROUP * WBITS // 32  # words per group
    HG: tl.constexpr = 2 * WG  # 16-bit halves per group
    FPH: tl.constexpr = 16 // WBITS  # fields per half
    BKH: tl.constexpr = GT * HG
    h = tl.arange(0, BKH)
    gl = h // HG
    j = (h % HG) // 2
    b = h % 2
    w16 = w_ptr.to(tl.pointer_type(tl.int16))
    n_tiles = tl.cdiv(G, GT)
    t0 = pid_k * tiles_per_split
    t1 = tl.minimum(t0 + tiles_per_split, n_tiles)
    acc = tl.zeros((BN, BM), tl.float32)
    for t in range(t0, t1):
        gi = t * GT + gl
        # half b of word j holds fields FPH·b .. FPH·b + FPH-1 of that word: channels (i + FPH·b)·WG + j
        hw = tl.load(w16 + ((gi * WG + j)[None, :] * N + offs_n[:, None]) * 2 + b[None, :])
        sc = tl.load(s_ptr + gi[None, :] * N + offs_n[:, None])
        zr = tl.load(z_ptr + gi[None, :] * N + offs_n[:, None])
        for i in tl.static_range(FPH):
            k = gi * GROUP + (i + b * FPH) * WG + j
            xt = tl.load(x_ptr + offs_m[None, :] * K + k[:, None], mask=mask_m[None, :], other=0.0).to(tl.float32)
            xt = tl.fdiv(xt, tl.load(cs_ptr + k)[:, None])
            c = ((hw >> (i * WBITS)) & ((1 << WBITS) - 1)) | 0x6400  # fp16 1024 + c
            wv = (c.to(tl.float16, bitcast=True) - 1024.0) * sc + zr
            acc = tl.dot(wv.to(DOT_DTYPE), xt.to(DOT_DTYPE), acc)
    tl.store(part_ptr + pid_k * M * N + offs_m[None, :] * N + offs_n[:, None], acc, mask=mask_m[None, :])


def hq(x, cs, packed, bn, gt, split, warps, dot_dtype, stages=3):
    M, K = x.shape
    N = packed.shape[0]
    G = K // packed.group
    n_tiles = math.ceil(G / gt)
    per = math.ceil(n_tiles / split)
    split = math.ceil(n_tiles / per)
    part = torch.empty((split, M, N), device=x.device, dtype=torch.float32)
    hq_kernel[(math.ceil(N / bn), split)](x, cs, packed.data, packed.scale_t, packed.zero_t, part, M, N, K, G, per,
                                          WBITS=packed.bits, GROUP=packed.group, GT=gt,
                                          BM=max(16, triton.next_power_of_2(M)), BN=bn, DOT_DTYPE=dot_dtype,
                                          num_warps=warps, num_stages=stages)
    return part.sum(0).to(x.dtype)


def main() -> None:
    args = script_args(__doc__, check="one small case, correctness only")
    from vla_ttq.kernels.bench import graph_time_us, rel_err
    shapes = {"small": (256, 512)} if args.check else {"gate/up": (16384, 2048), "down": (2048, 16384),
                                                      "q/o": (2048, 2048)}
    ms = (8,) if args.check else (8, 16, 64)
    l2 = l2_bytes()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    res = dict(device=torch.cuda.get_device_name(), rows=[])
    layers = script_layers(shapes, (4, 2), l2, seed=lambda N, K: N * 7 + K, cs_span=1.5)
    for name, N, K, bits, g, w, cs, w_copies, packed, copies in layers:
        wref = reference.effective_weight(packed, cs).double()
        for M in ms:
            x = torch.randn(M, K, device="cuda", generator=g).to(torch.bfloat16)
            ref = x.double() @ wref.t()
            row = dict(layer=name, N=N, K=K, bits=bits, M=M)
            base = graph_time_us([lambda p=p: triton_backend.quant_matmul(x, p, cs, path="dot") for p in copies])
            bf16 = graph_time_us([lambda wc=wc: x @ wc.t() for wc in w_copies])
            err_base = rel_err(triton_backend.quant_matmul(x, packed, cs, path="dot"), ref)
            best = None
            for bn in (64, 128):
                for gt in (2, 4, 8):
                    n_blocks = math.ceil(N / bn)
                    for split in sorted({max(1, round(sms / n_blocks)), max(1, round(3 * sms / n_blocks))}):
                        for dd in (tl.bfloat16, tl.float16):
                            try:
                                err = rel_err(hq(x, cs, packed, bn, gt, split, 4, dd), ref)
                                t = graph_time_us([lambda p=p: hq(x, cs, p, bn, gt, split, 4, dd) for p in copies])
                            except Exception as e:
                                print("failed", bn, gt, split, dd, type(e).__name__, str(e)[:200], flush=True)
                                continue
                            cand = dict(BN=bn, GT=gt, split=split, dot=str(dd), us=t, err=err)
                            res["rows"].append(dict(row, **cand))
                            if best is None or t < best["us"]:
                                best = cand
            summary = dict(row, bf16_us=bf16, dot_us=base, dot_err=err_base, best=best)
            res.setdefault("summary", []).append(summary)
            print(summary, flush=True)
            (args.out / "hoist_ab.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
