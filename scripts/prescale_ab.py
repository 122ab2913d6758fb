"""x / cs made once before the weight-as-left-operand GEMM, or in every program of it (GPU only).

    python scripts/prescale_ab.py --out DIR      (PS_LAYERS=2b q/o,...  PS_MS=2,3,8,...  PS_BITS=4,2)

The kernel's programs of one K range each divided their x tile by cs again, once per column block.
``WA_PRESCALE_M`` moves that into one small kernel (``prescale_kernel``) before the GEMM, on large layers. For each
layer, width and token count this times, interleaved, both ways: ``quant_matmul`` as dispatched (where its
path runs the weight-as-left-operand kernel) and the kernel's heuristic tile launched directly (also where
it is not first), beside dequantize + cuBLAS and bf16 cuBLAS; each checked against float64 first. (With a
low-rank term the kernel needs x itself, so x / cs stays in it: r = 0 only.) Timing as in
``vla_ttq.kernels.bench`` (CUDA-graph replays, weights rotating past L2). Writes prescale_ab.json.
"""

from __future__ import annotations

import json
import os
import time

import torch

from vla_ttq.kernels import triton_backend
from vla_ttq.kernels.bench import backend_set, checked_time, script_args, script_token_cases

LAYERS = {"2b gate/up": (16384, 2048), "2b down": (2048, 16384), "2b q/o": (2048, 2048), "2b k/v": (256, 2048),
          "300m gate/up": (4096, 1024), "300m down": (1024, 4096), "300m q": (2048, 1024)}
LAYERS = {k: LAYERS[k] for k in os.environ.get("PS_LAYERS", ",".join(LAYERS)).split(",")}
MS = tuple(int(m) for m in os.environ.get("PS_MS", "2,3,8,16,24,32,33,48,64").split(","))
BITS = tuple(int(b) for b in os.environ.get("PS_BITS", "4,2").split(","))
OFF, ON = (1 << 30, 1 << 30), (1, 1 << 30)  # WA_PRESCALE_M: no token count, or every one


def both_ways(run, copies, ref) -> dict:
    """``run`` timed with x / cs in the GEMM's programs (off) and made before it (on), each checked first."""
    res = {}
    for name, m_range in (("off", OFF), ("on", ON), ("off2", OFF), ("on2", ON)):  # twice each, interleaved
        with backend_set(WA_PRESCALE_M=m_range, WA_PRESCALE_MIN_NK=0):  # on layers of any size
            res[name] = checked_time(run, copies, ref)
    return {**{k: min(res[k]["us"], res[k + "2"]["us"]) for k in ("off", "on")},
            **{"err_" + k: res[k].get("err", res[k].get("error")) for k in ("off", "on")}}


def main() -> None:
    args = script_args(__doc__)
    sms = triton_backend._num_sms(torch.device("cuda"))
    res = dict(device=torch.cuda.get_device_name(), rows=[])
    t0 = time.time()
    for row, x, cs, ref, out, copies in script_token_cases(LAYERS, BITS, MS):
        name, N, K, M, bits = (row[k] for k in ("layer", "N", "K", "M", "bits"))
        cfg = triton_backend.wa_layer_heuristic(M, N, K, sms)
        row["wa_first"] = triton_backend._candidates(bits, 64, K, N, M, sms)[0] == cfg
        row["dequant_us"] = checked_time(lambda p: triton_backend.quant_matmul(x, p, cs, path="dequant"),
                                         copies, ref)["us"]
        row["picked"] = both_ways(lambda p: triton_backend.quant_matmul(x, p, cs), copies, ref)
        row["tile"] = both_ways(lambda p: triton_backend._launch(cfg, x, cs, p, None, None, out), copies, ref)
        res["rows"].append(row)
        print(f"{name:12s} W{bits} M={M:2d} bf16 {row['bf16_us']:5.1f} dequant {row['dequant_us']:5.1f}  "
              f"picked({row['path']}) {row['picked']['off']:5.1f} -> {row['picked']['on']:5.1f}  "
              f"tile{'*' if row['wa_first'] else ' '} {cfg} {row['tile']['off']:5.1f} -> {row['tile']['on']:5.1f}"
              f"  [{time.time() - t0:.0f}s]", flush=True)
        (args.out / "prescale_ab.json").write_text(json.dumps(res, indent=1))

if __name__ == "__main__":
    main()
