"""Write the grid's results in the layout of the paper's Tables 2-3 (markdown), plus CSV and JSON."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from .config import QualityConfig, row_label

MODEL_NAME = "Gemma3-270M (dequantized GGUF)"
NEAR_FP = 1.01  # "*": within 1 % of the full-precision perplexity (the paper's "competitive")


def fmt(x: float | None) -> str:
    if x is None:
        return "–"
    if math.isinf(x) or math.isnan(x):
        return str(x)
    return f"{x:.2f}" if x < 1e4 else f"{x:.1e}"


def _index(results: list[dict]) -> dict[tuple, float]:
    return {(r["label"], r["bits"], r["group"], r["domain"]): r["ppl"] for r in results}


def _mean(xs: list[float | None]) -> float | None:
    return None if any(x is None for x in xs) else sum(xs) / len(xs)


def _value(idx, label, bits, group, domain, domains) -> float | None:
    if domain == "avg":  # the paper's macro average over the evaluation domains
        return _mean([idx.get((label, bits, group, d)) for d in domains])
    return idx.get((label, bits, group, domain))


def _marked(values: list[float | None], fp: float | None) -> list[str]:
    """Bold best, underline second best (per column, as in the paper), * when near full precision."""
    finite = sorted({v for v in values if v is not None and math.isfinite(v)})
    out = []
    for v in values:
        s = fmt(v)
        if v is not None and fp is not None and v <= NEAR_FP * fp:
            s = "\\*" + s  # escaped: a bare * would open markdown emphasis
        if finite and v == finite[0]:
            s = f"**{s}**"
        elif len(finite) > 1 and v == finite[1]:
            s = f"<u>{s}</u>"
        out.append(s)
    return out


def _table(idx, rows: list[str], columns: list[tuple[int, int]], header: list[str], domain: str, domains: list[str],
           fp: float | None) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    cols = [[_value(idx, r, b, g, domain, domains) for r in rows] for b, g in columns]
    marked = [_marked(c, fp) for c in cols]
    for i, r in enumerate(rows):
        lines.append("| " + " | ".join([r] + [m[i] for m in marked]) + " |")
    return lines


def markdown(results: list[dict], cfg: QualityConfig, meta: dict) -> str:
    idx = _index(results)
    fp = {r["domain"]: r["ppl"] for r in results if r["method"] == "fp"}
    domains = list(cfg.eval_domains)
    fp_avg = _mean([fp.get(d) for d in domains])
    rows = [row_label(*m) for m in cfg.methods_of_cell()]
    names = {d: meta.get("domain_names", {}).get(d, d) for d in domains}
    out = [f"# Perplexity (↓) of {MODEL_NAME} quantized with RTN / AWQ / TTQ", ""]
    out += [f"- {k}: {v}" for k, v in meta.get("summary", {}).items()]
    fps = ", ".join(f"{d}: {fmt(fp.get(d))}" for d in domains) + f", Avg: {fmt(fp_avg)}"
    out += ["", f"Full precision ({MODEL_NAME}): {fps}.",
            f"**Bold** best, <u>underline</u> second best per column; `*` within {NEAR_FP - 1:.0%} of full precision.", ""]
    blocks = domains + (["avg"] if len(domains) > 1 else [])
    title = {**{d: f"{d} — {names[d]}" for d in domains}, "avg": "macro average over " + " / ".join(domains)}
    groups3 = cfg.groups if cfg.grid == "full" else (cfg.table3_group,)
    for g in groups3:
        out += [f"## Table 3 layout: perplexity by bit width, g = {g}", ""]
        for d in blocks:
            cols = [(b, g) for b in cfg.bits]
            out += [f"### {title[d]}", ""]
            out += _table(idx, rows, cols, ["Quantization q"] + [f"{b} bits" for b in cfg.bits], d, domains,
                          fp_avg if d == "avg" else fp.get(d))
            out += [""]
    b = cfg.table2_bits
    out += [f"## Table 2 layout: perplexity by group size at {b} bits", ""]
    for d in blocks:
        out += [f"### {title[d]}", ""]
        out += _table(idx, rows, [(b, g) for g in cfg.groups], ["Groupsize g"] + [str(g) for g in cfg.groups], d, domains,
                      fp_avg if d == "avg" else fp.get(d))
        out += [""]
    return "\n".join(out)


CSV_FIELDS = ["method", "label", "rank", "calib", "bits", "group", "domain", "ppl", "nll", "tokens", "seconds",
              "awq_alpha_mean"]


def write_all(results: list[dict], cfg: QualityConfig, meta: dict, out_dir: str | Path, name: str) -> dict[str, Path]:
    from vla_ttq.config import to_dict

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: out_dir / f"{name}.{ext}" for ext in ("md", "csv", "json")}
    paths["md"].write_text(markdown(results, cfg, meta) + "\n")
    with paths["csv"].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in results:
            w.writerow({k: r.get(k) for k in CSV_FIELDS})
    paths["json"].write_text(json.dumps({"meta": meta, "config": to_dict(cfg), "results": results}, indent=1) + "\n")
    return paths
