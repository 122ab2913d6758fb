"""``quantize_(model, config, filter_fn)``: swap ``nn.Linear`` modules for quantized ones in place.

One small handler per method (in the spirit of gpt-fast's quantize.py). AWQ needs calibration
statistics, collected with :func:`calibrate` (hooks on the same layers, any number of batches).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn as nn

from ..config import QuantConfig
from .groupwise import check_finite, check_group, quantize_groupwise
from .methods import awq_search_alpha
from .modules import QuantLinear, TTQLinear
from .packing import SCALE_DTYPES, PackedWeight
from .scaling import column_scale
from .stats import ActivationStats

FilterFn = Callable[[nn.Module, str], bool]


def default_filter(module: nn.Module, name: str) -> bool:
    return isinstance(module, nn.Linear)


@dataclass
class QuantReport:
    """What :func:`quantize_` did: which modules, and weight bytes measured before and after."""

    method: str
    modules: list[str] = field(default_factory=list)
    bytes_before: int = 0
    bytes_after: int = 0
    awq_alpha: dict[str, float] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.bytes_after / self.bytes_before if self.bytes_before else 1.0

    def to_dict(self) -> dict:
        return {"method": self.method, "num_modules": len(self.modules), "modules": list(self.modules),
                "bytes_before": self.bytes_before, "bytes_after": self.bytes_after, "ratio": self.ratio,
                "awq_alpha": dict(self.awq_alpha)}

    def save(self, path) -> None:
        """Write :meth:`to_dict` as JSON (the record of what was quantized)."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    def summary(self) -> str:
        gib = 2**20
        return (f"{self.method}: {len(self.modules)} linear layers quantized; weight memory of those layers "
                f"{self.bytes_before / gib:.2f} MiB -> {self.bytes_after / gib:.2f} MiB ({self.ratio:.1%})")


def _tensor_bytes(*ts: torch.Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in ts if t is not None)


def iter_targets(model: nn.Module, filter_fn: FilterFn | None) -> Iterator[tuple[str, nn.Linear]]:
    filter_fn = filter_fn or default_filter
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and filter_fn(module, name):
            yield name, module


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _static(linear: nn.Linear, cfg: QuantConfig, name: str, col_scale: torch.Tensor | None) -> QuantLinear:
    check_group(tuple(linear.weight.shape), cfg.group, name)
    w = linear.weight.detach().float()
    if col_scale is not None:
        col_scale = col_scale.to(w.device)
        w = w * col_scale
    dtype = SCALE_DTYPES[cfg.scale_dtype]
    q = quantize_groupwise(w, cfg.bits, cfg.group, cfg.symmetric, cfg.nu, name=name, param_dtype=dtype)
    packed = PackedWeight.from_quantized(q, dtype)
    return QuantLinear(packed, col_scale, linear.bias, backend=cfg.backend, name=name)


def _handle_rtn(linear, cfg, name, stats, report):
    return _static(linear, cfg, name, None)


def _handle_awq(linear, cfg, name, stats, report):
    if stats is None or name not in stats:
        raise ValueError(f"AWQ needs calibration statistics for layer '{name}'; run calibrate() first")
    st = stats[name]
    if st.dim != linear.in_features:
        raise ValueError(f"calibration statistics of '{name}' have {st.dim} channels, layer has {linear.in_features}")
    c = st.channel_stat()
    alpha, _ = awq_search_alpha(linear.weight, c.to(linear.weight.device), st.samples.to(linear.weight.device),
                                cfg.bits, cfg.group, cfg.lam, cfg.alpha_grid, symmetric=cfg.symmetric, nu=cfg.nu)
    report.awq_alpha[name] = alpha
    return _static(linear, cfg, name, column_scale(c, cfg.lam, alpha))


def _handle_ttq(linear, cfg, name, stats, report):
    return TTQLinear(linear, cfg, name)


_HANDLERS = {"rtn": _handle_rtn, "awq": _handle_awq, "ttq": _handle_ttq}


def module_weight_bytes(module: nn.Module) -> int:
    if isinstance(module, QuantLinear):
        return module.weight_nbytes
    if isinstance(module, TTQLinear):  # keeps W (and B, A); TTQ's saving is in the kernel traffic
        return _tensor_bytes(module.weight, module.lr_b, module.lr_a)
    if isinstance(module, nn.Linear):
        return _tensor_bytes(module.weight)
    raise TypeError(type(module).__name__)


