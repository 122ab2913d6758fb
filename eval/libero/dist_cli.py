"""Command-line wiring of ``--grid``, ``--workers`` and ``--ray-address`` (see docs/distributed.md).

    python -m eval.libero --grid configs/table13.yaml --dry-run        # the plan, nothing runs
    python -m eval.libero --grid configs/table13.yaml --workers 8      # local Ray, one GPU per worker
    python -m eval.libero --suite 10 --method ttq --ray-address auto   # join a running Ray cluster
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from vla_ttq.config import save_yaml

from .config import EvalConfig

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .cli import _int_in

    d = p.add_argument_group("grid and distributed evaluation (Ray)")
    d.add_argument("--grid", default=None,
                   help="grid YAML of named runs (configs/table13.yaml); other flags override every run")
    d.add_argument("--workers", type=_int_in(1), default=None,
                   help="Ray workers (one GPU each when the cluster has GPUs); default: one per GPU, or 1")
    d.add_argument("--ray-address", default=None,
                   help="join a running Ray cluster ('auto' or host:port) instead of starting a local one")
    d.add_argument("--chunk-size", type=_int_in(1), default=None,
                   help="episodes per work item sent to a worker (default: --n-envs, one wave)")
    d.add_argument("--max-failures", type=_int_in(0), default=None,
                   help="lost workers replaced before giving up (default: as many as workers)")


def wants_distributed(args: argparse.Namespace) -> bool:
    return bool(args.grid or args.workers or args.ray_address)


def configs_from_args(args: argparse.Namespace) -> tuple[dict[str, EvalConfig], Path, bool]:
    """(run name -> EvalConfig, output directory, whether the device was chosen explicitly)."""
    from .cli import config_from_args, flag_overrides

    if args.grid:
        from .grid import load_grid

        if args.config:
            raise ValueError("--config and --grid do not combine: put shared fields in the grid's 'base'")
        grid = load_grid(args.grid)
        over = flag_overrides(args)
        out = Path(over.pop("out", grid.out))
        explicit_device = "device" in over or "device" in grid.base
        return grid.eval_configs({**over, "out": str(out)}), out, explicit_device
    cfg = config_from_args(args)
    return {cfg.method: cfg}, Path(cfg.out), args.device is not None


def grid_matrix(configs: dict[str, EvalConfig], summary: list[dict]) -> str:
    """Success rate of every run (rows) on every suite (columns), Table 13's layout."""
    from . import protocol

    by_key = {(e["config_hash"], e["suite"]): e for e in summary}
    suites = [s for s in protocol.SUITE_ORDER if any(s in c.suites() for c in configs.values())]
    rows = [["run", *suites]]
    for name, cfg in configs.items():
        row = [name]
        for s in suites:
            e = by_key.get((cfg.result_hash(s), s)) if s in cfg.suites() else None
            row.append(f"{100 * e['success_rate']:.1f}% ({e['successes']}/{e['episodes']})" if e else "-")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows)


def main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .distributed import init_ray, run_distributed
    from .grid import format_plan, plan_grid, plan_table
    from .results import ResultsStore
    from .summary import summarize_planned

    try:
        configs, out, explicit_device = configs_from_args(args)
        if any(c.server for c in configs.values()):
            raise ValueError("--server does not combine with --workers/--grid: the server runs the policy; "
                             "run the simulators with `python -m eval.libero --server ... --n-envs N`")
        store = ResultsStore(out / "episodes.jsonl")
        if args.dry_run:
            print(format_plan(plan_table(plan_grid(configs), store)))
            print(f"results: {store.path}")
            return 0
    except (ValueError, FileNotFoundError, TypeError) as e:
        parser.error(str(e))

    started = init_ray(args.ray_address)
    import ray

    try:
        if not explicit_device:  # the driver may have no GPU while the workers do (a cluster head)
            device = "cuda" if ray.cluster_resources().get("GPU", 0) >= 1 else "cpu"
            configs = {name: cfg.with_(device=device) for name, cfg in configs.items()}
        for cfg in configs.values():
            for suite in cfg.suites():
                save_yaml(cfg, out / "configs" / f"{suite}-{cfg.result_hash(suite)}.yaml")
        try:
            report = run_distributed(configs, store, workers=args.workers, chunk_size=args.chunk_size,
                                     max_failures=args.max_failures, progress=not args.no_progress)
        except ValueError as e:
            parser.error(str(e))
    finally:
        if started:
            ray.shutdown()
    # the episodes of this grid (as cli.run does), not every record of its configs
    summary = summarize_planned(store, [it for items in plan_grid(configs).values() for it in items], out)
    print(grid_matrix(configs, summary))
    print(f"{report.written} episodes written, {report.skipped} already done, {report.worker_failures} workers lost "
          f"({report.requeued_items} episodes re-run), {report.wall_s:.0f} s -> {store.path}")
    return 0


__all__ = ["add_arguments", "wants_distributed", "configs_from_args", "grid_matrix", "main"]
