"""The column scale's last one-program sweep over K, its chunk size timed on the GPU.

    python scripts/column_scale_tiles.py --out DIR

``column_scale`` (TTQ's s = D^½ from every activation) ends, on layers wider than SCALE_HELD_MAX_K
channels, with the last program of ``column_scale_finish_kernel`` writing s = u·g for all K alone.
Each ``SCALE_TAIL_CHUNK`` (channels a step of that loop) is timed, twice and interleaved, at
K = 16384 (Gemma-2B's down) and 8192, for 1, 50 and 800 tokens, and its s compared bit for bit with
the default's. Timing as in ``vla_ttq.kernels.bench`` (CUDA-graph replays). Writes
column_scale_tiles.json.
"""

from __future__ import annotations

import json
import statistics

import torch

from vla_ttq.kernels import triton_backend
from vla_ttq.kernels.bench import graph_time_us, script_args

CHUNKS = [1024, 2048, 4096, 8192]


def main() -> None:
    args = script_args(__doc__)
    default = triton_backend.SCALE_TAIL_CHUNK
    res = dict(device=torch.cuda.get_device_name(), default=default, rows=[])
    for K in (16384, 8192):
        for M in (1, 50, 800):
            g = torch.Generator(device="cuda").manual_seed(K + M)
            x = (torch.randn(M, K, device="cuda", generator=g) * (1 + 4 * torch.rand(K, device="cuda", generator=g))
                 ).to(torch.bfloat16)
            ref = triton_backend.column_scale(x)
            times = {chunk: [] for chunk in CHUNKS}
            same = {}
            for _ in range(2):
                for chunk in CHUNKS:
                    triton_backend.SCALE_TAIL_CHUNK = chunk
                    same[chunk] = torch.equal(triton_backend.column_scale(x), ref)
                    times[chunk].append(graph_time_us([lambda: triton_backend.column_scale(x)]))
            triton_backend.SCALE_TAIL_CHUNK = default
            for chunk in CHUNKS:
                res["rows"].append(dict(K=K, M=M, tail_chunk=chunk, us=statistics.median(times[chunk]),
                                        runs=times[chunk], same_bits=same[chunk]))
            print(f"K={K:5d} M={M:3d}  " + "  ".join(f"{chunk}: {statistics.median(times[chunk]):5.1f}"
                                                      + ("" if same[chunk] else " (differs)") for chunk in CHUNKS),
                  flush=True)
            (args.out / "column_scale_tiles.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