@torch.no_grad()
def quantize_(
    model: nn.Module,
    config: QuantConfig,
    filter_fn: FilterFn | None = None,
    calibration: dict[str, ActivationStats] | None = None,
) -> QuantReport:
    """Replace every ``nn.Linear`` selected by ``filter_fn(module, name)`` in place."""
    config.validate()
    report = QuantReport(config.method)
    if config.method == "fp":
        return report
    handler = _HANDLERS[config.method]
    for name, linear in iter_targets(model, filter_fn):
        new = handler(linear, config, name, calibration, report)
        report.modules.append(name)
        report.bytes_before += _tensor_bytes(linear.weight)
        report.bytes_after += module_weight_bytes(new)
        _set_module(model, name, new)
    if not report.modules:
        raise ValueError("quantize_ matched no nn.Linear module: check filter_fn")
    return report


@contextlib.contextmanager
def _hooks(model: nn.Module, filter_fn: FilterFn | None, stats: dict[str, ActivationStats], p: float, reservoir: int):
    handles = []
    for name, linear in iter_targets(model, filter_fn):
        if name not in stats:
            stats[name] = ActivationStats(linear.in_features, p, reservoir, seed=len(stats))

        def hook(mod, args, _name=name):
            stats[_name].update(args[0])

        handles.append(linear.register_forward_pre_hook(hook))
    try:
        yield stats
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def calibrate(
    model: nn.Module,
    run: Callable[[], None] | list,
    filter_fn: FilterFn | None = None,
    p: float = 2.0,
    reservoir: int = 1024,
    stats: dict[str, ActivationStats] | None = None,
) -> dict[str, ActivationStats]:
    """Record activation statistics of the target linears while ``run()`` drives the model.

    ``run`` is a callable that performs any number of forward passes, or a list of positional
    inputs, each passed as ``model(x)``. Passing previous ``stats`` keeps accumulating into them.
    """
    stats = {} if stats is None else stats
    with _hooks(model, filter_fn, stats, p, reservoir):
        if callable(run):
            run()
        else:
            for batch in run:
                model(batch)
    missing = [n for n, s in stats.items() if s.count == 0]
    if missing:
        raise ValueError(f"calibration run never reached {len(missing)} target layer(s), e.g. '{missing[0]}'")
    return stats


def reset_ttq(model: nn.Module) -> int:
    """Start a new episode: every TTQ layer re-calibrates on its next call. Returns layers reset."""
    n = 0
    for m in model.modules():
        if isinstance(m, TTQLinear):
            m.reset()
            n += 1
    return n


def offload_ttq_masters(model: nn.Module, pin_memory: bool = True) -> int:
    """Memory mode: every TTQ layer keeps its full-precision W on the host only (see
    :meth:`TTQLinear.offload_master`); the device holds the packed weight of the current episode,
    re-made layer by layer at the first call after :func:`reset_ttq`. Returns layers offloaded."""
    layers = [m for m in model.modules() if isinstance(m, TTQLinear)]
    if not layers:
        raise ValueError("offload_ttq_masters found no TTQ layer: quantize the model with method='ttq' first")
    for m in layers:
        m.offload_master(pin_memory)
    return len(layers)


def ttq_state(model: nn.Module) -> dict[str, dict]:
    """Snapshot of every TTQ layer's episode calibration (to keep one per client in a server).

    Calibrations are immutable (a new one makes new tensors), so a snapshot holds references,
    except for layers whose tensors a CUDA-graph runner (``vla_ttq.models.fast``) shares and
    refreshes in place (``cache_shared``): those are copied, so a later refresh cannot change them."""
    def entry(m: TTQLinear, packed, s):
        return (packed.clone(), s.clone()) if m.cache_shared else (packed, s)

    return {n: {slot: entry(m, packed, s) for slot, (packed, s) in m._cache.items()}
            for n, m in model.named_modules() if isinstance(m, TTQLinear)}


def load_ttq_state(model: nn.Module, state: dict[str, dict]) -> None:
    for n, m in model.named_modules():
        if isinstance(m, TTQLinear):
            m._cache = dict(state.get(n, {}))


__all__ = ["quantize_", "calibrate", "reset_ttq", "offload_ttq_masters", "ttq_state", "load_ttq_state", "QuantReport",
           "default_filter", "check_finite"]
