"""Timing of one policy call and device-memory accounting."""

from __future__ import annotations

import gc
import statistics
import time
from typing import Callable, Iterable

import torch
import torch.nn as nn

from ..models.quantize import quant_filter
from ..quant.modules import QuantLinear, TTQLinear


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clean(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def time_calls(call: Callable[[], object], device: torch.device, reps: int, budget_s: float,
               min_reps: int = 3) -> list[float]:
    """Wall-clock milliseconds of ``reps`` calls (fewer once ``budget_s`` is spent, never under ``min_reps``),
    each fenced by a device synchronisation so host and device time are both inside."""
    times: list[float] = []
    while len(times) < reps and (len(times) < min_reps or sum(times) / 1e3 < budget_s):
        sync(device)
        t0 = time.perf_counter()
        call()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def summarise(times: list[float]) -> dict[str, float]:
    s = sorted(times)
    pick = lambda q: s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]  # noqa: E731
    return {"ms_median": statistics.median(s), "ms_p10": pick(0.1), "ms_p90": pick(0.9),
            "ms_mean": statistics.fmean(s), "reps": len(s)}


def module_tensors(module: nn.Module) -> Iterable[torch.Tensor]:
    """Every tensor a module keeps for its weight: parameters, buffers, TTQ episode calibrations."""
    yield from (t for t in module._parameters.values() if t is not None)
    yield from (t for t in module._buffers.values() if t is not None)
    # packed weights with every tensor a backend keeps (torch_int4's / Marlin's layout copies too)
    if isinstance(module, TTQLinear):
        for packed, s in module._cache.values():
            yield from packed.tensors().values()
            yield s
    if isinstance(module, QuantLinear) and module._prepared is not None:  # a backend's copy of the codes
        yield from module._prepared[1].tensors().values()


class ByteCounter:
    """Bytes of distinct storages on one device type (views of one tensor are counted once)."""

    def __init__(self, device_type: str):
        self.device_type, self.seen, self.total = device_type, set(), 0

    def add(self, t: torch.Tensor | None) -> int:
        if t is None or t.device.type != self.device_type:
            return 0
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in self.seen:
            return 0
        self.seen.add(key)
        self.total += storage.nbytes()
        return storage.nbytes()


def weight_bytes(root: nn.Module, extra: Iterable[torch.Tensor], device: torch.device) -> dict[str, int]:
    """Device bytes of all weights (``weights``) and of the LM + expert block linears (``block_linears``,
    the layers the backbone+expert option quantizes), dequantized copies in ``extra`` included."""
    target = quant_filter(quantize_expert=True)
    counter = ByteCounter(device.type)
    block = 0
    extra = list(extra)
    for name, mod in root.named_modules():
        is_block = isinstance(mod, (QuantLinear, TTQLinear)) or target(mod, name)
        for t in module_tensors(mod):
            n = counter.add(t)
            block += n if is_block else 0
    for t in extra:  # the sampler's dequantized / fused copies of quantized layers
        block += counter.add(t)
    return {"weights": counter.total, "block_linears": block}


def host_master_bytes(root: nn.Module) -> int:
    return sum(m._host_master.numel() * m._host_master.element_size() for m in root.modules()
               if isinstance(m, TTQLinear) and m.master_on_host)


def memory_now(device: torch.device) -> dict[str, int]:
    if device.type != "cuda":
        return {}
    return {"allocated": torch.cuda.memory_allocated(device), "peak": torch.cuda.max_memory_allocated(device)}


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
