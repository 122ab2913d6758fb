"""The M = 1 GEMV's tiles swept on this GPU (GPU only).

    python scripts/gemv1_tiles.py --out DIR      (G1_LAYERS=gate/up,down  G1_TILES=bn/gps/warps/stages,...)

``gemv1_kernel`` at W4 and W2 (g64) on Gemma-2B's large layers, one token: every tile
(columns per program, groups per program = K split, warps, pipeline stages; fp16x2 pairs) timed
beside the heuristic's tile and bf16 cuBLAS, each checked against float64 first. Timing as in
``vla_ttq.kernels.bench`` (CUDA-graph replays, weights rotating past L2). Writes gemv1_tiles.json.
"""

from __future__ import annotations

import itertools
import json
import os
import time

import torch
import torch.nn.functional as F

from vla_ttq.kernels import reference, triton_backend
from vla_ttq.kernels.bench import checked_time, graph_time_us, l2_bytes, script_args, script_layers

LAYERS = {"gate/up": (16384, 2048), "down": (2048, 16384)}
LAYERS = {k: LAYERS[k] for k in os.environ.get("G1_LAYERS", ",".join(LAYERS)).split(",")}
TILES = [(bn, gps, warps, stages, True) for bn, gps, warps, stages in
         itertools.product((512, 1024, 2048), (1, 2, 4), (4, 8), (1, 2))]
if os.environ.get("G1_TILES"):  # e.g. 128/32/1/3: tiles outside the default sweep, with pairs
    TILES = [tuple(int(v) for v in t.split("/")) + (True,) for t in os.environ["G1_TILES"].split(",")]


def main() -> None:
    args = script_args(__doc__)
    sms = triton_backend._num_sms(torch.device("cuda"))
    res = dict(device=torch.cuda.get_device_name(), rows=[])
    t_start = time.time()
    for name, N, K, bits, g, w, cs, wcopies, packed, copies in script_layers(LAYERS, (4, 2), l2_bytes()):
        x = torch.randn(1, K, device="cuda", generator=g).to(torch.bfloat16)
        ref = x.double() @ reference.effective_weight(packed, cs).double().t()
        out = torch.empty(1, N, device="cuda", dtype=torch.bfloat16)
        first = triton_backend._gemv1_candidates(bits, 64, K, N, sms)[0]
        row = dict(layer=name, N=N, K=K, bits=bits, heuristic=first, tiles=[])
        row["bf16_us"] = graph_time_us([lambda c=c: F.linear(x, c) for c in wcopies])
        for cfg in [first] + [t for t in TILES if t != first]:
            row["tiles"].append(dict(cfg=cfg, **checked_time(
                lambda p, c=cfg: triton_backend._launch_gemv1(c, x, cs, p, None, None, out), copies, ref)))
        best = sorted(row["tiles"], key=lambda t: t["us"])
        row["heuristic_us"] = row["tiles"][0]["us"]
        row["best_us"], row["best_cfg"] = best[0]["us"], best[0]["cfg"]
        res["rows"].append(row)
        print(f"{name:8s} W{bits} bf16 {row['bf16_us']:5.1f} heuristic {row['heuristic_us']:5.2f} {first}  best: "
              + "  ".join(f"{t['us']:.2f} {t['cfg'][:4]}" for t in best[:5]) + f"  [{time.time() - t_start:.0f}s]",
              flush=True)
        (args.out / "gemv1_tiles.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
