"""Success rates per suite and task from episode records: a rich table and a JSON file."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Iterable

LABELS = ("policy", "method", "bits", "group", "rank", "calib_suite")


def summarize(records: Iterable[dict]) -> list[dict]:
    """One entry per (config hash, suite): labels, totals and a per-task breakdown."""
    by_run: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        by_run[(r["config_hash"], r["suite"])].append(r)
    out = []
    for (h, suite), recs in by_run.items():
        tasks: dict[int, list[dict]] = defaultdict(list)
        for r in recs:
            tasks[int(r["task_id"])].append(r)
        per_task = []
        for t in sorted(tasks):
            rs = tasks[t]
            s = sum(bool(r["success"]) for r in rs)
            per_task.append({"task_id": t, "task": rs[0].get("task", ""), "episodes": len(rs), "successes": s,
                             "success_rate": s / len(rs), "mean_steps": sum(r["steps"] for r in rs) / len(rs)})
        n, s = len(recs), sum(bool(r["success"]) for r in recs)
        out.append({"config_hash": h, "suite": suite, **{k: recs[0].get(k) for k in LABELS},
                    "episodes": n, "successes": s, "success_rate": s / n,
                    "mean_wall_s": sum(r.get("wall_s", 0.0) for r in recs) / n, "tasks": per_task})
    return out


def method_label(entry: dict) -> str:
    m = str(entry.get("method", "?"))
    if m == "fp":
        return "FP"
    label = f"{m.upper()} w{entry.get('bits')} g{entry.get('group')}"
    if m == "ttq":
        label += f" r={entry.get('rank') or 0}"
    if m == "awq" and entry.get("calib_suite"):
        label += f" calib={entry['calib_suite']}"
    return label


def print_summary(summary: list[dict], console=None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    for e in summary:
        table = Table(title=escape(f"LIBERO {e['suite']} - {method_label(e)} - {e['policy']} [{e['config_hash']}]"))
        for col, just in (("task", "right"), ("name", "left"), ("episodes", "right"), ("success", "right"),
                          ("mean steps", "right")):
            table.add_column(col, justify=just)
        for t in e["tasks"]:
            table.add_row(str(t["task_id"]), escape(t["task"][:60]), str(t["episodes"]),
                          f"{100 * t['success_rate']:.1f}%", f"{t['mean_steps']:.0f}")
        table.add_row("all", "", str(e["episodes"]), f"[bold]{100 * e['success_rate']:.1f}%[/bold]", "",
                      end_section=True)
        console.print(table)


def summarize_planned(store, items, out: str | Path) -> list[dict]:
    """Summaries of the planned ``items`` found in ``store`` (whenever they were run), each saved as
    OUT/summaries/SUITE-HASH.json. Records of the same config outside the plan (say, a longer
    earlier run) are left out, so the numbers are those of the run that was asked for."""
    from .results import episode_key

    planned = {episode_key(it) for it in items}
    summary = summarize(r for r in store.records() if episode_key(r) in planned)
    for e in summary:
        save_summary(e, Path(out) / "summaries" / f"{e['suite']}-{e['config_hash']}.json")
    return summary


def save_summary(summary: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(path)
    return path


__all__ = ["summarize", "summarize_planned", "print_summary", "save_summary", "method_label"]
