"""Build the policy the server serves: a checkpoint (hub id or path), the tiny test checkpoint, or
any factory ``module:callable`` returning an object that implements the policy contract."""

from __future__ import annotations

import contextlib
import importlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import QuantConfig, from_dict, load_yaml, to_dict

TINY = "tiny"


@dataclass
class PolicySpec:
    """Which policy to load and how to quantize it (what the CLI flags describe)."""

    policy: str | None = None  # hub id, local path, or "tiny"
    factory: str | None = None  # "module:callable" (alternative to policy)
    device: str = "cpu"
    dtype: str | None = None  # e.g. float32, bfloat16; None: the loader's default
    quantize_expert: bool = False
    n_action_steps: int | None = None
    calibration: str | None = None  # activation statistics file (AWQ)
    seed: int = 0  # for the tiny checkpoint
    fast: bool = False  # FastSampler: static KV cache, one CUDA graph per call on a GPU (docs/bench.md)


def quant_config(method: str | None, overrides: dict[str, Any], yaml_path: str | None) -> QuantConfig | None:
    """QuantConfig from an optional YAML file, then explicit CLI overrides. ``fp`` means no quantization."""
    base = to_dict(load_yaml(QuantConfig, yaml_path)) if yaml_path else {}
    merged = {**base, **{k: v for k, v in overrides.items() if v is not None}}
    if method is not None:
        merged["method"] = method
    if not merged:
        return None
    cfg = from_dict(QuantConfig, merged)
    return None if cfg.method == "fp" else cfg


def load_factory(spec: str) -> Any:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--factory must look like 'package.module:callable', got {spec!r}")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot import policy factory {spec!r}: {e}") from e
    return obj()


def build_policy(spec: PolicySpec, quant: QuantConfig | None, stack: contextlib.ExitStack) -> Any:
    """Load the policy; temporary files (the tiny checkpoint) live as long as ``stack``."""
    if (spec.policy is None) == (spec.factory is None):
        raise ValueError("give exactly one of --policy (hub id, path or 'tiny') and --factory")
    if spec.factory is not None:
        return load_factory(spec.factory)
    from ..models import load_policy  # torch + model code: only when actually serving a checkpoint

    path = spec.policy
    if path == TINY:
        from ..models.tiny import make_tiny_checkpoint

        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="vla_ttq_tiny_"))
        path = str(make_tiny_checkpoint(Path(tmp) / "tiny", seed=spec.seed))
    calibration = None
    if spec.calibration:
        from ..quant import load_stats

        calibration = load_stats(spec.calibration)
    dtype = None
    if spec.dtype:
        import torch

        dtype = getattr(torch, spec.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown torch dtype {spec.dtype!r}")
    return load_policy(path, device=spec.device, dtype=dtype, quant=quant, calibration=calibration,
                       quantize_expert=spec.quantize_expert, n_action_steps=spec.n_action_steps, fast=spec.fast)


__all__ = ["PolicySpec", "build_policy", "quant_config", "load_factory", "TINY"]
