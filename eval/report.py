"""``python -m eval.report RESULTS...``: the paper's Table 13 from LIBERO episode records.

Rows are methods (FP, RTN, AWQ once per calibration suite, TTQ per rank), columns the four
suites and their average; a cell is the success rate over all episodes of that row and suite.
Writes OUT.md (markdown, best in bold and second best underlined as in the paper), OUT.csv
(rates and episode counts) and OUT.png (grouped bar plot).
"""

from __future__ import annotations

import argparse
import csv
import sys
import warnings
from collections import defaultdict
from pathlib import Path

from eval.libero.protocol import SUITE_ORDER, SUITE_TITLES
from eval.libero.results import load_records

METHOD_ORDER = {"fp": 0, "rtn": 1, "awq": 2, "ttq": 3}


def row_key(r: dict) -> tuple:
    quantized = r.get("method") != "fp"
    return (str(r.get("policy", "")), str(r.get("method")), r.get("bits") if quantized else None,
            r.get("group") if quantized else None, (r.get("rank") or 0) if r.get("method") == "ttq" else None,
            r.get("calib_suite") if r.get("method") == "awq" else None, r.get("dtype"))


def row_label(key: tuple, show_bits: bool, show_policy: bool) -> str:
    policy, method, bits, group, rank, calib, dtype = key
    if method == "fp":
        label = "FP (full precision)"
        if dtype:
            label = {"bfloat16": "BF16", "float32": "FP32"}.get(dtype, dtype)
    elif method == "awq":
        label = f"AWQ ({SUITE_TITLES.get(calib, calib).removeprefix('Libero ')} Calib)"
    elif method == "ttq":
        label = f"TTQ (r = {rank})"
    else:
        label = method.upper()
    if show_bits and method != "fp":
        label += f" q={bits} g={group}"
    if show_policy:
        label += f" [{policy}]"
    return label


def build_table(records: list[dict]) -> tuple[list[dict], list[str]]:
    """Rows of {label, key, suite -> (successes, episodes), avg} and the suites present."""
    cells: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    hashes: dict[tuple, set] = defaultdict(set)
    for r in records:
        k, s = row_key(r), str(r["suite"])
        cells[k][s][0] += bool(r["success"])
        cells[k][s][1] += 1
        hashes[(k, s)].add(r["config_hash"])
    for (k, s), hs in hashes.items():
        if len(hs) > 1:
            warnings.warn(f"{k[1]} on suite {s}: pooling {len(hs)} configurations ({', '.join(sorted(hs))}); "
                          f"pass result files of one configuration per row to avoid this", stacklevel=2)
    suites = [s for s in SUITE_ORDER if any(s in c for c in cells.values())]
    suites += sorted({s for c in cells.values() for s in c} - set(suites))
    show_bits = len({(k[2], k[3]) for k in cells if k[1] != "fp"}) > 1
    show_policy = len({k[0] for k in cells}) > 1
    rows = []
    for k in sorted(cells, key=lambda k: (k[0], METHOD_ORDER.get(k[1], 9), k[2] or 0, k[3] or 0, k[4] or 0,
                                          SUITE_ORDER.index(k[5]) if k[5] in SUITE_ORDER else 9)):
        rates = {s: cells[k][s][0] / cells[k][s][1] for s in suites if cells[k][s][1]}
        rows.append({"label": row_label(k, show_bits, show_policy), "key": k,
                     "cells": {s: tuple(cells[k][s]) for s in suites if cells[k][s][1]},
                     "rates": rates,
                     # the average of the suite rates, as in the paper, and only over complete rows
                     "avg": sum(rates.values()) / len(suites) if len(rates) == len(suites) else None})
    return rows, suites


def _ranks(values: list[float | None]) -> tuple[float | None, float | None]:
    distinct = sorted({v for v in values if v is not None}, reverse=True)
    return (distinct[0] if distinct else None, distinct[1] if len(distinct) > 1 else None)


def to_markdown(rows: list[dict], suites: list[str]) -> str:
    cols = suites + ["avg"]
    best = {c: _ranks([r["rates"].get(c) if c != "avg" else r["avg"] for r in rows if r["key"][1] != "fp"])
            for c in cols}
    head = "| Method | " + " | ".join(SUITE_TITLES.get(s, s) for s in suites) + " | Avg |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for r in rows:
        out = []
        for c in cols:
            v = r["avg"] if c == "avg" else r["rates"].get(c)
            if v is None:
                out.append("–")
                continue
            text = f"{100 * v:.1f}%" if c != "avg" else f"{100 * v:.2f}%"
            if c != "avg":
                text += f" ({r['cells'][c][1]})"
            if r["key"][1] != "fp" and v == best[c][0]:
                text = f"**{text}**"
            elif r["key"][1] != "fp" and v == best[c][1]:
                text = f"<u>{text}</u>"
            out.append(text)
        lines.append(f"| {r['label']} | " + " | ".join(out) + " |")
    lines.append("")
    lines.append("Success rate (episodes in parentheses). **Bold**/underline: best/second best quantized row.")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict], suites: list[str], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "policy", "quant_method", "bits", "group", "rank", "calib_suite", "dtype"]
                   + [f"{s}_success_rate" for s in suites] + [f"{s}_episodes" for s in suites] + ["avg"])
        for r in rows:
            policy, method, bits, group, rank, calib, dtype = r["key"]
            w.writerow([r["label"], policy, method, bits, group, rank, calib, dtype or ""]
                       + [f"{r['rates'][s]:.4f}" if s in r["rates"] else "" for s in suites]
                       + [r["cells"][s][1] if s in r["cells"] else 0 for s in suites]
                       + ["" if r["avg"] is None else f"{r['avg']:.4f}"])


def plot(rows: list[dict], suites: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [SUITE_TITLES.get(s, s) for s in suites] + ["Avg"]
    width = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(groups) + 0.25 * len(rows)), 4.0))
    for i, r in enumerate(rows):
        vals = [100 * r["rates"].get(s, float("nan")) for s in suites]
        vals.append(100 * r["avg"] if r["avg"] is not None else float("nan"))
        ax.bar([g + (i - (len(rows) - 1) / 2) * width for g in range(len(groups))], vals, width, label=r["label"])
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("success rate (%)")
    ax.set_ylim(0, 105)
    ax.set_title("π0.5 on LIBERO (Table 13 layout)")
    ax.legend(fontsize=7, ncol=2, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="episodes .jsonl files or result directories (searched recursively)")
    p.add_argument("--out", default="results/table13", help="output prefix: OUT.md, OUT.csv, OUT.png")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    try:
        records = load_records(args.results)
    except (FileNotFoundError, ValueError) as e:
        p.error(str(e))
    if not records:
        p.error(f"no episode records found in {', '.join(args.results)}")
    rows, suites = build_table(records)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    md = to_markdown(rows, suites)
    out.with_suffix(".md").write_text(md)
    write_csv(rows, suites, out.with_suffix(".csv"))
    written = [out.with_suffix(".md"), out.with_suffix(".csv")]
    if not args.no_plot:
        plot(rows, suites, out.with_suffix(".png"))
        written.append(out.with_suffix(".png"))
    print(md)
    print("wrote " + ", ".join(map(str, written)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
