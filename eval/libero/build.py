"""``build_policy(eval_config)``: the (calibrated, quantized) policy an evaluation runs.

``policy="tiny"`` builds a random tiny pi0.5 checkpoint once into the cache directory (tests,
CI, smoke runs); anything else goes to :func:`vla_ttq.models.load_policy` (hub id or path).
With ``server`` set, the policy is a :class:`vla_ttq.serve.client.RemotePolicy` and the server
decides the model and its quantization.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .config import TINY, EvalConfig


def tiny_checkpoint(cache_dir: str | Path, seed: int = 0) -> Path:
    """The tiny random checkpoint of ``seed``, made once (atomically) under ``cache_dir``.

    The folder name carries a hash of the tiny architecture, so a changed ``tiny_config`` never
    loads a stale cached checkpoint."""
    from vla_ttq.config import config_hash
    from vla_ttq.models.tiny import make_tiny_checkpoint, tiny_config

    layout = config_hash(tiny_config().to_lerobot_json(explicit_dims=True))
    out = Path(cache_dir) / "tiny" / f"seed{seed}-{layout}"
    if (out / "config.json").is_file():
        return out

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp_", dir=out.parent))
    try:
        make_tiny_checkpoint(tmp / "ckpt", seed=seed)
        try:
            os.replace(tmp / "ckpt", out)
        except OSError:  # another process made it first
            if not (out / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def checkpoint_path(cfg: EvalConfig) -> str:
    return str(tiny_checkpoint(cfg.cache_root, cfg.tiny_seed)) if cfg.policy == TINY else cfg.policy


def load_fp_policy(cfg: EvalConfig) -> Any:
    from vla_ttq.models import load_policy

    return load_policy(checkpoint_path(cfg), device=cfg.torch_device(), dtype=cfg.dtype, n_action_steps=cfg.n_action_steps,
                       seed=cfg.seed, fast=cfg.fast)


def build_policy(eval_config: EvalConfig, *, suite: str | None = None, env_pool=None, progress: bool = True) -> Any:
    """Load and quantize the policy of ``eval_config`` (AWQ: calibrated on the suite it evaluates).

    ``suite``: the suite about to be evaluated; needed only for AWQ without an explicit
    calibration suite when the config covers several suites."""
    cfg = eval_config
    if cfg.server:
        from vla_ttq.serve.client import RemotePolicy

        return RemotePolicy(cfg.server)
    policy = load_fp_policy(cfg)
    q = cfg.quant
    calibration = None
    if q.method == "awq":
        suites = cfg.suites()
        if suite is None and cfg.calib.suite is None and len(suites) > 1:
            raise ValueError("AWQ over several suites calibrates per suite: pass suite=... (or set calib.suite)")
        calib_suite = cfg.calib_suite_for(suite or suites[0])
        from .calib import calibration_stats

        calibration = calibration_stats(policy, cfg, calib_suite, env_pool=env_pool, progress=progress)
    policy.quantize(q, calibration=calibration, quantize_expert=cfg.quantize_expert)
    return policy


__all__ = ["build_policy", "load_fp_policy", "tiny_checkpoint", "checkpoint_path"]
