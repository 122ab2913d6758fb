"""Results table (rich), JSON and markdown, and the issue's targets checked against the numbers."""

from __future__ import annotations

import json
import platform
import socket
from pathlib import Path

import torch

GB = 1e9


def machine_info(device: torch.device) -> dict:
    info = {"host": socket.gethostname(), "python": platform.python_version(), "torch": torch.__version__,
            "device": str(device)}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update({"gpu": p.name, "gpu_memory_gb": round(p.total_memory / GB, 1), "cuda": torch.version.cuda,
                     "sm_count": p.multi_processor_count})
    try:
        import lerobot
        info["lerobot"] = lerobot.__version__
    except Exception:
        pass
    return info


def _row(rows, batch, **match):
    for r in rows:
        if r.get("batch") == batch and "error" not in r and all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def targets(rows: list[dict], floor_ms: float = 7.0) -> list[dict]:
    """The issue's three targets, each with the numbers it was judged on (met None where not measured)."""
    out = []
    ler = _row(rows, 1, method="lerobot")
    for label, match in (("bf16", dict(tf32=False, compiled=False)), ("bf16+tf32", dict(tf32=True, compiled=False)),
                         ("bf16 compiled", dict(tf32=False, compiled=True)),
                         ("bf16+tf32 compiled", dict(tf32=True, compiled=True))):
        ours = _row(rows, 1, method="fp", dtype="bfloat16", engine="fast", **match)
        if ours is None:
            continue
        t = {"target": f"our {label} call at B=1 <= 1/8 of lerobot's time (same run)", "met": None,
             "ours_ms": ours["ms_median"], "x_floor": ours["ms_median"] / floor_ms}
        if ler:
            t.update(lerobot_ms=ler["ms_median"], speedup=ler["ms_median"] / ours["ms_median"],
                     met=ours["ms_median"] <= ler["ms_median"] / 8)
        out.append(t)
    for compiled in (False, True):
        ours = _row(rows, 1, method="fp", dtype="bfloat16", engine="fast", tf32=False, compiled=compiled)
        ttq = _row(rows, 1, method="ttq", bits=4, rank=0, recompute="episode", scope="backbone+expert",
                   weights="dense", host_master=False, compiled=compiled)
        if ttq and ours:
            out.append({"target": "TTQ W4 (D once per episode, r=0, LM+expert) no slower than our bf16 (B=1"
                                  + (", both compiled)" if compiled else ")"),
                        "ttq_ms": ttq["ms_median"], "bf16_ms": ours["ms_median"],
                        "met": ttq["ms_median"] <= ours["ms_median"], "slower_by": ttq["ms_median"] / ours["ms_median"] - 1,
                        "x_floor": ttq["ms_median"] / floor_ms})
    bf = _row(rows, 1, method="fp", dtype="bfloat16", engine="fast", tf32=False, compiled=False)
    for label, match in (("packed RTN W2", dict(method="rtn", bits=2, scope="backbone+expert", weights="packed")),
                         ("TTQ W2 host-master", dict(method="ttq", bits=2, rank=0, host_master=True))):
        q = _row(rows, 1, **match)
        t = {"target": f"GPU weight memory >= 70 % smaller at W2, LM+expert ({label})", "met": None}
        if q and bf:
            blk = 1 - q["block_linears_bytes"] / bf["block_linears_bytes"]
            tot = 1 - q["weights_bytes"] / bf["weights_bytes"]
            t.update(block_linears_reduction=blk, whole_model_reduction=tot, met_block_linears=blk >= 0.7,
                     met_whole_model=tot >= 0.7, met=blk >= 0.7)
        out.append(t)
    return out


def _fmt_gb(v):
    return "" if v is None else f"{v / GB:.2f}"


COLUMNS = [("mode", "mode"), ("B", "batch"), ("median ms", "ms_median"), ("p90 ms", "ms_p90"),
           ("weights GB", "weights_bytes"), ("LM+exp linears GB", "block_linears_bytes"), ("peak GB", "peak_bytes"),
           ("recal ms", "calibration_ms"), ("vision ms", "vision_ms"), ("prefix ms", "prefix_ms"),
           ("rel err vs plain", "rel_err_vs_plain")]


def _cells(r: dict) -> list[str]:
    cells = []
    for _, key in COLUMNS:
        v = r.get(key)
        if key.endswith("_bytes"):
            cells.append(_fmt_gb(v))
        elif key == "rel_err_vs_plain" and v is not None:
            cells.append(f"{v:.1e}")
        elif isinstance(v, float):
            cells.append(f"{v:.1f}")
        else:
            cells.append("" if v is None else str(v))
    if "error" in r:
        cells[2] = "error: " + r["error"][:60]
    return cells


def print_table(rows: list[dict], target_rows: list[dict], console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title="pi0.5 policy call (prefix + denoising steps)")
    for title, _ in COLUMNS:
        table.add_column(title, justify="left" if title == "mode" else "right")
    for r in rows:
        table.add_row(*_cells(r))
    console.print(table)
    for t in target_rows:
        console.print(f"[bold]{t['target']}[/bold]: met={t['met']}  {_target_details(t)}")


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"# pi0.5 benchmark ({result['settings']['preset']}) on {m.get('gpu', m['device'])}", "",
             f"Machine: {json.dumps(m)}", "", f"Settings: `{json.dumps(result['settings'])}`", "",
             "| " + " | ".join(t for t, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in result["rows"]:
        lines.append("| " + " | ".join(_cells(r)) + " |")
    lines += ["", "## Targets", ""]
    for t in result["targets"]:
        lines.append(f"- {t['target']}: **met={t['met']}** ({_target_details(t)})")
    if result.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def save(result: dict, out_dir: str | Path, stem: str) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    j, md = out / f"{stem}.json", out / f"{stem}.md"
    j.write_text(json.dumps(result, indent=1, default=str))
    md.write_text(markdown(result))
    return j, md


def _target_details(t: dict) -> str:
    """A target's measured values, "k=v, ..." (floats to 3 significant digits)."""
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in t.items() if k not in ("target", "met"))
