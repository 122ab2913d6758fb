"""One feature of the online quantize pass switched off and on, side by side (GPU).

    Q_AB=held|fastdiv python scripts/quantize_feature_ab.py --out DIR

``quantize_kernel`` sweeps each group twice: min/max, then round and pack (or, for TTQ's dense
large-M step, dequantize and store Ŵ/cs). Features:

* held (``QUANTIZE_HELD``): the second sweep reuses the first's (W − B A)·cs chunks instead of
  loading and scaling W again;
* fastdiv (``QDQ_FAST_DIV``): the dense pass divides by cs with PTX div.approx instead of Triton's
  div.full (both 2 ulp of fp32).

Interleaved (off, on, off, on), on Gemma-2B and Gemma-300M layers at W4 / W2, rank 0 and 16: the
packing pass (``quantize_pack``) and the dense pass (``qdq_weight``), with the outputs of both
settings compared (bit for bit, and the dense one's largest relative difference). Timing as in
``vla_ttq.kernels.bench`` (CUDA-graph replays, weights rotating past L2). Writes
quantize_<feature>_ab.json.
"""

from __future__ import annotations

import json
import os
import statistics

import torch

from vla_ttq.kernels import triton_backend
from vla_ttq.kernels.bench import graph_time_us, l2_bytes, rotating_copies, script_args

LAYERS = {"gemma2b gate/up": (16384, 2048), "gemma2b down": (2048, 16384), "gemma2b q/o": (2048, 2048),
          "gemma300m gate/up": (4096, 1024)}
GROUP = 64
SWITCH = {"held": "QUANTIZE_HELD", "fastdiv": "QDQ_FAST_DIV"}
FEATURE = os.environ.get("Q_AB", "held")


def main() -> None:
    args = script_args(__doc__)
    if FEATURE not in SWITCH:
        raise SystemExit(f"Q_AB must be one of {sorted(SWITCH)}, not {FEATURE!r}")
    l2 = l2_bytes()
    res = dict(device=torch.cuda.get_device_name(), feature=FEATURE, rows=[])
    for name, (N, K) in LAYERS.items():
        g = torch.Generator(device="cuda").manual_seed(N + K)
        w = (torch.randn(N, K, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
        cs = torch.rand(K, device="cuda", generator=g) * 1.5 + 0.5
        b = (torch.randn(N, 16, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
        a = (torch.randn(16, K, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
        copies = rotating_copies(w, N * K * 2, l2)
        for bits in (4, 2):
            for rank in (0, 16):
                lowrank = None if rank == 0 else (b, a)
                row = dict(layer=name, N=N, K=K, bits=bits, rank=rank)
                outs, times = {}, {}
                for on in (False, True, False, True):
                    setattr(triton_backend, SWITCH[FEATURE], on)
                    p = triton_backend.quantize_pack(w, cs, bits, GROUP, lowrank=lowrank)
                    dense = triton_backend.qdq_weight(w, cs, bits, GROUP, lowrank=lowrank)
                    outs[on] = (p.data, p.scale, p.zero, dense)
                    for kind, fn in (("pack", triton_backend.quantize_pack), ("dense", triton_backend.qdq_weight)):
                        us = graph_time_us([lambda c=c, fn=fn: fn(c, cs, bits, GROUP, lowrank=lowrank) for c in copies])
                        times.setdefault(f"{kind}_{'on' if on else 'off'}", []).append(us)
                setattr(triton_backend, SWITCH[FEATURE], True)
                row["same_bits"] = all(torch.equal(x, y) for x, y in zip(outs[True], outs[False]))
                d_on, d_off = outs[True][3].double(), outs[False][3].double()
                row["dense_max_rel_diff"] = float(((d_on - d_off).abs() / d_off.abs().clamp_min(1e-30)).max())
                row["dense_frac_differ"] = float((d_on != d_off).double().mean())
                row.update({k: statistics.median(v) for k, v in times.items()}, runs=times)
                res["rows"].append(row)
                print(f"{name:18s} W{bits} r{rank:2d} {FEATURE} off -> on: pack {row['pack_off']:6.1f} -> "
                      f"{row['pack_on']:6.1f}  dense {row['dense_off']:6.1f} -> {row['dense_on']:6.1f}  same bits "
                      f"{row['same_bits']} (dense: {row['dense_frac_differ']:.1e} differ, max rel {row['dense_max_rel_diff']:.1e})",
                      flush=True)
                (args.out / f"quantize_{FEATURE}_ab.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
