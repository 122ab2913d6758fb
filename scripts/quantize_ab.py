"""Which parts of the online quantize kernel cost its time? (GPU; CPU under TRITON_INTERPRET=1 for --check)

    python scripts/quantize_ab.py --out DIR [--check]

Times, side by side on the Gemma-2B layers (W4 and W2, group 64), run 8's quantize kernel
(``qx_kernel``: one (rows, GT·GROUP) tile a program, a group spread over 8 threads) and variants of
it: the division (w - min) / S replaced by a reciprocal per group and one FMA correction step; the
codes read from the mantissa after the round-to-even addition instead of a float-to-int
conversion; W loaded as (rows, groups, fields, words) so the packing needs no reshape. Then every
tile of the library's ``quantize_kernel`` (since run 9: chunks that a thread holds whole, two
sweeps). Each variant's words, S and Z are compared with the library kernel's (the reciprocal
variants are not exact: 2-14 codes a layer differed in run 9). Timing as in
``vla_ttq.kernels.bench`` (CUDA-graph replays, weights rotating past L2).
"""

from __future__ import annotations

import json
import math

import torch
import triton
import triton.language as tl

from vla_ttq.kernels import triton_backend
from vla_ttq.kernels.bench import l2_bytes, script_args
from vla_ttq.kernels.triton_kernels import _or, _round_to


@triton.jit
def _store_slice(codes, out_ptr, offs_n, mask_n, g0, G, N, row0, OFF: tl.constexpr, WBITS: tl.constexpr,
                 GROUP: tl.constexpr, GT: tl.constexpr, BR: tl.constexpr):
    """Run 8's packing: a group's codes spread over 8 threads, words OR-reduced across them."""
    WG: tl.constexpr = GROUP * WBITS // 32
    CPW: tl.constexpr = 32 // WBITS
    field = (codes >> OFF) & ((1 << WBITS) - 1)
    field = tl.reshape(field, (BR, GT, CPW, WG))
    shifts = (tl.arange(0, CPW) * WBITS)[None, None, :, None]
    words = tl.reduce(field << shifts, 2, _or)  # (BR, GT, WG)
    gi = g0 + tl.arange(0, GT)
    j = tl.arange(0, WG)
    ptr = out_ptr + (row0 + (gi * WG)[None, :, None] + j[None, None, :]) * N + offs_n[:, None, None]
    tl.store(ptr, words, mask=mask_n[:, None, None] & (gi < G)[None, :, None])


@triton.jit
def qx_kernel(w_ptr, cs_ptr, out_ptr, s_ptr, z_ptr, N, K, G,
              BITS: tl.constexpr, GROUP: tl.constexpr, GT: tl.constexpr, BR: tl.constexpr,
              RECIP: tl.constexpr, MAGIC: tl.constexpr, LOAD4: tl.constexpr):
    """Single-slice bits (1, 2, 4, 8), asymmetric, nu = 1, fp16 S/Z, with cs."""
    QMAX: tl.constexpr = (1 << BITS) - 1
    WG: tl.constexpr = GROUP * BITS // 32
    CPW: tl.constexpr = 32 // BITS
    offs_n = tl.program_id(0) * BR + tl.arange(0, BR)
    g0 = tl.program_id(1) * GT
    gi = g0 + tl.arange(0, GT)
    mask_n = offs_n < N
    if LOAD4:
        fi = tl.arange(0, CPW)
        j = tl.arange(0, WG)
        kk = gi[:, None, None] * GROUP + fi[None, :, None] * WG + j[None, None, :]  # (GT, CPW, WG)
        m = mask_n[:, None, None, None] & (gi < G)[None, :, None, None]
        w = tl.load(w_ptr + offs_n[:, None, None, None] * K + kk[None], mask=m, other=0.0).to(tl.float32)
        w = w * tl.load(cs_ptr + kk, mask=(gi < G)[:, None, None], other=1.0)[None]
        wmax = tl.max(tl.max(w, axis=3), axis=2)
        wmin = tl.min(tl.min(w, axis=3), axis=2)
    else:
        e = tl.arange(0, GROUP)
        kk = gi[:, None] * GROUP + e[None, :]
        m3 = mask_n[:, None, None] & (gi < G)[None, :, None]
        w = tl.load(w_ptr + offs_n[:, None, None] * K + kk[None, :, :], mask=m3, other=0.0).to(tl.float32)
        w = w * tl.load(cs_ptr + kk, mask=(gi < G)[:, None], other=1.0)[None, :, :]
        wmax = tl.max(w, axis=2)
        wmin = tl.min(w, axis=2)
    scale = (wmax - wmin) / QMAX
    floor = tl.maximum(tl.maximum(tl.abs(wmax), tl.abs(wmin)) * 9.5367431640625e-07, 1.1754943508222875e-38)
    scale = tl.where(scale > 0, scale, floor)
    scale = _round_to(scale, tl.float16)
    scale = tl.where(scale > 0, scale, 6.103515625e-05)
    wmin = _round_to(wmin, tl.float16)
    if LOAD4:
        sb = scale[:, :, None, None]
        d = w - wmin[:, :, None, None]
    else:
        sb = scale[:, :, None]
        d = w - wmin[:, :, None]
    if RECIP:
        r = 1.0 / scale
        if LOAD4:
            rb = r[:, :, None, None]
        else:
            rb = r[:, :, None]
        q0 = d * rb
        v = tl.fma(tl.fma(-q0, sb, d), rb, q0)
    else:
        v = d / sb
    if MAGIC:
        t = tl.minimum(tl.maximum(v + 12582912.0, 12582912.0), 12582912.0 + QMAX)
        codes = t.to(tl.int32, bitcast=True) - 0x4B400000
    else:
        v = (v + 12582912.0) - 12582912.0
        codes = tl.minimum(tl.maximum(v, 0.0), QMAX).to(tl.int32)
    if LOAD4:
        shifts = (tl.arange(0, CPW) * BITS)[None, None, :, None]
        words = tl.reduce(codes << shifts, 2, _or)  # (BR, GT, WG)
        j = tl.arange(0, WG)
        ptr = out_ptr + ((gi * WG)[None, :, None] + j[None, None, :]) * N + offs_n[:, None, None]
        tl.store(ptr, words, mask=mask_n[:, None, None] & (gi < G)[None, :, None])
    else:
        codes = tl.reshape(codes, (BR, GT * GROUP))
        _store_slice(codes, out_ptr, offs_n, mask_n, g0, G, N, 0, 0, BITS, GROUP, GT, BR)
    sz_mask = mask_n[:, None] & (gi < G)[None, :]
    sz_off = gi[None, :] * N + offs_n[:, None]
    tl.store(s_ptr + sz_off, scale.to(s_ptr.dtype.element_ty), mask=sz_mask)
    tl.store(z_ptr + sz_off, wmin.to(z_ptr.dtype.element_ty), mask=sz_mask)


