"""Which kernels got slower between two runs of the kernel benchmark (no GPU needed).

    python -m vla_ttq.kernels.bench_compare BASELINE.json NEW.json [--tolerance 0.08] [--out report.md]

Reads two ``kernels_bench.json`` files written by ``python -m vla_ttq.kernels.bench``, pairs their
rows by shape (set, layer, N, K, group, M; online-quantize rows by bits) and compares every timed
column of ours (W4/W2 r0/r16, TTQ, the other path, quantize). Each ratio new / baseline is divided
by the same row's bf16 cuBLAS ratio, so a machine that is slower or faster as a whole (another card
of the same kind, clocks) does not read as a kernel change. A column whose normalised ratio exceeds
1 + tolerance is a regression: the report lists them first and the exit status is 1. Runs on
different GPU models are refused unless ``--cross-device`` is given.

Run 15 slowed Gemma-2B gate/up W4 at 3-16 tokens from 15.5 to 21 µs and no test could see it (unit
tests do not time kernels); this is the check that would have.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

KEY = ("set", "layer", "N", "K", "group", "M")
REFERENCE = "bf16 us"  # the machine's own speed: cuBLAS on the same shape
NOT_OURS = {REFERENCE, "int4 us"}


class BenchFileError(ValueError):
    """A file that is not a kernel benchmark's JSON, named with what is wrong."""


def load(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise BenchFileError(f"{path}: no such file") from None
    except json.JSONDecodeError as e:
        raise BenchFileError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("matmul"), list):
        raise BenchFileError(f"{path}: not a kernels_bench.json (no 'matmul' list); "
                             "write one with python -m vla_ttq.kernels.bench")
    return data


def device_name(data: dict) -> str:
    dev = data.get("device")
    return dev.get("name", "?") if isinstance(dev, dict) else str(dev)


def _rows(data: dict) -> dict:
    """{key: row} for matmul rows and, with bits in the key, online-quantize rows ('quantize us')."""
    out = {}
    for r in data["matmul"]:
        out[("matmul",) + tuple(r.get(k) for k in KEY)] = r
    for r in data.get("quantize", []):
        row = {"quantize us": r.get("us")}
        out[("quantize", r.get("set"), r.get("layer"), r.get("N"), r.get("K"), r.get("group"), r.get("bits"))] = row
    return out


def compare(base: dict, new: dict, tolerance: float = 0.08) -> dict:
    """{"changes": [...], "regressions": [...], "only_base": [keys], "only_new": [keys]}; a change is a
    dict of key, column, base_us, new_us, ratio (new / base) and normalised (ratio / bf16's ratio; the
    plain ratio where a row has no bf16 time, as quantize rows have not)."""
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    b, n = _rows(base), _rows(new)
    changes = []
    for key in sorted(set(b) & set(n), key=str):
        rb, rn = b[key], n[key]
        ref = (_time(rn, REFERENCE) / _time(rb, REFERENCE)
               if _time(rb, REFERENCE) and _time(rn, REFERENCE) else 1.0)
        for col in sorted(c for c in rb if c.endswith(" us") and c not in NOT_OURS):
            tb, tn = _time(rb, col), _time(rn, col)
            if tb and tn:
                changes.append(dict(key=key, column=col, base_us=tb, new_us=tn, ratio=tn / tb,
                                    normalised=tn / tb / ref))
    return dict(changes=changes, regressions=[c for c in changes if c["normalised"] > 1 + tolerance],
                only_base=sorted(set(b) - set(n), key=str), only_new=sorted(set(n) - set(b), key=str))


def _time(row: dict, col: str):
    """A positive finite time, or None (a failed variant is recorded as inf or missing)."""
    v = row.get(col)
    return v if isinstance(v, (int, float)) and 0 < v < float("inf") else None


def _name(key: tuple) -> str:
    kind, s, layer, N, K, group, last = key
    return f"{s} {layer} {N}×{K} g{group} " + (f"M={last}" if kind == "matmul" else f"quantize W{last}")


def report(result: dict, base_name: str, new_name: str, tolerance: float) -> str:
    lines = [f"# Kernel benchmark: {new_name} against {base_name}", "",
             f"{len(result['changes'])} timings compared; a regression is new / baseline, divided by bf16 "
             f"cuBLAS's own ratio on that row, above {1 + tolerance:.2f}.", ""]
    for title, rows in (("Regressions", result["regressions"]),
                        ("Largest changes", sorted(result["changes"], key=lambda c: -abs(c["normalised"] - 1))[:15])):
        lines += [f"## {title}", ""]
        if not rows:
            lines += ["none", ""]
            continue
        lines += ["| shape | column | baseline µs | new µs | new / baseline | vs bf16's ratio |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {_name(c['key'])} | {c['column'][:-3]} | {c['base_us']:.1f} | {c['new_us']:.1f} | "
                  f"{c['ratio']:.2f} | {c['normalised']:.2f} |" for c in rows]
        lines.append("")
    for title, keys in (("Only in the baseline", result["only_base"]), ("Only in the new run", result["only_new"])):
        if keys:
            lines += [f"{title}: " + ", ".join(_name(k) for k in keys), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("baseline", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--tolerance", type=float, default=0.08, help="allowed slowdown, relative (default 0.08)")
    ap.add_argument("--cross-device", action="store_true", help="compare runs on different GPU models anyway")
    ap.add_argument("--out", type=Path, help="also write the report (markdown) here")
    args = ap.parse_args(argv)
    try:
        base, new = load(args.baseline), load(args.new)
        result = compare(base, new, args.tolerance)
    except (BenchFileError, ValueError) as e:
        ap.error(str(e))
    bn, nn = device_name(base), device_name(new)
    if bn != nn and not args.cross_device:
        ap.error(f"the runs are on different GPUs ({bn} / {nn}); their kernels' timings do not compare "
                 "(--cross-device to compare anyway)")
    text = report(result, f"{args.baseline} ({bn})", f"{args.new} ({nn})", args.tolerance)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 1 if result["regressions"] else 0


if __name__ == "__main__":
    sys.exit(main())
