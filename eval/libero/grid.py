"""A grid of LIBERO runs in one YAML file (``configs/table13.yaml``): shared fields plus named runs.

    name: table13
    out: results/libero/table13           # OUT/episodes.jsonl: one resumable store for every run
    base: {suite: all, episodes: 20, quant: {bits: 2, group: 64}}
    runs:
      rtn: {quant: {method: rtn}}
      awq_spatial: {quant: {method: awq}, calib: {suite: spatial}}

Each run is ``base`` deep-merged with its own fields and must be a valid :class:`EvalConfig`.
Records of all runs share one :class:`ResultsStore`: their keys carry the run's result hash, so
runs never mix and a grid resumes where it stopped.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vla_ttq.config import from_dict, to_dict

from .config import EvalConfig
from .plan import EpisodeItem, plan_items
from .results import ResultsStore, episode_key


def deep_merge(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``; nested mappings merge, everything else is replaced."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


@dataclass
class GridConfig:
    name: str = "grid"
    out: str = "results/libero/grid"  # directory, as --out: OUT/episodes.jsonl, OUT/summaries, OUT/configs
    base: dict[str, Any] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not isinstance(self.base, dict):
            raise ValueError(f"grid 'base' must be a mapping of EvalConfig fields, got {type(self.base).__name__}")
        if not isinstance(self.runs, dict) or not self.runs:
            raise ValueError("grid 'runs' must be a non-empty mapping: run name -> EvalConfig fields")
        if not self.out or str(self.out).endswith(".jsonl"):
            raise ValueError(f"grid 'out' is a results directory (like --out), got {self.out!r}")
        self.eval_configs()  # every run must be a valid EvalConfig (errors name the run)

    def eval_configs(self, overrides: dict[str, Any] | None = None) -> dict[str, EvalConfig]:
        """Run name -> EvalConfig (base, then the run's fields, then ``overrides`` for every run)."""
        out = {}
        for name, fields in self.runs.items():
            if not isinstance(fields, dict):
                raise ValueError(f"grid run {name!r}: expected a mapping of EvalConfig fields, got {fields!r}")
            merged = deep_merge(deep_merge(self.base, fields), overrides or {})
            try:
                out[name] = from_dict(EvalConfig, merged)
            except (ValueError, TypeError) as e:
                raise ValueError(f"grid run {name!r}: {e}") from e
        hashes: dict[tuple, str] = {}
        for name, cfg in out.items():  # two runs with the same outcome-relevant config would share records
            for suite in cfg.suites():
                other = hashes.setdefault((suite, cfg.result_hash(suite)), name)
                if other != name:
                    raise ValueError(f"grid runs {other!r} and {name!r} are the same evaluation on suite {suite!r}")
        return out


def load_grid(path: str | Path) -> GridConfig:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"grid config not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    try:
        return from_dict(GridConfig, data)
    except TypeError as e:
        raise ValueError(f"{path}: {e}") from e


def save_grid(grid: GridConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(grid), sort_keys=False))


def plan_grid(configs: dict[str, EvalConfig]) -> dict[str, list[EpisodeItem]]:
    """Run name -> its planned episodes (see :func:`plan_items`)."""
    return {name: plan_items(cfg) for name, cfg in configs.items()}


def plan_table(plans: dict[str, list[EpisodeItem]], store: ResultsStore | None = None) -> list[dict[str, Any]]:
    """One row per (run, suite): episodes planned, already in ``store``, left to run."""
    done = store.done_keys() if store is not None else set()
    rows = []
    for name, items in plans.items():
        by_suite: dict[str, list[EpisodeItem]] = {}
        for it in items:
            by_suite.setdefault(it.suite, []).append(it)
        for suite, its in by_suite.items():
            n_done = sum(episode_key(it) in done for it in its)
            rows.append({"run": name, "suite": suite, "method": its[0].method, "calib_suite": its[0].calib_suite,
                         "tasks": len({it.task_id for it in its}), "items": len(its), "done": n_done,
                         "todo": len(its) - n_done, "config_hash": its[0].config_hash})
    return rows


def format_plan(rows: list[dict[str, Any]]) -> str:
    cols = ("run", "suite", "method", "calib_suite", "tasks", "items", "done", "todo", "config_hash")
    cells = [[("-" if r[c] is None else str(r[c])) for c in cols] for r in rows]
    total = ["total", "", "", "", "", str(sum(r["items"] for r in rows)), str(sum(r["done"] for r in rows)),
             str(sum(r["todo"] for r in rows)), ""]
    widths = [max(len(c), *(len(row[i]) for row in cells + [total])) for i, c in enumerate(cols)]
    line = lambda row: "  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip()  # noqa: E731
    return "\n".join([line(list(cols))] + [line(row) for row in cells] + [line(total)])


__all__ = ["GridConfig", "load_grid", "save_grid", "deep_merge", "plan_grid", "plan_table", "format_plan"]
