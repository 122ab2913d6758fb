"""A wide tile sweep of the split-K tensor-core GEMM (``path="dot"``) at 8-32 tokens (GPU).

    python scripts/dot_tiles.py --out DIR

``_candidates`` offers a few tiles whose tl.dot depth is the minimum (16 word rows of the narrowest
slice: 2 groups at W4 g64). This times deeper tiles too (more groups a tile), with 64-256 columns,
4 or 8 warps and split-K aimed at 1-4 programs per SM, on Gemma-2B gate/up and down at W4 and W2,
against bf16 cuBLAS and the heuristic tile. Every tile is checked against float64 first. Timing as
in ``vla_ttq.kernels.bench``. Writes dot_tiles.json.
"""

from __future__ import annotations

import json
import math

import torch
import torch.nn.functional as F

from vla_ttq.kernels import reference, triton_backend
from vla_ttq.kernels.bench import graph_time_us, l2_bytes, rel_err, script_args, script_layers

LAYERS = {"gate/up": (16384, 2048), "down": (2048, 16384)}


def main() -> None:
    args = script_args(__doc__)
    l2 = l2_bytes()
    sms = triton_backend._num_sms(torch.device("cuda"))
    res = dict(device=torch.cuda.get_device_name(), rows=[])
    for name, N, K, bits, g, w, cs, wcopies, packed, copies in script_layers(LAYERS, (4, 2), l2):
        wref = reference.effective_weight(packed, cs).double()
        gt_min = max(1, 512 // (64 * bits))
        G = K // 64
        for M in (8, 16, 32):
            x = torch.randn(M, K, device="cuda", generator=g).to(torch.bfloat16)
            ref = x.double() @ wref.t()
            out = torch.empty(M, N, device="cuda", dtype=torch.bfloat16)
            bf16 = graph_time_us([lambda c=c: F.linear(x, c) for c in wcopies])
            heur = next(c for c in triton_backend._candidates(bits, 64, K, N, M, sms) if len(c) == 5)
            cfgs = [heur]
            bm = max(16, triton_backend._next_pow2(M))
            for bn in (64, 128, 256):
                for gt in (gt_min, 2 * gt_min, 4 * gt_min, 8 * gt_min):
                    for warps in (4, 8):
                        k_tiles = math.ceil(G / gt)
                        programs = math.ceil(N / bn)
                        for waves in (1, 2, 4):
                            split = max(1, min(k_tiles, math.ceil(waves * sms / programs)))
                            cfg = (bm, bn, gt, split, warps)
                            if cfg not in cfgs:
                                cfgs.append(cfg)
            rows = []
            for cfg in cfgs:
                row = dict(layer=name, bits=bits, M=M, cfg=cfg, bf16_us=bf16, heuristic=cfg == heur)
                try:
                    triton_backend._launch(cfg, x, cs, packed, None, None, out)
                    row["err"] = rel_err(out, ref)
                    if row["err"] > 1e-2:
                        raise AssertionError(f"wrong result: {row['err']:.2e}")
                    row["us"] = graph_time_us([lambda p=p, c=cfg: triton_backend._launch(c, x, cs, p, None, None,
                                                                                        out) for p in copies])
                except Exception as e:  # a tile that fails is a finding
                    row["error"] = f"{type(e).__name__}: {e}"[:200]
                    row["us"] = float("inf")
                rows.append(row)
            res["rows"] += rows
            best = min(rows, key=lambda r: r["us"])
            print(f"{name} W{bits} M={M}: bf16 {bf16:.1f}  heuristic {heur} {rows[0]['us']:.1f}  "
                  f"best {best['cfg']} {best['us']:.1f}  ({len(rows)} tiles)", flush=True)
            (args.out / "dot_tiles.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
