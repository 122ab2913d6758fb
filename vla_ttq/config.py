"""Configuration dataclasses, serialisable to and from YAML (see ``configs/``)."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

METHODS = ("fp", "rtn", "awq", "ttq")


@dataclass
class QuantConfig:
    """How to quantize a linear layer. Defaults follow the paper (appendix F; Table 13 uses q=2, g=64).

    lam is the shrinkage λ ∈ [0, 1] of eq. 13 (see ``vla_ttq/quant/scaling.py`` for the exact
    definition of D from p, λ, α).
    """

    method: Literal["fp", "rtn", "awq", "ttq"] = "ttq"
    bits: int = 4
    group: int = 64
    rank: int = 0  # low-rank residual B·A (TTQ); 0 disables
    p: float = 2.0
    alpha: float = 0.5  # TTQ's fixed α; AWQ searches its own over alpha_grid
    lam: float = 0.4
    nu: float = 1.0  # range expansion factor of eq. 27-28 (1 = plain min/max)
    symmetric: bool = False
    scale_dtype: Literal["float16", "bfloat16", "float32"] = "float16"  # stored S and Z
    # TTQ: recompute D on every call (the paper), or once per episode until reset_ttq() is called.
    recompute: Literal["call", "episode"] = "call"
    # TTQ: one D for the whole batch ("batch", the paper's X), or one per sample ("sample"), which
    # makes a result independent of what else is in the batch.
    stats_scope: Literal["batch", "sample"] = "sample"
    alpha_grid: tuple[float, ...] = tuple(i / 20 for i in range(21))
    check_finite: bool = True  # NaN/inf check on every TTQ input (a device sync; off for benchmarks)
    backend: str = "auto"  # matmul backend: auto | reference | triton | torch_int4 | marlin

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.method != "fp" and (not isinstance(self.bits, int) or not 1 <= self.bits <= 8):
            raise ValueError(f"bits must be an integer in [1, 8], got {self.bits!r}")
        if not isinstance(self.group, int) or self.group <= 0:
            raise ValueError(f"group must be a positive integer, got {self.group!r}")
        if not isinstance(self.rank, int) or self.rank < 0:
            raise ValueError(f"rank must be a non-negative integer, got {self.rank!r}")
        if self.rank and self.method not in ("ttq",):
            raise ValueError(f"rank > 0 (low-rank residual) is defined for TTQ only, not {self.method!r}")
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"lam (shrinkage λ) must be in [0, 1], got {self.lam}")
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")
        if not self.p > 0:
            raise ValueError(f"p must be > 0 (or inf), got {self.p}")
        if self.nu <= 0:
            raise ValueError(f"nu must be > 0, got {self.nu}")
        if self.recompute not in ("call", "episode"):
            raise ValueError(f"recompute must be 'call' or 'episode', got {self.recompute!r}")
        if self.stats_scope not in ("batch", "sample"):
            raise ValueError(f"stats_scope must be 'batch' or 'sample', got {self.stats_scope!r}")
        self.alpha_grid = tuple(float(a) for a in self.alpha_grid)


def _coerce(tp: Any, value: Any) -> Any:
    """Turn YAML values (lists) back into the dataclass' declared types (tuples, nested configs)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return from_dict(tp, value)
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        if isinstance(v, list):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(cfg)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"expected a mapping for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    return cls(**{k: _coerce(hints[k], v) for k, v in data.items()})


def save_yaml(cfg: Any, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def load_yaml(cls: type, path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file not found: {path}")
    return from_dict(cls, yaml.safe_load(path.read_text()) or {})


def config_hash(cfg: Any) -> str:
    """Short stable hash of a config, used to tag results so runs of different configs never mix."""
    import hashlib
    import json

    blob = json.dumps(to_dict(cfg), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


__all__ = ["QuantConfig", "METHODS", "to_dict", "from_dict", "save_yaml", "load_yaml", "config_hash"]
