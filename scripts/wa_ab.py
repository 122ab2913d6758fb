"""A/B of one feature of the weight-as-left-operand GEMM, tile by tile (GPU).

    WA_AB=pairs|atomic|scaled python scripts/wa_ab.py --out DIR   (WA_MS, WA_LAYERS, WA_TILES as in scripts/wa_gemm.py)

pairs (run 12): codes made two per instruction in the pair order (``pair_order``) against one at a
time (pair_order patched to None, channels in order). atomic (run 12): K splits added by atomics,
the last program writing y (``WA_ATOMIC_TAIL``), against partial sums and ``reduce_kernel``. scaled
(run 15): every code made S·c + Z and rounded to x's dtype before one chained dot (``WA_SCALED_MIN_BM``),
against S and Z applied to each group's dot.
For Gemma-2B's gate/up, down and q/o at W4 and W2 (g64), 5-64 tokens: bf16 cuBLAS, what
``quant_matmul`` runs now (the backend's own settings), and for each tile of ``quant_matmul_wa_kernel``
the launch with the feature ("on") and without it ("off"), timed one after the other. Every launch is
checked against float64 first. Writes wa_ab_<feature>.json.
"""

from __future__ import annotations

import json
import os
import time

import torch
from wa_gemm import cases, wa_cfgs

from vla_ttq.kernels import triton_backend
from vla_ttq.kernels.bench import backend_set, checked_time, graph_time_us, script_args

FEATURE = os.environ.get("WA_AB", "pairs")
PAIR_ORDER = triton_backend.pair_order


def feature(on: bool) -> dict:
    """The triton_backend attributes that switch FEATURE on or off (``backend_set``)."""
    if FEATURE == "pairs":
        return dict(pair_order=PAIR_ORDER if on else (lambda bits, group: None))
    if FEATURE == "atomic":
        return dict(WA_ATOMIC_TAIL=on)
    if FEATURE == "scaled":
        return dict(WA_SCALED_MIN_BM=1 if on else 1 << 30)
    raise SystemExit(f"WA_AB must be pairs, atomic or scaled, not {FEATURE!r}")


def timed(cfg, x, cs, copies, out, ref, on: bool) -> dict:
    with backend_set(**feature(on)):
        return checked_time(lambda p: triton_backend._launch(cfg, x, cs, p, None, None, out), copies, ref)


def main() -> None:
    args = script_args(__doc__)
    sms = triton_backend._num_sms(torch.device("cuda"))
    feature(True)  # an unknown feature stops here; "now" below runs the backend's own rule, which run 15's script
    # did not (it left the feature on for every tile size, and hid a slowdown of the 16-row tiles, run 16)
    res = dict(device=torch.cuda.get_device_name(), feature=FEATURE, rows=[])
    t_start = time.time()
    for row, x, ref, out, cs, packed, copies in cases():
        name, N, K, bits, M = (row[k] for k in ("layer", "N", "K", "bits", "M"))
        row["now_us"] = graph_time_us([lambda p=p: triton_backend.quant_matmul(x, p, cs) for p in copies])
        row["tiles"] = [dict(cfg=cfg, on=timed(cfg, x, cs, copies, out, ref, True),
                             off=timed(cfg, x, cs, copies, out, ref, False))
                        for cfg in wa_cfgs(M, N, K, sms)]
        best = {k: min(row["tiles"], key=lambda t: t[k]["us"]) for k in ("on", "off")}
        for k, t in best.items():
            row[f"{k}_us"], row[f"{k}_cfg"], row[f"{k}_err"] = t[k]["us"], t["cfg"], t[k].get("err")
        res["rows"].append(row)
        print(f"{name:8s} W{bits} M={M:3d} bf16 {row['bf16_us']:6.1f}  now({row['path']}) {row['now_us']:6.1f}  "
              f"off {row['off_us']:6.1f} {row['off_cfg']}  {FEATURE} {row['on_us']:6.1f} {row['on_cfg']} "
              f"err {row['on_err'] or float('nan'):.1e}  [{time.time() - t_start:.0f}s]", flush=True)
        (args.out / f"wa_ab_{FEATURE}.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
