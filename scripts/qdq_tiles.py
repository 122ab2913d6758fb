"""Tiles of the online quantize pass (dense and packing) and the column scale, timed on the GPU.

    python scripts/qdq_tiles.py --out DIR

For the Gemma-2B layers: every (rows, groups, warps) tile of the quantize kernel writing the
dequantized weight (``qdq_weight``, r = 0 and r = 16) and writing packed W2 / W4 codes
(``quantize_pack``, W4 and W2 at r = 0, W4 at r = 16 (B A on tensor cores: at least 16 rows, one
group); its words, S and Z compared with the default tile's), beside the packing
pass with the default tile and one bf16 read of W (the online quantize target is two); and
``column_scale`` at 1, 50 and 800 tokens. Timing as in ``vla_ttq.kernels.bench`` (CUDA-graph
replays, W rotating past L2). Writes qdq_tiles.json.
"""

from __future__ import annotations

import json

import torch

from vla_ttq.kernels import triton_backend
from vla_ttq.kernels.bench import graph_time_us, l2_bytes, rotating_copies, script_args

LAYERS = [("q/o", 2048, 2048), ("gate/up", 16384, 2048), ("down", 2048, 16384), ("300m gate/up", 4096, 1024)]
TILES = [(32, 1, 1), (16, 1, 1), (64, 1, 1), (64, 1, 2), (128, 1, 4), (32, 2, 1), (32, 1, 2), (128, 1, 2),
         (16, 1, 2), (64, 1, 4)]


def main() -> None:
    args = script_args(__doc__)
    l2 = l2_bytes()
    res = dict(device=torch.cuda.get_device_name(), rows=[], pack=[], scale=[])
    for name, N, K in LAYERS:
        g = torch.Generator(device="cuda").manual_seed(N + K)
        w = (torch.randn(N, K, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
        lr = ((torch.randn(N, 16, device="cuda", generator=g) * 0.02).to(torch.bfloat16),
              (torch.randn(16, K, device="cuda", generator=g) * 0.02).to(torch.bfloat16))
        cs = torch.rand(K, device="cuda", generator=g) + 0.5
        copies = rotating_copies(w, N * K * 2, l2)
        one_read = graph_time_us([lambda c=c: c.sum(dtype=torch.float32) for c in copies])  # one read of W
        packed = graph_time_us([lambda c=c: triton_backend.quantize_pack(c, cs, 2, 64) for c in copies])
        ref = triton_backend.quantize_pack(w, cs, 2, 64).dequantize() / cs
        for rank in (0, 16):
            lowrank = lr if rank else None
            want = ref if not rank else None
            for tile in TILES:
                row = dict(layer=name, N=N, K=K, rank=rank, tile=tile, packed_us=packed, one_read_us=one_read)
                try:
                    out = triton_backend.qdq_weight(w, cs, 2, 64, lowrank=lowrank, tile=tile)
                    if want is not None:
                        row["err"] = float((out.float() - want).norm() / want.norm())
                    row["us"] = graph_time_us([lambda c=c: triton_backend.qdq_weight(c, cs, 2, 64, lowrank=lowrank,
                                                                                    tile=tile) for c in copies])
                except Exception as e:  # a tile that fails is a finding
                    row["error"] = f"{type(e).__name__}: {e}"[:200]
                    row["us"] = float("inf")
                res["rows"].append(row)
                print(f"{name:12s} r{rank:2d} tile {tile}: {row['us']:7.1f} us (packed pass {packed:.1f}, one bf16 "
                      f"read {one_read:.1f}) {row.get('error', '')}", flush=True)
        for bits, rank in ((4, 0), (2, 0), (4, 16)):
            lowrank = lr if rank else None
            ref = triton_backend.quantize_pack(w, cs, bits, 64, lowrank=lowrank)
            for tile in TILES:
                got = triton_backend.quantize_pack(w, cs, bits, 64, lowrank=lowrank, tile=tile)
                same = all(torch.equal(a, b) for a, b in ((got.data, ref.data), (got.scale, ref.scale),
                                                          (got.zero, ref.zero)))
                us = graph_time_us([lambda c=c: triton_backend.quantize_pack(c, cs, bits, 64, lowrank=lowrank,
                                                                             tile=tile) for c in copies])
                res["pack"].append(dict(layer=name, N=N, K=K, bits=bits, rank=rank, tile=tile, us=us, same_bits=same))
                print(f"{name:12s} pack W{bits} r{rank:2d} tile {tile}: {us:7.1f} us{'' if same else ' (bits differ)'}",
                      flush=True)
        for M in (1, 50, 800):
            x = torch.randn(M, K, device="cuda", generator=g).to(torch.bfloat16)
            t = graph_time_us([lambda: triton_backend.column_scale(x)])
            res["scale"].append(dict(layer=name, K=K, M=M, us=t))
            print(f"{name:12s} column_scale M={M:4d} K={K}: {t:.1f} us", flush=True)
        (args.out / "qdq_tiles.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
