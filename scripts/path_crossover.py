"""Where does the tensor-core GEMM stop beating dequantize + cuBLAS? (GPU)

    python scripts/path_crossover.py --out DIR

For the layers that take the split-K tensor-core GEMM (``path="dot"``) at 9-64 tokens, times it
beside dequantize + cuBLAS (``path="dequant"``) at several M and bit widths, r = 0, after checking
both against float64 (PC_LAYERS, PC_BITS and PC_MS narrow the sweep, e.g. PC_BITS=4 PC_MS=48,64);
writes ``path_crossover.json`` and prints, per layer and width, the largest M at which the GEMM
still wins. ``triton_backend.path_for`` takes its thresholds from this.
Timing as in ``vla_ttq.kernels.bench`` (CUDA-graph replays, weights rotating past L2).
"""

from __future__ import annotations

import json
import os
import traceback

import torch

from vla_ttq.kernels import reference, triton_backend
from vla_ttq.kernels.bench import graph_time_us, l2_bytes, rel_err, script_args, script_layers

LAYERS = {"gemma2b gate/up": (16384, 2048), "gemma2b down": (2048, 16384), "qwen3-4B q": (4096, 2560),
          "qwen3-8B q": (4096, 4096), "qwen3-14B q": (5120, 5120), "qwen3-32B q": (8192, 5120)}
LAYERS = {k: LAYERS[k] for k in os.environ.get("PC_LAYERS", ",".join(LAYERS)).split(",")}
MS = tuple(int(v) for v in os.environ.get("PC_MS", "8,12,16,24,32,48,64").split(","))
BITS = tuple(int(v) for v in os.environ.get("PC_BITS", "2,3,4").split(","))


def main() -> None:
    args = script_args(__doc__)
    l2 = l2_bytes()
    res = dict(device=torch.cuda.get_device_name(), rows=[])
    for name, N, K, bits, g, w, cs, _, packed, copies in script_layers(LAYERS, BITS, l2, cs_span=1.5):
        wref = reference.effective_weight(packed, cs).double()
        for M in MS:
            x = torch.randn(M, K, device="cuda", generator=g).to(torch.bfloat16)
            ref = x.double() @ wref.t()
            row = dict(layer=name, N=N, K=K, bits=bits, M=M)
            for path in ("dot", "dequant"):
                try:
                    row[f"{path}_err"] = rel_err(triton_backend.quant_matmul(x, packed, cs, path=path), ref)
                    row[f"{path}_us"] = graph_time_us([lambda p=p: triton_backend.quant_matmul(x, p, cs, path=path)
                                                       for p in copies])
                except Exception as e:  # recorded: a failing path is a finding too
                    row[f"{path}_error"] = f"{type(e).__name__}: {e}"[:300]
                    row[f"{path}_us"] = float("inf")
                    print(name, bits, M, path, row[f"{path}_error"], flush=True)
                    traceback.print_exc(limit=-4)
            res["rows"].append(row)
            print(name, bits, M, f"dot {row['dot_us']:.1f} dequant {row['dequant_us']:.1f}", flush=True)
        wins = [r["M"] for r in res["rows"] if r["layer"] == name and r["bits"] == bits and r["dot_us"] < r["dequant_us"]]
        print(name, bits, "GEMM wins up to M =", max(wins) if wins else None, flush=True)
        (args.out / "path_crossover.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
