"""Small layers at 2-8 tokens: every path and tile against the heuristic's choice (GPU only).

    python scripts/small_layer_tiles.py --out DIR      (SL_MS=2,3,4,5,8  SL_BITS=4,2  SL_LAYERS=2b k/v,...)

Layers under WA_MIN_NK weights (Gemma-2B's k/v, Gemma-300M's layers) take the split-K tensor-core
GEMM at 2-8 tokens with its heuristic tile. Run 14's autotuner check found a tile of the
weight-as-left-operand GEMM 1.8x faster there (k/v, 3 tokens: 6.5 -> 3.5 µs). This times, per
(layer, M, width), bf16 cuBLAS, what ``quant_matmul`` picks now, every candidate of the GEMM path
(``_candidates``: split-K GEMM and weight-as-left-operand tiles, and the latter's heuristics for
small, mid-size and large layers), the GEMV's heuristic tile
(M <= 4) and dequantize + cuBLAS, each checked against float64 first. Timing as in
``vla_ttq.kernels.bench`` (CUDA-graph replays, weights rotating past L2). Writes small_layer_tiles.json.
"""

from __future__ import annotations

import json
import os
import time

import torch

from vla_ttq.kernels import triton_backend
from vla_ttq.kernels.bench import checked_time, script_args, script_token_cases

LAYERS = {"2b k/v": (256, 2048), "300m q": (2048, 1024), "300m k/v": (256, 1024), "300m o": (1024, 2048),
          "2b q/o": (2048, 2048), "300m gate/up": (4096, 1024), "300m down": (1024, 4096), "qwen3-4b q": (4096, 2560)}
# the last four are mid-size (4M-12M weights): only where SL_LAYERS names them
LAYERS = {k: LAYERS[k] for k in os.environ.get("SL_LAYERS", "2b k/v,300m q,300m k/v,300m o").split(",")}
MS = tuple(int(m) for m in os.environ.get("SL_MS", "2,3,4,5,8").split(","))
BITS = tuple(int(b) for b in os.environ.get("SL_BITS", "4,2").split(","))


def main() -> None:
    args = script_args(__doc__)
    sms = triton_backend._num_sms(torch.device("cuda"))
    res = dict(device=torch.cuda.get_device_name(), rows=[])
    t0 = time.time()
    for row, x, cs, ref, out, copies in script_token_cases(LAYERS, BITS, MS):
        name, N, K, M, bits, path = (row[k] for k in ("layer", "N", "K", "M", "bits", "path"))
        row["variants"] = []
        row["picked"] = checked_time(lambda p: triton_backend.quant_matmul(x, p, cs), copies, ref)
        G = K // 64  # the weight-as-left-operand kernel's heuristics, also where it is not (yet) first
        extra = [triton_backend._wa_small_heuristic(M, N, G), triton_backend._wa_heuristic(M, N, G, sms, True),
                 triton_backend._wa_heuristic(M, N, G, sms)]
        for cfg in dict.fromkeys(triton_backend._candidates(bits, 64, K, N, M, sms) + extra):
            row["variants"].append(dict(kind="dot", cfg=cfg, **checked_time(
                lambda p, c=cfg: triton_backend._launch(c, x, cs, p, None, None, out), copies, ref)))
        if M <= triton_backend.GEMV_MAX_M:
            cfg = triton_backend._gemv1_candidates(bits, 64, K, N, sms, triton_backend._next_pow2(M))[0]
            row["variants"].append(dict(kind="gemv", cfg=cfg, **checked_time(
                lambda p, c=cfg: triton_backend._launch_gemv1(c, x, cs, p, None, None, out), copies, ref)))
        row["variants"].append(dict(kind="dequant", cfg=None, **checked_time(
            lambda p: triton_backend.quant_matmul(x, p, cs, path="dequant"), copies, ref)))
        best = min(row["variants"], key=lambda v: v["us"])
        res["rows"].append(row)
        print(f"{name:9s} M={M} W{bits} bf16 {row['bf16_us']:5.2f} picked ({path}) {row['picked']['us']:5.2f}  "
              f"best {best['kind']} {best['cfg']} {best['us']:5.2f}  [{time.time() - t0:.0f}s]", flush=True)
        (args.out / "small_layer_tiles.json").write_text(json.dumps(res, indent=1))

if __name__ == "__main__":
    main()
