"""Can a CUDA C GEMV with a cluster K reduction beat the Triton GEMV at M = 1? (GPU only, experiment)

    python scripts/cuda_gemv_ab.py --out DIR    (CG_LAYERS=gate/up,down  CG_BITS=4,2  CG_SET=loads|pipe|bulk|xfirst)

``scripts/cuda_gemv1.cu`` (compiled with torch's NVRTC wrapper for sm_90a; one build per tile)
reads the same planar words, S and Z as ``gemv1_kernel`` and adds the K splits of a column block
through distributed shared memory inside a thread-block cluster (with global atomics only between
clusters). Timed side by side in one run on Gemma-2B's large layers, one token, g64: bf16 cuBLAS,
the Triton GEMV (heuristic tile), the best Triton read-only tile of run 13 (scripts/stream_ceiling.py)
and every CUDA tile, each GEMV checked against float64 first; the CUDA read-only variant
(READ_ONLY=1: same loads and K reduction, no arithmetic) beside each tile. CG_SET picks one of the
tile sets of run 14's calls (default: the last). Writes cuda_gemv_ab.json.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vla_ttq.kernels import reference, triton_backend
from vla_ttq.kernels.bench import (checked_time, graph_time_us, l2_bytes, measure_bandwidth, script_args,
                                   script_layers)

sys.path.insert(0, str(Path(__file__).parent))
from stream_ceiling import read_kernel  # noqa: E402

SRC = (Path(__file__).parent / "cuda_gemv1.cu").read_text()
LAYERS = {"gate/up": (16384, 2048), "down": (2048, 16384)}
LAYERS = {k: LAYERS[k] for k in os.environ.get("CG_LAYERS", ",".join(LAYERS)).split(",")}
BITS = tuple(int(b) for b in os.environ.get("CG_BITS", "4,2").split(","))
# (TX, TK, GPC, CL, PIPE): 4*TX columns and GPC groups per CTA, TK thread rows over the groups, CL CTAs
# per cluster, PIPE groups in flight per thread in registers (None: all at once; "bulk": the CTA's tile
# goes to shared memory by bulk copies, one mbarrier per group). Run 14's four device calls, in order
# (CG_SET; "xfirst" times each tile with x loaded after and before the weight, X_FIRST = 0 / 1):
TILE_SETS = {
    "loads": {"gate/up": [(128, 2, 4, 8, None), (64, 2, 4, 8, None), (64, 4, 8, 4, None), (32, 4, 8, 4, None),
                          (128, 4, 4, 8, None), (128, 1, 4, 8, None), (32, 2, 4, 8, None), (128, 2, 8, 4, None),
                          (64, 1, 2, 8, None), (64, 2, 2, 8, None), (128, 1, 1, 8, None)],
              "down": [(16, 16, 32, 8, None), (32, 16, 32, 8, None), (32, 8, 32, 8, None), (64, 4, 8, 8, None),
                       (32, 8, 16, 8, None), (64, 8, 16, 8, None), (128, 4, 8, 8, None), (32, 4, 8, 8, None),
                       (64, 2, 4, 8, None), (128, 2, 4, 8, None), (16, 8, 16, 8, None)]},
    "pipe": {"gate/up": [(64, 2, 4, 8, None), (128, 2, 4, 8, None), (32, 4, 32, 1, 2), (32, 4, 32, 1, 3),
                         (32, 8, 32, 1, 2), (16, 8, 32, 1, 2), (16, 4, 32, 1, 3), (32, 4, 16, 2, 2), (32, 2, 8, 4, 2),
                         (64, 2, 8, 4, 2), (64, 4, 16, 2, 2), (64, 1, 8, 4, 2), (64, 1, 8, 4, 3), (16, 2, 16, 2, 4)],
             "down": [(64, 2, 4, 8, None), (16, 16, 32, 8, None), (16, 8, 32, 8, 2), (16, 4, 32, 8, 3),
                      (32, 4, 32, 8, 2), (32, 4, 32, 8, 3), (64, 2, 16, 8, 2), (32, 4, 16, 8, 2), (16, 4, 16, 8, 2),
                      (32, 2, 16, 8, 3), (16, 2, 16, 8, 4), (32, 2, 32, 8, 4)]},
    "bulk": {"gate/up": [(64, 2, 4, 8, None), (64, 4, 16, 2, 2), (128, 2, 4, 8, "bulk"), (128, 4, 8, 4, "bulk"),
                         (64, 4, 8, 4, "bulk"), (64, 2, 4, 8, "bulk"), (128, 2, 8, 4, "bulk"), (64, 4, 16, 2, "bulk"),
                         (32, 4, 8, 4, "bulk"), (64, 8, 8, 4, "bulk"), (128, 1, 4, 8, "bulk"), (64, 4, 4, 8, "bulk")],
             "down": [(64, 2, 4, 8, None), (32, 4, 16, 8, 2), (32, 8, 32, 8, "bulk"), (16, 16, 32, 8, "bulk"),
                      (32, 8, 16, 8, "bulk"), (64, 8, 16, 8, "bulk"), (16, 8, 16, 8, "bulk"), (64, 4, 8, 8, "bulk"),
                      (32, 16, 32, 8, "bulk"), (64, 4, 16, 8, "bulk"), (32, 4, 8, 8, "bulk")]},
    "xfirst": {"gate/up": [(64, 2, 4, 8, None), (64, 4, 16, 2, 2), (64, 2, 8, 4, 2), (32, 4, 16, 2, 2),
                           (64, 4, 8, 4, None), (32, 4, 8, 4, None), (64, 4, 4, 8, None), (128, 2, 4, 8, None)],
               "down": [(16, 16, 32, 8, None), (64, 2, 4, 8, None), (32, 4, 16, 8, 2), (16, 8, 32, 8, 2),
                        (32, 16, 32, 8, None), (16, 16, 16, 8, None), (32, 8, 16, 8, None), (16, 8, 16, 8, None)]},
}
TILE_SET = os.environ.get("CG_SET", "xfirst")
TILES = TILE_SETS[TILE_SET]
X_FIRST = (0, 1) if TILE_SET == "xfirst" else (0,)
# the best Triton read-only tile per (layer, bits) in run 13 (docs/kernels/h200_run13_stream_ceiling.md):
# (BN, warps, splits, C, stages)
TRITON_READ = {("gate/up", 4): (1024, 8, 32, 1, 1), ("gate/up", 2): (1024, 8, 32, 1, 1),
               ("down", 4): (256, 4, 32, 1, 3), ("down", 2): (256, 4, 32, 2, 3)}
_compile = getattr(torch.cuda, "compile_kernel", None) or torch.cuda._compile_kernel


def build(bits, tx, tk, gpc, cl, pipe, read_only=False, x_first=0):
    opts = [f"-DBITS={bits}", f"-DTX={tx}", f"-DTK={tk}", f"-DGPC={gpc}", f"-DCL={cl}",
            f"-DREAD_ONLY={int(read_only)}", f"-DX_FIRST={x_first}", "-std=c++17"]
    opts += ["-DBULK=1"] if pipe == "bulk" else [f"-DPIPE={pipe}"] if pipe else []
    return _compile(SRC, "gemv1_cuda", compute_capability="90a", nvcc_options=opts)


def valid(N, K, tile):
    tx, tk, gpc, cl, pipe = tile
    G = K // 64
    return (N % (4 * tx) == 0 and G % gpc == 0 and gpc % tk == 0 and (G // gpc) % cl == 0 and (4 * tx) % cl == 0
            and (pipe if isinstance(pipe, int) else 1) <= gpc // tk)


def dynamic_smem(bits, tile):
    """Bytes of dynamic shared memory a bulk tile takes (cuda_gemv1.cu: words, S, Z, one mbarrier per group)."""
    tx, _, gpc, _, pipe = tile
    return gpc * (2 * bits * 4 * tx * 4 + 4 * tx * 4 + 8) if pipe == "bulk" else 0


def time_tile(name, bits, N, K, tile, x, cs, out, copies, ref) -> list:
    """Entries for one tile: the GEMV checked and timed for each X_FIRST, its read-only build timed once."""
    tx, tk, gpc, cl, _ = tile
    grid, block, smem = (N // (4 * tx), K // 64 // gpc, 1), (tx * tk, 1, 1), dynamic_smem(bits, tile)
    ws = torch.zeros(N, device="cuda")
    counters = torch.zeros(N // (4 * tx), device="cuda", dtype=torch.int32)

    def run(p, k):
        k(grid=grid, block=block, args=[p.data, p.scale_t, p.zero_t, x, cs, out, ws, counters, N], shared_mem=smem)
        return out

    entries, read_us = [], None
    for xf in X_FIRST:
        entry = dict(tile=tile, x_first=xf, ctas=grid[0] * grid[1], threads=block[0], smem=smem)
        entries.append(entry)
        try:
            kern = build(bits, *tile, x_first=xf)
            kern.set_shared_memory_config(smem)
        except Exception as e:
            entry.update(us=float("inf"), error=f"{type(e).__name__}: {e}"[:600])
            print(f"{name} W{bits} {tile}: build failed: {entry['error']}", flush=True)
            continue
        entry.update(checked_time(lambda p, k=kern: run(p, k), copies, ref))
        if read_us is None:
            try:  # the read-only build's sums are meaningless: timed, not checked
                kern_read = build(bits, *tile, read_only=True)
                kern_read.set_shared_memory_config(smem)
                read_us = graph_time_us([lambda p=p: run(p, kern_read) for p in copies])
            except RuntimeError as e:
                read_us, entry["read_error"] = float("inf"), f"{type(e).__name__}: {e}"[:300]
        entry["read_us"] = read_us
        print(f"{name} W{bits} {tile} x_first={xf} ctas={entry['ctas']} thr={block[0]}: {entry['us']:.2f} µs "
              f"(read-only {read_us:.2f}) err={entry.get('err', entry.get('error'))}", flush=True)
    return entries


def main() -> None:
    args = script_args(__doc__)
    sms = triton_backend._num_sms(torch.device("cuda"))
    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, bandwidth_GBps=measure_bandwidth() / 1e9,
               rows=[])
    t0 = time.time()
    for name, N, K, bits, g, w, cs, wcopies, packed, copies in script_layers(LAYERS, BITS, l2_bytes()):
        G, WG = K // 64, 2 * bits
        x = torch.randn(1, K, device="cuda", generator=g).to(torch.bfloat16)
        ref = x.double() @ reference.effective_weight(packed, cs).double().t()
        out = torch.empty(1, N, device="cuda", dtype=torch.bfloat16)
        row = dict(layer=name, N=N, K=K, bits=bits, floor_us=packed.nbytes / (res["bandwidth_GBps"] * 1e9) * 1e6)
        row["bf16_us"] = graph_time_us([lambda c=c: F.linear(x, c) for c in wcopies])
        first = triton_backend._gemv1_candidates(bits, 64, K, N, sms)[0]
        row["triton"] = dict(cfg=first, **checked_time(
            lambda p: triton_backend._launch_gemv1(first, x, cs, p, None, None, out), copies, ref))
        bn, warps, splits, c, st = TRITON_READ[(name, bits)]
        part = torch.empty(splits, N, device="cuda")
        row["triton_read_us"] = graph_time_us([lambda p=p: read_kernel[(N // bn, splits)](
            p.data, p.scale_t, p.zero_t, part, N, G, G // splits, WG=WG, C=c, BN=bn, STAGES=st, num_warps=warps)
            for p in copies])
        row["cuda"] = []
        for tile in TILES[name]:
            if valid(N, K, tile):
                row["cuda"] += time_tile(name, bits, N, K, tile, x, cs, out, copies, ref)
        best = min(row["cuda"], key=lambda e: e["us"], default=dict(us=float("inf"), tile=None, x_first=0))
        print(f"== {name} W{bits}: bf16 {row['bf16_us']:.2f}  triton {row['triton']['us']:.2f} "
              f"(read tile {row['triton_read_us']:.2f})  cuda best {best['us']:.2f} {best['tile']} x_first={best['x_first']}  "
              f"floor {row['floor_us']:.2f}  [{time.time() - t0:.0f}s]", flush=True)
        res["rows"].append(row)
        (args.out / "cuda_gemv_ab.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
