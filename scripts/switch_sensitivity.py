"""How far does the whole π0.5 call move when one kernel switch flips? (GPU)

    python scripts/switch_sensitivity.py --out DIR [--switch QDQ_FAST_DIV] [--ranks 0,16] [--bits 4]

Run 13 saw the benchmark's "rel err vs plain" of per-call TTQ W4 r16 move from 5.99e-2 to 5.61e-2
when ``QDQ_FAST_DIV`` (div.approx in the dense pass; 1-ulp changes in ~1e-5 of the weights) was
switched on, while r0 (bit-identical weights) stayed put. This measures, on the benchmark's
full-size random model (B = 1, the bench's seeded inputs, eager fast path), the actions of:

* the plain eager path (``sample_actions``: the benchmark's reference),
* the fast path with the switch on, twice (is it deterministic?), and with it off,
* the bf16 model, fast and plain (how far two correct implementations sit apart without TTQ),

and prints every distance relative to the plain output's norm. Writes switch_sensitivity.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from vla_ttq.bench.runner import BenchSettings, make_inputs
from vla_ttq.config import QuantConfig
from vla_ttq.kernels import triton_backend
from vla_ttq.models.fast import FastSampler
from vla_ttq.models.quantize import quant_filter
from vla_ttq.models.tiny import build_random_model
from vla_ttq.quant.api import quantize_, reset_ttq


def rel(a: torch.Tensor, b: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a - b).float().norm() / ref.float().norm())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--switch", default="QDQ_FAST_DIV", help="a boolean attribute of vla_ttq.kernels.triton_backend")
    ap.add_argument("--ranks", default="0,16")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--preset", choices=("full", "tiny"), default="full")
    ap.add_argument("--device", default="cuda", help="cpu runs the reference backend: a smoke test, no switch matters")
    args = ap.parse_args(argv)
    if not isinstance(getattr(triton_backend, args.switch, None), bool):
        raise SystemExit(f"{args.switch} is not a boolean switch of vla_ttq.kernels.triton_backend")
    args.out.mkdir(parents=True, exist_ok=True)
    s = BenchSettings(preset=args.preset, device=args.device, batch_sizes=(1,))
    cfg, dev = s.model_config(), torch.device(args.device)
    length = s.num_tokens or cfg.tokenizer_max_length
    inp = make_inputs(cfg, s, 1, dev)
    res = dict(device=torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", preset=args.preset, switch=args.switch, default=getattr(triton_backend, args.switch),
               rows=[])

    def fast(model, on: bool) -> torch.Tensor:
        setattr(triton_backend, args.switch, on)
        sampler = FastSampler(model, 1, s.num_cameras, length, s.steps, cuda_graph=False, device=dev)
        out = sampler(*inp).clone()
        del sampler
        return out

    with torch.no_grad():
        for rank in [None] + [int(r) for r in args.ranks.split(",")]:
            root = build_random_model(cfg, torch.bfloat16, dev, s.seed)
            name = "bf16"
            if rank is not None:
                name = f"ttq W{args.bits} r{rank} call LM"
                quantize_(root, QuantConfig(method="ttq", bits=args.bits, group=s.group, rank=rank, recompute="call",
                                            stats_scope=s.stats_scope, check_finite=False), quant_filter())
                reset_ttq(root)
            plain = root.model.sample_actions(*inp).clone()
            on, on2, off = fast(root.model, True), fast(root.model, True), fast(root.model, False)
            setattr(triton_backend, args.switch, res["default"])
            row = {"mode": name, "on vs plain": rel(on, plain, plain), "off vs plain": rel(off, plain, plain),
                   "on vs off": rel(on, off, plain), "on vs on again": rel(on, on2, plain),
                   "plain vs plain again": rel(plain, root.model.sample_actions(*inp), plain)}
            res["rows"].append(row)
            print(row, flush=True)
            del root
            torch.cuda.empty_cache()
    (args.out / "switch_sensitivity.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