def qx(w, cs, bits, group, br, gt, warps, recip, magic, load4):
    N, K = w.shape
    G = K // group
    data = torch.empty((K * bits // 32, N), device=w.device, dtype=torch.int32)
    scale = torch.empty((G, N), device=w.device, dtype=torch.float16)
    zero = torch.empty((G, N), device=w.device, dtype=torch.float16)
    qx_kernel[(math.ceil(N / br), math.ceil(G / gt))](w, cs, data, scale, zero, N, K, G, BITS=bits, GROUP=group,
                                                       GT=gt, BR=br, RECIP=recip, MAGIC=magic, LOAD4=load4,
                                                       num_warps=warps)
    return data, scale, zero


TILES = [(br, gt, wp) for br in (32, 64, 128, 256) for gt in (1, 2) for wp in (1, 2, 4, 8)
         if 32 * wp <= br * gt <= 128 * wp]
VARIANTS = {"as is": (False, False, False), "magic": (False, True, False), "recip": (True, False, False),
            "load4": (False, False, True), "recip+magic": (True, True, False), "all three": (True, True, True)}


def compare(ref, got) -> dict:
    return dict(words_differ=int((ref.data != got[0]).sum()), s_differ=int((ref.scale_t != got[1]).sum()),
                z_differ=int((ref.zero_t != got[2]).sum()))


def main() -> None:
    args = script_args(__doc__, check="small shapes, correctness only (works interpreted)")
    dev = "cpu" if args.check and not torch.cuda.is_available() else "cuda"
    shapes = {"small": (48, 256)} if args.check else {"gate/up": (16384, 2048), "down": (2048, 16384),
                                                      "q/o": (2048, 2048), "k/v": (256, 2048)}
    res = dict(variants=[], tiles=[])
    if not args.check:
        from vla_ttq.kernels.bench import graph_time_us, measure_bandwidth, rotating_copies
        bw = measure_bandwidth()
        l2 = l2_bytes()
        res.update(device=torch.cuda.get_device_name(), bw=bw)
    for name, (N, K) in shapes.items():
        g = torch.Generator(device=dev).manual_seed(N + K)
        w = (torch.randn(N, K, device=dev, generator=g) * 0.02).to(torch.bfloat16)
        cs = torch.rand(K, device=dev, generator=g) * 1.5 + 0.5
        copies = [w] if args.check else rotating_copies(w, 2 * N * K, l2)
        for bits in (4, 2):
            ref = triton_backend.quantize_pack(w, cs, bits, 64)
            row = dict(layer=name, N=N, K=K, bits=bits)
            if not args.check:
                t = graph_time_us([lambda wc=wc: triton_backend.quantize_pack(wc, cs, bits, 64) for wc in copies], 16)
                res["variants"].append(dict(row, variant="kernel", us=t, target_us=4 * N * K / bw * 1e6))
                print(row, "kernel", f"{t:.1f}", flush=True)
            for vname, (recip, magic, load4) in VARIANTS.items():
                br, gt = (8, 1) if args.check else (16, 4)
                out = compare(ref, qx(w, cs, bits, 64, br, gt, 4, recip, magic, load4))
                if not args.check:
                    out["us"] = graph_time_us([lambda wc=wc: qx(wc, cs, bits, 64, br, gt, 4, recip, magic, load4)
                                               for wc in copies], 16)
                res["variants"].append(dict(row, variant=vname, **out))
                print(row, vname, out, flush=True)
            for br, gt, warps in ((8, 1, 1),) if args.check else TILES:
                tile = (br, gt, warps)
                got = triton_backend.quantize_pack(w, cs, bits, 64, tile=tile)
                out = compare(ref, (got.data, got.scale_t, got.zero_t))
                if not args.check:
                    try:
                        out["us"] = graph_time_us([lambda wc=wc: triton_backend.quantize_pack(wc, cs, bits, 64, tile=tile)
                                                   for wc in copies], 16)
                    except Exception as e:  # out of resources: record and go on
                        out["error"] = f"{type(e).__name__}: {str(e)[:100]}"
                res["tiles"].append(dict(row, variant="kernel", BR=br, GT=gt, warps=warps, **out))
                print(row, "tile", tile, out, flush=True)
        (args.out / "quantize_ab.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
