"""AWQ calibration per LIBERO suite: activation statistics from full-precision rollouts.

Statistics are collected by running the *full-precision* policy on episodes of the calibration
suite in the simulator (``policy.collect_stats`` hooks the layers AWQ will quantize), saved as
safetensors (``vla_ttq.quant.stats``) under the cache directory and reused by later runs. The
cache key covers the checkpoint, the suite and the calibration protocol, so ``--calib-suite
spatial --suite 10`` (the paper's cross-suite setting) reuses the spatial statistics.

Calibration episodes use init states counted from the end (49, 48, ...) and their own seeds, so
with fewer than 50 evaluation episodes per task they do not overlap the evaluated ones.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from vla_ttq.config import config_hash, to_dict

from .config import TINY, EvalConfig
from .plan import EpisodeItem, episode_seed, suite_tasks, task_ids
from .results import ResultsStore, file_lock

log = logging.getLogger(__name__)
CALIB_SEED_OFFSET = 500_000
PROTOCOL_VERSION = 1  # bump when the way statistics are collected changes


def calib_key_blob(cfg: EvalConfig, suite: str) -> dict[str, Any]:
    c = cfg.calib
    return {"version": PROTOCOL_VERSION, "policy": cfg.policy if cfg.policy != TINY else f"tiny:{cfg.tiny_seed}",
            "suite": suite, "episodes": c.episodes, "tasks": c.tasks, "max_steps": c.max_steps or cfg.max_steps_for(suite),
            "p": c.p, "reservoir": c.reservoir, "seed": cfg.seed, "camera_res": cfg.camera_res,
            "num_steps_wait": cfg.num_steps_wait, "hard_reset": cfg.hard_reset, "n_action_steps": cfg.n_action_steps, "dtype": cfg.dtype,
            "quantize_expert": cfg.quantize_expert}


def calib_path(cfg: EvalConfig, suite: str) -> Path:
    blob = calib_key_blob(cfg, suite)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", blob["policy"]).strip("_")
    return cfg.cache_root / "awq_stats" / slug / f"{suite}-{config_hash(blob)}.safetensors"


def calib_items(cfg: EvalConfig, suite: str) -> list[EpisodeItem]:
    tasks = suite_tasks(suite)
    ids = task_ids(suite, cfg.calib.tasks, "calibration task")
    key = "calib-" + config_hash(calib_key_blob(cfg, suite))
    max_steps = cfg.calib.max_steps or cfg.max_steps_for(suite)
    return [EpisodeItem(suite=suite, task_id=t, episode=49 - e, seed=episode_seed(cfg.seed + CALIB_SEED_OFFSET, t, e),
                        config_hash=key, task_name=tasks[t][0], prompt=tasks[t][1], max_steps=max_steps,
                        num_steps_wait=cfg.num_steps_wait, camera_res=cfg.camera_res, hard_reset=cfg.hard_reset, method="fp", bits=None,
                        group=None, rank=None, calib_suite=None, policy=cfg.policy)
            for t in ids for e in range(cfg.calib.episodes)]


def check_dataset(path: str | None) -> None:
    if path is None:
        return
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(
            f"calibration data set not found at {p} (--calib-dataset). lerobot/libero must be downloaded "
            f"beforehand (huggingface-cli download --repo-type dataset lerobot/libero --local-dir DIR); "
            f"omit --calib-dataset to calibrate from simulator rollouts only")
    raise NotImplementedError(
        f"reading the lerobot/libero data set ({p}) for AWQ calibration is not implemented yet; "
        f"omit --calib-dataset to calibrate from full-precision simulator rollouts (docs/libero.md)")


def calibration_stats(policy: Any, cfg: EvalConfig, suite: str, *, env_pool=None, progress: bool = True) -> dict:
    """Statistics for AWQ calibrated on ``suite``: loaded from the cache, or collected and saved."""
    from vla_ttq.quant.stats import load_stats

    check_dataset(cfg.calib.dataset)
    path = calib_path(cfg, suite)
    # Runs calibrating the same suite at once (Ray workers, two CLI runs) would collect the same
    # statistics twice and race on the cache file: the first collects, the others wait and load.
    with file_lock(path.with_suffix(".lock")):
        if path.exists():
            log.info("AWQ statistics for suite %s from cache %s", suite, path)
            return load_stats(path)
        return _collect(policy, cfg, suite, path, env_pool=env_pool, progress=progress)


def _collect(policy: Any, cfg: EvalConfig, suite: str, path: Path, *, env_pool, progress: bool) -> dict:
    from vla_ttq.quant.stats import save_stats

    from .rollout import run_items

    items = calib_items(cfg, suite)
    episodes = ResultsStore(path.with_name(path.stem + ".episodes.jsonl"))
    episodes.path.unlink(missing_ok=True)  # a killed calibration restarts: its statistics were never saved

    def drive() -> None:
        run_items(policy, items, episodes, n_envs=cfg.n_envs, progress=progress, env_pool=env_pool,
                  desc=f"AWQ calibration ({suite})")

    stats = policy.collect_stats(drive, quantize_expert=cfg.quantize_expert, p=cfg.calib.p,
                                 reservoir=cfg.calib.reservoir)
    meta = {"calibration": json.dumps(calib_key_blob(cfg, suite), default=str),
            "episodes": str(len(items)), "eval_config_calib": json.dumps(to_dict(cfg.calib))}
    save_stats(stats, path, metadata=meta)
    log.info("AWQ statistics for suite %s saved to %s", suite, path)
    return stats


__all__ = ["calibration_stats", "calib_items", "calib_path", "check_dataset"]
