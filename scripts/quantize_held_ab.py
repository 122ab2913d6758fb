"""The online quantize pass with its chunks of W held between sweeps, against reloading them (GPU).

    python scripts/quantize_held_ab.py --out DIR

``quantize_kernel`` sweeps each group twice: min/max, then round and pack (or, for TTQ's dense
large-M step, dequantize and store Ŵ/cs). ``QUANTIZE_HELD`` makes the second sweep reuse the
first's (W − B A)·cs chunks instead of loading and scaling W again. Side by side, interleaved
(off, on, off, on), on the Gemma-2B and Gemma-300M layers at W4 / W2, rank 0 and 16: the packing
pass (``quantize_pack``) and the dense pass (``qdq_weight``); outputs of both settings compared
bit for bit. Timing as in ``vla_ttq.kernels.bench`` (CUDA-graph replays, weights rotating past
L2). Writes quantize_held_ab.json.
"""

from __future__ import annotations

import json
import statistics

import torch

from vla_ttq.kernels import triton_backend
from vla_ttq.kernels.bench import graph_time_us, l2_bytes, rotating_copies, script_args

LAYERS = {"gemma2b gate/up": (16384, 2048), "gemma2b down": (2048, 16384), "gemma2b q/o": (2048, 2048),
          "gemma300m gate/up": (4096, 1024)}
GROUP = 64


def main() -> None:
    args = script_args(__doc__)
    l2 = l2_bytes()
    res = dict(device=torch.cuda.get_device_name(), rows=[])
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
                for held in (False, True, False, True):
                    triton_backend.QUANTIZE_HELD = held
                    p = triton_backend.quantize_pack(w, cs, bits, GROUP, lowrank=lowrank)
                    dense = triton_backend.qdq_weight(w, cs, bits, GROUP, lowrank=lowrank)
                    outs[held] = (p.data, p.scale, p.zero, dense)
                    for kind, fn in (("pack", triton_backend.quantize_pack), ("dense", triton_backend.qdq_weight)):
                        us = graph_time_us([lambda c=c, fn=fn: fn(c, cs, bits, GROUP, lowrank=lowrank) for c in copies])
                        times.setdefault(f"{kind}_{'held' if held else 'reload'}", []).append(us)
                triton_backend.QUANTIZE_HELD = True
                row["same_bits"] = all(torch.equal(x, y) for x, y in zip(outs[True], outs[False]))
                row.update({k: statistics.median(v) for k, v in times.items()}, runs=times)
                res["rows"].append(row)
                print(f"{name:18s} W{bits} r{rank:2d} pack {row['pack_reload']:6.1f} -> {row['pack_held']:6.1f}  "
                      f"dense {row['dense_reload']:6.1f} -> {row['dense_held']:6.1f}  same bits {row['same_bits']}",
                      flush=True)
                (args.out / "quantize_held_ab.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
