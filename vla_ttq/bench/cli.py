"""``python -m vla_ttq.bench``: latency and GPU memory of one pi0.5 policy call per mode."""

from __future__ import annotations

import argparse
import datetime
import re
import sys

import torch

from .lerobot_ref import bench_lerobot, lerobot_available
from .modes import standard_modes
from .report import machine_info, print_table, save, targets
from .runner import BenchSettings, Runner, make_inputs


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m vla_ttq.bench", description=__doc__)
    ap.add_argument("--preset", choices=("full", "tiny"), default="full",
                    help="full-size pi0.5 with random weights, or the tiny test model")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--cameras", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=None, help="prompt length (default: the config's, 200)")
    ap.add_argument("--steps", type=int, default=10, help="denoising steps")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--budget", type=float, default=1.5, help="seconds per measurement before stopping early")
    ap.add_argument("--group", type=int, default=64, help="quantization group size")
    ap.add_argument("--stats-scope", choices=("batch", "sample"), default="batch")
    ap.add_argument("--only", default=None, help="regular expression on mode names (e.g. 'bf16|ttq W4')")
    ap.add_argument("--no-plain", action="store_true", help="skip the plain eager bf16 row")
    ap.add_argument("--no-fuse", action="store_true", help="do not fuse q/k/v and gate/up")
    ap.add_argument("--lerobot", choices=("auto", "on", "off"), default="auto",
                    help="time lerobot's PI05Pytorch too (auto: when importable, on CUDA, full preset)")
    ap.add_argument("--profile", action="store_true",
                    help="profile one eager fast call of each mode (kernel count, top kernels; CUDA only)")
    ap.add_argument("--out", default="results/bench")
    ap.add_argument("--stem", default=None, help="file name stem of the JSON/markdown (default: preset_gpu_date)")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    args = parse_args(argv)
    console = Console()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda but torch sees no CUDA device; pass --device cpu (and --preset tiny)")
    settings = BenchSettings(preset=args.preset, device=args.device, batch_sizes=tuple(args.batch),
                             num_cameras=args.cameras, num_tokens=args.tokens, steps=args.steps, reps=args.reps,
                             budget_s=args.budget, group=args.group, stats_scope=args.stats_scope,
                             fuse=not args.no_fuse, profile=args.profile and device.type == "cuda")
    modes = standard_modes(include_plain=not args.no_plain)
    if args.only:
        pattern = re.compile(args.only)
        modes = [m for m in modes if pattern.search(m.name)]
        if not modes:
            sys.exit(f"--only {args.only!r} matches no mode; modes are: "
                     + "; ".join(m.name for m in standard_modes()))
    machine = machine_info(device)
    stem = args.stem or "_".join([args.preset, re.sub(r"[^A-Za-z0-9]+", "-", machine.get("gpu", args.device)),
                                  datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M")])
    result = {"machine": machine, "settings": {k: v for k, v in vars(settings).items() if k != "extra"},
              "rows": [], "targets": [], "notes": []}
    runner = Runner(settings, log=console.print)

    def checkpoint() -> tuple:
        result["targets"] = targets(result["rows"])
        return save(result, args.out, stem)

    use_lerobot = args.lerobot == "on" or (args.lerobot == "auto" and device.type == "cuda" and args.preset == "full")
    if use_lerobot:
        why = lerobot_available()
        if why is None:
            console.print("timing lerobot's PI05Pytorch.sample_actions ...")
            try:
                result["rows"] += bench_lerobot(lambda b: make_inputs(runner.cfg, settings, b, device),
                                                settings.batch_sizes, settings.steps, settings.reps, settings.budget_s,
                                                device)
            except Exception as e:
                result["notes"].append(f"lerobot run failed: {type(e).__name__}: {e}")
                console.print(f"[red]lerobot run failed: {e}[/red]")
        else:
            result["notes"].append(f"lerobot not importable: {why}")
            console.print(f"[yellow]lerobot not importable ({why}); no ratio[/yellow]")
        checkpoint()

    def add_rows(rows: list[dict]) -> None:
        result["rows"] += rows
        checkpoint()  # partial results survive a time limit

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        runner.run(modes, progress, on_rows=add_rows)
    json_path, md_path = checkpoint()
    print_table(result["rows"], result["targets"], console)
    console.print(f"saved {json_path} and {md_path}")
    return result


if __name__ == "__main__":
    main()
