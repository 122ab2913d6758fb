"""How fast can any Triton grid read a packed M = 1 weight on this GPU? (GPU only)

    python scripts/stream_ceiling.py --out DIR [--quick | --narrow]

Times read-only kernels over the planar layout's transposed words (word rows × N int32) and the
per-group S / Z rows of the Gemma-2B gate/up and down layers at W4 and W2, group 64: each
program XORs its words and sums its scales (no unpacking, no x) and writes one partial row. Tiles
differ in columns per program (BN), K splits, warps, groups per loop step (C: bytes in flight)
and software-pipeline stages. The fastest tile bounds what any M = 1 kernel reading this layout
can do; the M = 1 kernel's tile should be chosen from what wins here. Timing as in
``vla_ttq.kernels.bench`` (CUDA-graph replays, weights rotating past L2), beside bf16 cuBLAS and an
empty launch. SC_LAYERS=gate/up picks layers. ``--narrow`` sweeps 64- and 128-column tiles with
few K splits instead (gate/up in one split: 128 programs that each read a whole K, with no partial
sums to add up). Writes ``stream_ceiling.json`` / ``.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
from pathlib import Path

import torch
import triton
import triton.language as tl

from vla_ttq.kernels.bench import empty_kernel_us, graph_time_us, measure_bandwidth, n_copies, rotating_copies


@triton.jit
def read_kernel(w_ptr, s_ptr, z_ptr, out_ptr, N, G, GPP, WG: tl.constexpr, C: tl.constexpr, BN: tl.constexpr,
                STAGES: tl.constexpr):
    """Program (n, k) reads groups [k·GPP, (k+1)·GPP) of columns [n·BN, (n+1)·BN), C groups a step."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BN + tl.arange(0, BN)
    bits = tl.zeros((C * WG, BN), tl.int32)
    sz = tl.zeros((C, BN), tl.float32)
    g0 = pid_k * GPP
    for g in tl.range(g0, g0 + GPP, C, num_stages=STAGES):
        rows = g * WG + tl.arange(0, C * WG)
        bits ^= tl.load(w_ptr + rows[:, None] * N + offs_n[None, :])
        gs = g + tl.arange(0, C)
        sz += tl.load(s_ptr + gs[:, None] * N + offs_n[None, :]).to(tl.float32)
        sz += tl.load(z_ptr + gs[:, None] * N + offs_n[None, :]).to(tl.float32)
    y = tl.xor_sum(bits, axis=0).to(tl.float32) + tl.sum(sz, axis=0)
    tl.store(out_ptr + pid_k * N + offs_n, y)


