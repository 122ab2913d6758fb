"""The weight-as-left-operand GEMM (``quant_matmul_wa_kernel``) against what runs now (GPU).

    python scripts/wa_gemm.py --out DIR      (WA_MS=1,8,16 picks the token counts)

For Gemma-2B's gate/up, down and q/o (WA_LAYERS may also name Qwen3's q of 8B, 14B and 32B) at
W4 and W2 (g64), 1-64 tokens: bf16 cuBLAS, what ``quant_matmul`` runs (GEMV / GEMM / dequantize +
cuBLAS, heuristic tiles), the dequantizing tensor-core GEMM's heuristic tile, and tiles of the new
kernel (columns, pipeline stages, split-K for 1, 2 or 4 programs an SM;
WA_TILES=bn/warps/gt/stages/waves,... overrides them). Every variant is checked against float64
first. Timing as in ``vla_ttq.kernels.bench`` (CUDA graphs over weight copies that do not fit in
L2). Writes wa_gemm.json.
"""

from __future__ import annotations

import json
import os
import time

import torch
import torch.nn.functional as F

from vla_ttq.kernels import reference, triton_backend
from vla_ttq.kernels.bench import checked_time, graph_time_us, l2_bytes, rel_err, script_args, script_layers

LAYERS = {"gate/up": (16384, 2048), "down": (2048, 16384), "q/o": (2048, 2048)}
MORE_LAYERS = {"qwen3-8B q": (4096, 4096), "qwen3-14B q": (5120, 5120), "qwen3-32B q": (8192, 5120)}  # by name only
LAYERS = {k: {**LAYERS, **MORE_LAYERS}[k] for k in os.environ.get("WA_LAYERS", ",".join(LAYERS)).split(",")}
# (BN, warps, GT, stages, programs per SM)
WA_TILES = [(bn, 4, 1, st, waves) for bn in (64, 128, 256) for st in (2, 3) for waves in (1, 2, 4)]
if os.environ.get("WA_TILES"):
    WA_TILES = [tuple(int(v) for v in t.split("/")) for t in os.environ["WA_TILES"].split(",")]


def wa_cfgs(M: int, N: int, K: int, sms: int) -> list[tuple]:
    bm = triton_backend._gemm_rows(M)
    cfgs = [(bm, bn, gt, triton_backend._split(K // 64, gt, N, bn, M, bm, waves, sms), warps, stages)
            for bn, warps, gt, stages, waves in WA_TILES]
    return list(dict.fromkeys(cfgs))


def cases():
    """For each layer (WA_LAYERS), width (W4, W2) and token count (WA_MS): the row's first fields
    (bf16 cuBLAS timed) and the case's inputs: (row, x, float64 reference, out, cs, packed, copies)."""
    for name, N, K, bits, g, w, cs, wcopies, packed, copies in script_layers(LAYERS, (4, 2), l2_bytes()):
        wref = reference.effective_weight(packed, cs).double()
        for M in [int(v) for v in os.environ.get("WA_MS", "5,8,16,32,64").split(",")]:
            x = torch.randn(M, K, device="cuda", generator=g).to(torch.bfloat16)
            out = torch.empty(M, N, device="cuda", dtype=torch.bfloat16)
            path = triton_backend.path_for(M, N, K, bits)
            row = dict(layer=name, N=N, K=K, bits=bits, M=M, path=path)
            row["bf16_us"] = graph_time_us([lambda c=c: F.linear(x, c) for c in wcopies])
            yield row, x, x.double() @ wref.t(), out, cs, packed, copies


def main() -> None:
    args = script_args(__doc__)
    sms = triton_backend._num_sms(torch.device("cuda"))
    res = dict(device=torch.cuda.get_device_name(), rows=[])
    t_start = time.time()
    for row, x, ref, out, cs, packed, copies in cases():
        name, N, K, bits, M = (row[k] for k in ("layer", "N", "K", "bits", "M"))
        row["err_now"] = rel_err(triton_backend.quant_matmul(x, packed, cs), ref)
        row["now_us"] = graph_time_us([lambda p=p: triton_backend.quant_matmul(x, p, cs) for p in copies])
        cands = triton_backend._candidates(bits, 64, K, N, M, sms)
        variants = [("dot", next(c for c in cands if len(c) == 5))]  # the dequantizing kernel's heuristic
        variants += [("wa", c) for c in wa_cfgs(M, N, K, sms)]
        row["tiles"] = []
        for kind, cfg in variants:
            row["tiles"].append(dict(kind=kind, cfg=cfg, **checked_time(
                lambda p, c=cfg: triton_backend._launch(c, x, cs, p, None, None, out), copies, ref)))
        wa = [t for t in row["tiles"] if t["kind"] == "wa"]
        best = min(wa, key=lambda t: t["us"])
        row["wa_best_us"], row["wa_best_cfg"] = best["us"], best["cfg"]
        row["wa_first_us"] = wa[0]["us"]
        row["dot_us"] = row["tiles"][0]["us"]
        res["rows"].append(row)
        print(f"{name:8s} W{bits} M={M:3d} bf16 {row['bf16_us']:6.1f}  now({row['path']}) {row['now_us']:6.1f}  "
              f"dot {row['dot_us']:6.1f}  wa first {row['wa_first_us']:6.1f} best {best['us']:6.1f} {best['cfg']} "
              f"err {best.get('err', float('nan')):.1e}  [{time.time() - t_start:.0f}s]", flush=True)
        (args.out / "wa_gemm.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
