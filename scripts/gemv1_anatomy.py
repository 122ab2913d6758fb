"""Where the M = 1 kernel's time goes (GPU only): ``gemv1_kernel`` timed with parts switched off.

    python scripts/gemv1_anatomy.py --out DIR

Each variant is the production kernel's code path with one phase removed, on the Gemma-2B
gate/up and down shapes at W4 and W2, timed like ``vla_ttq.kernels.bench`` (CUDA-graph replays,
weights rotating past L2). Variants that skip a phase give wrong outputs on purpose; only their
time is kept. Writes ``gemv1_anatomy.json`` / ``.md``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import triton
import triton.language as tl

from vla_ttq.kernels import triton_backend
from vla_ttq.kernels.bench import graph_time_us, measure_bandwidth, rotating_copies
from vla_ttq.kernels.triton_kernels import (_gemv1_group, _gemv1_load, _gemv1_program, _gemv1_scratch,
                                            _gemv1_split_k_tail)


@triton.jit
def anatomy_kernel(x_ptr, cs_ptr, w_ptr, s_ptr, z_ptr, out_ptr, ws_ptr, lock_ptr, xs_ptr, bias_ptr, a_ptr, b_ptr,
                   tws_ptr, N, K, G, row1, row2, R, magic, xs_per_block,
                   W0: tl.constexpr, W1: tl.constexpr, W2: tl.constexpr, OFF1: tl.constexpr, OFF2: tl.constexpr,
                   MID: tl.constexpr, GROUP: tl.constexpr, GPS: tl.constexpr, BN: tl.constexpr, BR: tl.constexpr,
                   HAS_CS: tl.constexpr, EVEN_N: tl.constexpr, SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr,
                   HAS_LR: tl.constexpr, STAGES: tl.constexpr, PAIRS: tl.constexpr, ASM: tl.constexpr,
                   SCRATCH: tl.constexpr, COMPUTE: tl.constexpr, TAIL: tl.constexpr, WORK: tl.constexpr,
                   PREFETCH: tl.constexpr):
    """gemv1_kernel with switches: SCRATCH (phase 1), COMPUTE (else the words are only XOR-ed
    together, to keep their loads), TAIL (the last-program handshake; else partial sums only),
    WORK (else the program returns at once: launch and scheduling of the grid alone), PREFETCH
    (a group's words are loaded one step ahead: the first before phase 1, the next before this
    group's arithmetic)."""
    if WORK:
        offs_n, mask_n, g0, g_end, xs_ptr = _gemv1_program(xs_ptr, xs_per_block, N, G, BN, GPS)
        if PREFETCH:
            w0, w1, w2, s, z = _gemv1_load(w_ptr, s_ptr, z_ptr, g0, offs_n, mask_n, N, row1, row2, W0, W1, W2, GROUP,
                                           EVEN_N)
        if SCRATCH:
            _gemv1_scratch(x_ptr, cs_ptr, xs_ptr, g0, K, K, G, 0, W0, W1, W2, GROUP, GPS, 1, HAS_CS, PAIRS)
            tl.debug_barrier()
        acc = tl.zeros((BN,), tl.float32)
        bits = tl.zeros((BN,), tl.int32)
        for g in tl.range(g0, g_end, num_stages=STAGES):
            if PREFETCH:
                n0, n1, n2, ns, nz = _gemv1_load(w_ptr, s_ptr, z_ptr, tl.minimum(g + 1, g_end - 1), offs_n, mask_n, N,
                                                 row1, row2, W0, W1, W2, GROUP, EVEN_N)
            else:
                w0, w1, w2, s, z = _gemv1_load(w_ptr, s_ptr, z_ptr, g, offs_n, mask_n, N, row1, row2, W0, W1, W2,
                                               GROUP, EVEN_N)
            if COMPUTE:
                d, xsum = _gemv1_group(xs_ptr, w0, w1, w2, g, 0, magic, W0, W1, W2, OFF1, OFF2, MID, GROUP, 1,
                                       PAIRS, ASM)
                acc += s * d + z * xsum
            else:
                bits = bits ^ tl.xor_sum(w0, axis=0)
                acc += s + z
            if PREFETCH:
                w0, w1, w2, s, z = n0, n1, n2, ns, nz
        acc += bits.to(tl.float32)
        if TAIL:
            _gemv1_split_k_tail(acc[None, :], tl.zeros((1, BR), tl.float32), ws_ptr, lock_ptr, tws_ptr, out_ptr, offs_n,
                                mask_n, 1, N, bias_ptr, b_ptr, R, HAS_BIAS, HAS_LR, BR, 1, 1)
        else:
            tl.atomic_add(ws_ptr + offs_n, acc, mask=mask_n, sem="relaxed")


VARIANTS = {  # name: (SCRATCH, COMPUTE, TAIL, WORK, PREFETCH, scratch copy per column block); None: production
    "gemv1_kernel": None,
    "full kernel": (True, True, True, True, False, True),
    "full, prefetch": (True, True, True, True, True, True),
    "full, prefetch, one shared scratch": (True, True, True, True, True, False),
    "no tail": (True, True, False, True, False, True),
    "no scratch phase": (False, True, True, True, False, True),
    "no scratch, no tail": (False, True, False, True, False, True),
    "loads only (no scratch, compute, tail)": (False, False, False, True, False, True),
    "loads + tail": (False, False, True, True, False, True),
    "empty grid": (False, False, False, False, False, True),
}


def launch(cfg, flags, x, cs, packed, out):
    if flags is None:
        return triton_backend._launch_gemv1(cfg, x, cs, packed, None, None, out)
    bn, gps, warps, stages, pairs = cfg
    K, N = x.shape[1], packed.shape[0]
    G = K // packed.group
    sl = triton_backend._slices(packed.bits, K)
    grid = (math.ceil(N / bn), math.ceil(G / gps))
    scratch, compute, tail, work, prefetch, private = flags
    per_block, numel = triton_backend._gemv1_scratch_size(K, packed.group, grid[0] if private else 1)
    ws, lock, xs, tws = triton_backend._gemv1_buffers(x.device, N, numel)
    anatomy_kernel[grid](
        x, cs, packed.data, packed.scale_t, packed.zero_t, out, ws, lock, xs, x, x, x, tws,
        N, K, G, sl["row1"], sl["row2"], 0, triton_backend.MAGIC, per_block if private else 0,
        W0=sl["W0"], W1=sl["W1"], W2=sl["W2"], OFF1=sl["OFF1"], OFF2=sl["OFF2"],
        MID=triton_backend._code_centre(packed.bits), GROUP=packed.group, GPS=gps, BN=bn, BR=2, HAS_CS=True,
        EVEN_N=N % bn == 0, SPLIT_K=True, HAS_BIAS=False, HAS_LR=False, STAGES=stages, PAIRS=pairs, ASM=True,
        SCRATCH=scratch, COMPUTE=compute, TAIL=tail, WORK=work, PREFETCH=prefetch, num_warps=warps)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/kernels")
    ap.add_argument("--pairs", default="1,0", help="fp16x2 pairs path on (1) / off (0), comma-separated")
    ap.add_argument("--calls", type=int, default=512, help="calls per timed CUDA graph (more: less noise)")
    args = ap.parse_args(argv)
    bw = measure_bandwidth()
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    sms = triton_backend._num_sms(torch.device("cuda"))
    rows = []
    for layer, N, K in (("gate/up", 16384, 2048), ("down", 2048, 16384)):
        for bits in (4, 2):
            w = (torch.randn(N, K, device="cuda") * 0.02).to(torch.bfloat16)
            cs = torch.rand(K, device="cuda") + 0.5
            packed = triton_backend.quantize_pack(w, cs, bits, 64)
            copies = rotating_copies(packed, N * K * bits // 8, l2)
            x = torch.randn(1, K, device="cuda").to(torch.bfloat16)
            out = torch.empty(1, N, device="cuda", dtype=torch.bfloat16)
            floor = (packed.data.numel() * 4 + packed.scale.numel() * 4) / bw * 1e6
            for pairs in (bool(int(p)) for p in args.pairs.split(",")):
                cfg = triton_backend._gemv1_candidates(bits, 64, K, N, sms)[0][:4] + (pairs,)
                for name, flags in VARIANTS.items():
                    launch(cfg, VARIANTS["full kernel"], x, cs, packed, out)  # fills the scratch, resets ws/lock
                    us = graph_time_us([lambda p=p, f=flags: launch(cfg, f, x, cs, p, out) for p in copies],
                                       min_calls=args.calls)
                    launch(cfg, VARIANTS["full kernel"], x, cs, packed, out)  # zeroes what a no-tail variant left
                    rows.append(dict(layer=layer, N=N, K=K, bits=bits, cfg=cfg, variant=name, us=us, floor_us=floor))
                    print(f"{layer:8s} W{bits} {cfg} {name:40s} {us:6.2f} µs (floor {floor:.1f})", flush=True)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gemv1_anatomy.json").write_text(json.dumps(dict(device=torch.cuda.get_device_name(),
                                                                bandwidth_GBps=bw / 1e9, rows=rows), indent=1))
    lines = [f"# gemv1 anatomy ({torch.cuda.get_device_name()}, triton {triton.__version__})", "",
             "µs per call (CUDA-graph replay, weights rotating past L2); each variant removes one phase.", "",
             "| layer | bits | tile | " + " | ".join(VARIANTS) + " | floor |",
             "|---|---|---|" + "---|" * (len(VARIANTS) + 1)]
    for i in range(0, len(rows), len(VARIANTS)):
        r = rows[i:i + len(VARIANTS)]
        lines.append(f"| {r[0]['layer']} | {r[0]['bits']} | {r[0]['cfg']} | "
                     + " | ".join(f"{v['us']:.1f}" for v in r) + f" | {r[0]['floor_us']:.1f} |")
    (out_dir / "gemv1_anatomy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