def tiles(N: int, G: int, WG: int, quick: bool, narrow: bool = False):
    if narrow:  # few K splits: does a grid that needs little or no K reduction still stream at full speed?
        grid = itertools.product((64, 128), (4, 8), (1, 2, 4, 8, 16), (1, 2, 4), (2, 3, 4))
        per_thread_min, programs_min = 2, 64
    else:
        grid = itertools.product((256, 512, 1024), (4, 8), (1, 2, 4, 8, 16, 32), (1, 2, 4, 8), (1, 3))
        per_thread_min, programs_min = 8, 128
    for bn, warps, splits, c, st in grid:
        gpp = G // splits
        per_thread = c * WG * bn // (32 * warps)  # words each thread holds per step
        programs = (N // bn) * splits
        if (gpp < 1 or c > gpp or gpp % c or not per_thread_min <= per_thread <= 64
                or not programs_min <= programs <= (256 if narrow else 2048)):
            continue
        if st > 1 and gpp // c < 2:
            continue
        if quick and (bn == 256 or (st > 1 and c > 2)):
            continue
        yield bn, warps, splits, c, st


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/kernels")
    ap.add_argument("--quick", action="store_true", help="fewer tiles (no 256-column tiles, no deep pipelines of big steps)")
    ap.add_argument("--narrow", action="store_true", help="64/128-column tiles with few K splits (<= 256 programs)")
    ap.add_argument("--calls", type=int, default=256)
    args = ap.parse_args(argv)
    bw = measure_bandwidth()
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    empty = empty_kernel_us()
    rows, best = [], []
    layers = (("gate/up", 16384, 2048), ("down", 2048, 16384))
    for layer, N, K in [t for t in layers if t[0] in os.environ.get("SC_LAYERS", "gate/up,down").split(",")]:
        wb = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
        xb = torch.randn(1, K, device="cuda", dtype=torch.bfloat16)
        cublas = graph_time_us([lambda w=w: torch.nn.functional.linear(xb, w)
                                for w in rotating_copies(wb, N * K * 2, l2)],
                               min_calls=args.calls)
        del wb
        for bits in (4, 2):
            G, WG = K // 64, 64 * bits // 32
            nbytes = G * WG * N * 4 + 2 * G * N * 2
            copies = [(torch.randint(-2**31, 2**31 - 1, (G * WG, N), device="cuda", dtype=torch.int32),
                       torch.randn(G, N, device="cuda").half(), torch.randn(G, N, device="cuda").half())
                      for _ in range(n_copies(nbytes, l2))]
            out = torch.empty(G, N, device="cuda")
            res = []
            for bn, warps, splits, c, st in tiles(N, G, WG, args.quick, args.narrow):
                def call(w, s, z, bn=bn, warps=warps, splits=splits, c=c, st=st):
                    read_kernel[(N // bn, splits)](w, s, z, out, N, G, G // splits, WG=WG, C=c, BN=bn, STAGES=st,
                                                   num_warps=warps)
                try:
                    us = graph_time_us([lambda cp=cp: call(*cp) for cp in copies], min_calls=args.calls)
                except Exception as e:  # out of shared memory for deep pipelines: skip the tile
                    print(f"skip {(bn, warps, splits, c, st)}: {type(e).__name__}", flush=True)
                    continue
                r = dict(layer=layer, N=N, K=K, bits=bits, bn=bn, warps=warps, splits=splits, c=c, stages=st,
                         programs=(N // bn) * splits, us=us, floor_us=nbytes / bw * 1e6, bf16_us=cublas)
                res.append(r)
                print(f"{layer} W{bits} BN={bn} warps={warps} splits={splits} C={c} st={st} "
                      f"P={r['programs']}: {us:.2f} µs", flush=True)
            rows += res
            res.sort(key=lambda r: r["us"])
            best += res[:5]
            del copies
            save(Path(args.out), rows, best, bw, empty)  # after every layer: a cut-off run keeps its rows


def save(out_dir: Path, rows: list, best: list, bw: float, empty: float) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = dict(device=torch.cuda.get_device_name(), triton=triton.__version__, bandwidth_GBps=bw / 1e9,
                empty_kernel_us=empty)
    (out_dir / "stream_ceiling.json").write_text(json.dumps(dict(meta, rows=rows), indent=1))
    lines = [f"# Read-only ceiling of the planar M = 1 layout ({meta['device']}, triton {meta['triton']})", "",
             f"Copy bandwidth {bw / 1e9:.0f} GB/s; empty kernel {empty:.2f} µs. Five fastest tiles per layer "
             "and width (µs per call).", "",
             "| layer | bits | BN | warps | splits | C | stages | programs | read µs | floor µs | bf16 µs | "
             "bf16 / read |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in best:
        lines.append(f"| {r['layer']} | {r['bits']} | {r['bn']} | {r['warps']} | {r['splits']} | {r['c']} | "
                     f"{r['stages']} | {r['programs']} | {r['us']:.2f} | {r['floor_us']:.2f} | {r['bf16_us']:.1f} | "
                     f"{r['bf16_us'] / r['us']:.2f} |")
    (out_dir / "stream_ceiling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
