"""Activation-aware error of RTN, AWQ and TTQ for one weight/activation pair, at several bit widths.

    python -m vla_ttq.quant.report                          # synthetic pair with outlier channels
    python -m vla_ttq.quant.report --pair pair.safetensors  # keys "weight" (d' x d), "x" (T x d)

AWQ is calibrated on ``--calib`` activations (a key "x_calib" in the file, or for the synthetic
pair a differently-shifted sample: domain shift) and evaluated on ``x``; "AWQ (same X)" shows
AWQ calibrated on the evaluation activations themselves, which TTQ equals at the same α.
The number is the relative activation-aware error ||(W - Ŵ) X||² / ||W X||².
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from .methods import activation_aware_loss, awq_qdq, awq_search_alpha, lowrank_factors, rtn, ttq_qdq
from .scaling import channel_stat


def synthetic_pair(d_out: int = 512, d_in: int = 1024, tokens: int = 512, outliers: int = 16, seed: int = 0):
    """A weight with a decaying spectrum, and activations with a few large-magnitude channels.

    The calibration sample has its outliers on partly different channels: a domain shift.
    """
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(d_out, d_out, generator=g))[0]
    v = torch.linalg.qr(torch.randn(d_in, d_in, generator=g))[0]
    k = min(d_out, d_in)
    spectrum = 1.0 / torch.sqrt(torch.arange(1, k + 1, dtype=torch.float32))
    w = (u[:, :k] * spectrum) @ v[:, :k].T * 0.5

    def acts(channels: torch.Tensor) -> torch.Tensor:
        x = torch.randn(tokens, d_in, generator=g)
        x[:, channels] *= 20.0
        return x

    eval_ch = torch.randperm(d_in, generator=g)[:outliers]
    calib_ch = torch.cat([eval_ch[: outliers // 2], torch.randperm(d_in, generator=g)[: outliers - outliers // 2]])
    return w, acts(eval_ch), acts(calib_ch)


def error_table(w, x, x_calib, bits_list, group, lam, alpha, rank, p=2.0):
    ref = float(activation_aware_loss(w, torch.zeros_like(w), x))
    rel = lambda w_hat: float(activation_aware_loss(w, w_hat, x)) / ref  # noqa: E731
    c_cal, c_eval = channel_stat(x_calib, p), channel_stat(x, p)
    lr = lowrank_factors(w, rank) if rank else None
    rows = []
    for bits in bits_list:
        a_cal, _ = awq_search_alpha(w, c_cal, x_calib, bits, group, lam)
        a_same, _ = awq_search_alpha(w, c_eval, x, bits, group, lam)
        row = {
            "bits": bits,
            "RTN": rel(rtn(w, bits, group)),
            "AWQ (calib X)": rel(awq_qdq(w, c_cal, bits, group, lam, a_cal)),
            "AWQ (same X)": rel(awq_qdq(w, c_eval, bits, group, lam, a_same)),
            "TTQ r=0": rel(ttq_qdq(w, x, bits, group, p, lam, alpha)),
        }
        if lr is not None:
            row[f"TTQ r={rank}"] = rel(ttq_qdq(w, x, bits, group, p, lam, alpha, lowrank=lr))
        rows.append(row)
    return rows


def markdown(rows) -> str:
    cols = [c for c in rows[0] if c != "bits"]
    lines = ["| bits | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for r in rows:
        lines.append(f"| {r['bits']} | " + " | ".join(f"{r[c]:.4g}" for c in cols) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m vla_ttq.quant.report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pair", type=Path, help="safetensors file with 'weight', 'x' and optionally 'x_calib'")
    ap.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4, 5])
    ap.add_argument("--group", type=int, default=64)
    ap.add_argument("--lam", type=float, default=0.4)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the table as JSON here")
    args = ap.parse_args(argv)
    if args.pair:
        if not args.pair.exists():
            ap.error(f"--pair file not found: {args.pair}")
        t = load_file(str(args.pair))
        missing = {"weight", "x"} - set(t)
        if missing:
            ap.error(f"--pair file lacks key(s) {sorted(missing)}")
        w, x = t["weight"].float(), t["x"].float().reshape(-1, t["x"].shape[-1])
        x_calib = t.get("x_calib", t["x"]).float().reshape(-1, t["x"].shape[-1])
    else:
        w, x, x_calib = synthetic_pair(seed=args.seed)
    rows = error_table(w, x, x_calib, args.bits, args.group, args.lam, args.alpha, args.rank)
    print(f"relative activation-aware error ||(W-Ŵ)X||²/||WX||², W {tuple(w.shape)}, X {tuple(x.shape)}, "
          f"g={args.group}, λ={args.lam}, TTQ α={args.alpha}\n")
    print(markdown(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
