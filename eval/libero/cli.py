"""``python -m eval.libero --suite 10 --bits 2 --group 64``: LIBERO success rates of a (quantized) pi0.5.

Episodes are appended to OUT/episodes.jsonl as they finish; re-running the same command resumes
(finished episodes are never repeated). See docs/libero.md for the protocol and Table 13.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

from vla_ttq.config import METHODS, QuantConfig, from_dict, load_yaml, save_yaml, to_dict

from . import protocol
from .config import DEFAULT_POLICY, EvalConfig, default_cache_dir

SUITE_CHOICES = (*protocol.SUITE_ORDER, "all")
PRESETS = {
    # README demo / CI: one task, one episode, short horizon, small renders; meaningless numbers.
    "smoke": {"tasks": (0,), "episodes": 1, "max_steps": 30, "camera_res": 128, "calib_episodes": 1,
              "calib_tasks": (0,), "calib_max_steps": 20},
}


def _int_in(lo: int, hi: int | None = None):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"{v} is out of range [{lo}, inf)" if hi is None
                                             else f"{v} is out of range [{lo}, {hi}]")
        return v

    return parse


def _task_list(text: str) -> tuple[int, ...]:
    """'0,3,5' or '0-4' or a mix."""
    out = []
    try:
        for part in filter(None, text.split(",")):
            a, sep, b = part.partition("-")
            out += list(range(int(a), int(b) + 1)) if sep else [int(a)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected task ids like '0,3,5' or '0-4', got {text!r}") from None
    if not out or min(out) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative task ids, got {text!r}")
    return tuple(out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.libero", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", help="EvalConfig YAML (flags given explicitly override it)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="smoke: 1 task, 1 episode, 30 steps, 128 px renders")
    r = p.add_argument_group("what to evaluate")
    r.add_argument("--suite", choices=SUITE_CHOICES, default=None, help="LIBERO suite (default 10)")
    r.add_argument("--episodes", type=_int_in(1, 50), default=None,
                   help=f"episodes per task = init states 0..N-1 (default {protocol.EPISODES_PER_TASK}, Table 13)")
    r.add_argument("--tasks", type=_task_list, default=None, help="task ids, e.g. '0,3,5' or '0-4' (default all)")
    r.add_argument("--seed", type=int, default=None, help=f"base seed (default {protocol.DEFAULT_SEED})")
    m = p.add_argument_group("policy")
    m.add_argument("--policy", default=None,
                   help=f"hub id, local checkpoint dir, or 'tiny' (random tiny pi0.5) (default {DEFAULT_POLICY})")
    m.add_argument("--server", default=None, help="ws://host:port of a running `python -m vla_ttq.serve`")
    m.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:1 ... (default auto: cuda if available)")
    m.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="default: the checkpoint's")
    m.add_argument("--n-action-steps", type=_int_in(1), default=None,
                   help="actions executed per chunk before replanning (default: the checkpoint's)")
    m.add_argument("--tiny-seed", type=int, default=None, help="seed of the tiny checkpoint's weights")
    q = p.add_argument_group("quantization")
    q.add_argument("--quant-config", default=None, help="QuantConfig YAML (configs/quant/*.yaml)")
    q.add_argument("--method", choices=METHODS, default=None, help="default ttq")
    q.add_argument("--bits", type=_int_in(1, 8), default=None, help="default 2")
    q.add_argument("--group", type=_int_in(1), default=None, help="default 64")
    q.add_argument("--rank", type=_int_in(0), default=None, help="TTQ low-rank residual (default 0)")
    q.add_argument("--recompute", choices=("call", "episode"), default=None, help="TTQ: per call (paper) or episode")
    q.add_argument("--quantize-expert", action="store_true", default=None,
                   help="also quantize the action expert (Table 13: VLM backbone only)")
    c = p.add_argument_group("AWQ calibration")
    c.add_argument("--calib-suite", choices=protocol.SUITE_ORDER, default=None,
                   help="suite whose rollouts calibrate AWQ (default: the evaluated suite)")
    c.add_argument("--calib-episodes", type=_int_in(1, 50), default=None, help="calibration rollouts per task")
    c.add_argument("--calib-tasks", type=_task_list, default=None, help="calibration task ids (default all)")
    c.add_argument("--calib-max-steps", type=_int_in(1), default=None, help="default: the suite's max steps")
    c.add_argument("--calib-dataset", default=None, help="local lerobot/libero directory (not readable yet)")
    e = p.add_argument_group("protocol overrides (change results; part of the config hash)")
    e.add_argument("--max-steps", type=_int_in(1), default=None, help="default per suite: 280/280/300/520")
    e.add_argument("--camera-res", type=_int_in(16), default=None, help=f"default {protocol.CAMERA_RES}")
    e.add_argument("--soft-reset", dest="hard_reset", action="store_false", default=None,
                   help="reset the compiled sim instead of rebuilding it (faster; lerobot's default is hard)")
    e.add_argument("--num-steps-wait", type=_int_in(0), default=None, help=f"default {protocol.NUM_STEPS_WAIT}")
    x = p.add_argument_group("execution")
    x.add_argument("--n-envs", type=_int_in(1), default=None, help="simulators stepped together, batched policy calls")
    x.add_argument("--env-processes", action="store_true", default=None,
                   help="run each simulator in its own process (parallel stepping; use with --n-envs)")
    x.add_argument("--fast", action="store_true", default=None,
                   help="policy calls through the fast sampler (static KV cache, CUDA graphs; docs/bench.md)")
    x.add_argument("--out", default=None, help="results directory (default results/libero)")
    x.add_argument("--video", action="store_true", default=None, help="write an MP4 per episode under OUT/videos")
    x.add_argument("--cache-dir", default=None, help=f"tiny checkpoint and AWQ statistics (default {default_cache_dir()})")
    x.add_argument("--no-progress", action="store_true", help="no progress bar")
    x.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    x.add_argument("--log-level", default="WARNING")
    from .dist_cli import add_arguments

    add_arguments(p)  # --grid, --workers, --ray-address (Ray; docs/distributed.md)
    return p


def flag_overrides(args: argparse.Namespace) -> dict:
    """The EvalConfig fields the command line sets (--preset, --quant-config, explicit flags), nested
    like EvalConfig: ``{"episodes": 2, "quant": {...}, "calib": {...}}``. Also applied to every run of
    a --grid."""
    preset = dict(PRESETS[args.preset]) if args.preset else {}
    flat = {k: v for k, v in vars(args).items() if v is not None}
    for k, v in preset.items():
        flat.setdefault(k, v)
    quant = to_dict(load_yaml(QuantConfig, args.quant_config)) if args.quant_config else {}
    quant.update({k: flat[k] for k in ("method", "bits", "group", "rank", "recompute") if k in flat})
    calib = {k: flat[f"calib_{k}"] for k in ("suite", "episodes", "tasks", "max_steps", "dataset")
             if f"calib_{k}" in flat}
    top = {k: flat[k] for k in ("suite", "episodes", "tasks", "seed", "policy", "server", "device", "dtype",
                                "n_action_steps", "tiny_seed", "quantize_expert", "max_steps", "camera_res",
                                "num_steps_wait", "hard_reset", "n_envs", "env_processes", "fast", "out", "video",
                                "cache_dir") if k in flat}
    return {**top, **({"quant": quant} if quant else {}), **({"calib": calib} if calib else {})}


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    """Defaults <- --config YAML <- --preset <- explicit flags. Device "auto" is resolved here."""
    base = to_dict(load_yaml(EvalConfig, args.config) if args.config else EvalConfig())
    over = flag_overrides(args)
    quant = {**base["quant"], **over.pop("quant", {})}  # (the --quant-config YAML is in the overrides)
    calib = {**base["calib"], **over.pop("calib", {})}
    merged = {**base, **over, "quant": quant, "calib": calib}
    given = [f"--calib-{k.replace('_', '-')}" for k in ("suite", "episodes", "tasks", "max_steps", "dataset")
             if getattr(args, f"calib_{k}") is not None]
    if given and quant.get("method") != "awq" and not merged.get("server"):
        raise ValueError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to --method awq only "
                         f"(method is {quant.get('method')!r})")
    cfg = from_dict(EvalConfig, merged)
    return cfg.with_(device=cfg.torch_device())


def _adopt_server(cfg: EvalConfig, policy, explicit_quant: bool) -> EvalConfig:
    """With --server the server's model and quantization are what runs: label results with them."""
    meta = getattr(policy, "metadata", {}) or {}
    qd = meta.get("quant")
    quant = from_dict(QuantConfig, qd) if qd else QuantConfig(method="fp")
    if explicit_quant and to_dict(quant) != to_dict(cfg.quant):
        warnings.warn(f"--server: results are labelled with the server's quantization ({quant.method}, "
                      f"{quant.bits} bits) rather than the quantization flags given here", stacklevel=2)
    return cfg.with_(quant=quant, policy=str(meta.get("policy", cfg.server)),
                     quantize_expert=bool(meta.get("quantize_expert", False)))


