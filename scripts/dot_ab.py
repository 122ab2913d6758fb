"""A/B of the tensor-core matmul (path "dot", 2 <= M <= 64): one product per group of raw codes
(``_group_dot``) against the per-slab dequantized tiles it replaces (``_dot_slice``), every tile
candidate of each, beside bf16 cuBLAS and dequantize + cuBLAS, in one run on one GPU.

    PYTHONPATH=$PWD python scripts/dot_ab.py --out DIR [--ms 2,4,8,16,32,64] [--bits 4,2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vla_ttq.kernels import bench, reference, triton_backend as tb

LAYERS = [("q/o", 2048, 2048), ("k/v", 256, 2048), ("gate/up", 16384, 2048), ("down", 2048, 16384),
          ("qwen3-8B q", 4096, 4096)]


def time_variant(fn_of_packed, copies):
    return bench.graph_time_us([lambda p=p: fn_of_packed(p) for p in copies])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--ms", default="2,4,8,16,32,64")
    ap.add_argument("--bits", default="4,2")
    ap.add_argument("--layers", default=",".join(n for n, _, _ in LAYERS))
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--budget-s", type=float, default=480)
    args = ap.parse_args()
    t0 = time.time()
    props = torch.cuda.get_device_properties(0)
    l2 = props.L2_cache_size
    sms = props.multi_processor_count
    rows = []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, N, K in LAYERS:
        if name not in args.layers.split(","):
            continue
        g = torch.Generator(device="cuda").manual_seed(N + K)
        w = (torch.randn(N, K, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
        cs = torch.rand(K, device="cuda", generator=g) * 1.5 + 0.5
        lr = None
        if args.rank:
            lr = ((torch.randn(N, args.rank, device="cuda", generator=g) * 0.02).to(torch.bfloat16),
                  (torch.randn(args.rank, K, device="cuda", generator=g) * 0.02).to(torch.bfloat16))
        wcopies = [w] + [w.clone() for _ in range(bench.n_copies(2 * N * K, l2) - 1)]
        for bits in (int(b) for b in args.bits.split(",")):
            packed = tb.quantize_pack(w, cs, bits, 64)
            copies = [packed] + [packed.clone() for _ in range(bench.n_copies(N * K * bits // 8, l2) - 1)]
            for M in (int(m) for m in args.ms.split(",")):
                if time.time() - t0 > args.budget_s:
                    print("budget spent, stopping", flush=True)
                    break
                x = torch.randn(M, K, device="cuda", generator=g).to(torch.bfloat16)
                ref = reference.quant_matmul(x.double(), packed, cs.double(),
                                             None if lr is None else (lr[0].double(), lr[1].double()))
                row = dict(layer=name, N=N, K=K, M=M, bits=bits, rank=args.rank)
                row["bf16"] = bench.graph_time_us([lambda wc=wc: F.linear(x, wc) for wc in wcopies])
                row["dequant"] = time_variant(lambda p: tb.quant_matmul(x, p, cs, lr, path="dequant"), copies)
                for label, flag in (("slab", False), ("group", True)):
                    tb.GROUP_DOT = flag
                    res = []
                    for i, cfg in enumerate(tb._candidates(True, bits, 64, K, N, M, sms)):
                        o = torch.empty(M, N, device="cuda", dtype=torch.bfloat16)
                        try:
                            tb._launch(cfg, x, cs, packed, lr, None, o, True)
                            err = bench.rel_err(o, ref)
                            t = time_variant(lambda p, c=cfg, o=o: tb._launch(c, x, cs, p, lr, None, o, True), copies)
                        except Exception as exc:  # report, keep going
                            print("FAILED", label, cfg, repr(exc)[:300], flush=True)
                            continue
                        res.append(dict(cfg=cfg, us=t, err=err, heuristic=i == 0))
                    row[label] = res
                tb.GROUP_DOT = True
                rows.append(row)
                fmt = lambda r: " ".join(f"{x['cfg']}:{x['us']:.1f}" for x in r)  # noqa: E731
                best = {k: min(row[k], key=lambda r: r["us"]) for k in ("slab", "group") if row[k]}
                print(f"{name:11s} W{bits} M={M:<3d} bf16 {row['bf16']:.1f} dequant {row['dequant']:.1f} | "
                      + " | ".join(f"{k} heur {row[k][0]['us']:.1f} best {b['us']:.1f} {b['cfg']} err {b['err']:.1e}"
                                   for k, b in best.items()), flush=True)
                print("   group all:", fmt(row.get("group", [])), flush=True)
                (out / "dot_ab.json").write_text(json.dumps(dict(device=props.name, rows=rows)) + "\n")


if __name__ == "__main__":
    main()
