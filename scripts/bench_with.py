"""The π0.5 policy benchmark with kernel switches set, for A/B runs of one feature (GPU).

    python scripts/bench_with.py QUANTIZE_HELD=0,QDQ_FAST_DIV=0 --preset full --batch 1 --only 'ttq W4 r0 call LM$'

The first argument sets attributes of ``vla_ttq.kernels.triton_backend`` (name=0|1, comma separated;
"-" sets none); the rest go to ``python -m vla_ttq.bench``.
"""

from __future__ import annotations

import sys

from vla_ttq.bench.cli import main
from vla_ttq.kernels import triton_backend


def set_switches(spec: str) -> None:
    for item in filter(None, spec.split(",") if spec != "-" else []):
        name, _, value = item.partition("=")
        if not hasattr(triton_backend, name) or value not in ("0", "1"):
            raise SystemExit(f"bad switch {item!r}: want NAME=0|1 with NAME an attribute of triton_backend")
        setattr(triton_backend, name, value == "1")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    set_switches(sys.argv[1])
    main(sys.argv[2:])