def run(cfg: EvalConfig, *, progress: bool = True, env_pool=None, console=None, explicit_quant: bool = False) -> list[dict]:
    """Evaluate ``cfg``: plan, skip what is done, build the policy lazily, run, summarise."""
    from rich.console import Console

    console = console or Console(stderr=False)
    own_pool = None
    if env_pool is None and cfg.env_processes:
        from .env import EnvPool

        env_pool = own_pool = EnvPool(processes=True)
    try:
        return _run(cfg, progress=progress, env_pool=env_pool, console=console, explicit_quant=explicit_quant)
    finally:
        if own_pool is not None:
            own_pool.close()


def _run(cfg: EvalConfig, *, progress: bool, env_pool, console, explicit_quant: bool) -> list[dict]:
    from .build import build_policy
    from .plan import plan_items
    from .results import ResultsStore, episode_key
    from .rollout import run_items
    from .summary import print_summary, summarize_planned

    out = Path(cfg.out)
    store = ResultsStore(out / "episodes.jsonl")
    remote = None
    if cfg.server:
        remote = build_policy(cfg)
        cfg = _adopt_server(cfg, remote, explicit_quant)
    try:
        items = plan_items(cfg)
        done = store.done_keys()
        policy, built_for = remote, None
        for suite in cfg.suites():
            suite_items = [it for it in items if it.suite == suite]
            h = cfg.result_hash(suite)
            save_yaml(cfg, out / "configs" / f"{suite}-{h}.yaml")
            todo = [it for it in suite_items if episode_key(it) not in done]
            console.print(f"[bold]LIBERO {suite}[/bold]: {len(suite_items)} episodes planned, "
                          f"{len(suite_items) - len(todo)} already done, config {h} -> {store.path}")
            if not todo:
                continue
            # a new policy only where the calibration differs (AWQ per suite), the rule of EpisodeWorker
            if policy is None or (remote is None and cfg.calib_suite_for(suite) != built_for):
                policy = None  # free the previous suite's model before loading the next
                policy = build_policy(cfg, suite=suite, env_pool=env_pool, progress=progress)
                built_for = cfg.calib_suite_for(suite)
            run_items(policy, todo, store, n_envs=cfg.n_envs, video_dir=(out / "videos") if cfg.video else None,
                      progress=progress, env_pool=env_pool, desc=f"LIBERO {suite}")
    finally:  # an interrupted run closes its server connections too
        if remote is not None:
            remote.close()
    summary = summarize_planned(store, items, out)
    print_summary(summary, console)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    from . import dist_cli

    if dist_cli.wants_distributed(args):
        return dist_cli.main(args, parser)
    try:
        cfg = config_from_args(args)
        if args.dry_run:
            from .plan import plan_items

            items = plan_items(cfg)
            print(f"{len(items)} episodes; config hashes " + ", ".join(sorted({i.config_hash for i in items})))
            return 0
        from .calib import check_dataset

        check_dataset(cfg.calib.dataset)
        if cfg.policy != "tiny" and not cfg.server:
            from vla_ttq.models.policy import resolve_checkpoint

            resolve_checkpoint(cfg.policy)  # fails here, with its reason, before any simulator starts
    except (ValueError, FileNotFoundError, NotImplementedError, RuntimeError) as e:
        parser.error(str(e))
    explicit_quant = any(getattr(args, k) is not None for k in ("method", "bits", "group", "rank", "quant_config"))
    run(cfg, progress=not args.no_progress, explicit_quant=explicit_quant)
    return 0


if __name__ == "__main__":
    sys.exit(main())
