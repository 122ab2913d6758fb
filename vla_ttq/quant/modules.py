"""``nn.Module`` replacements for ``nn.Linear``: static packed (RTN/AWQ) and test-time (TTQ)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from .. import kernels
from ..kernels.reference import effective_weight, residual
from .groupwise import check_finite, check_group, quantize_groupwise
from .methods import lowrank_factors
from .packing import SCALE_DTYPES, PackedWeight
from .scaling import scale_columns


class QuantLinear(nn.Module):
    """A linear layer whose weight lives only as packed low-bit codes (+ per-group S, Z).

    For AWQ a per-input-channel ``col_scale`` s is kept too: y = (x / s) · Q[W s]ᵀ.
    """

    def __init__(self, packed: PackedWeight, col_scale: torch.Tensor | None, bias: torch.Tensor | None,
                 backend: str = "auto", name: str | None = None):
        super().__init__()
        self.out_features, self.in_features = packed.shape
        self.bits, self.group, self.name = packed.bits, packed.group, name
        self.register_buffer("qdata", packed.data)
        self.register_buffer("qscale", packed.scale)
        self.register_buffer("qzero", packed.zero)
        self.register_buffer("col_scale", col_scale)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.backend_override = backend
        self._prepared: tuple[tuple, PackedWeight] | None = None  # the backend's copy of the weight (not saved)

    @property
    def packed(self) -> PackedWeight:
        return PackedWeight(self.qdata, self.qscale, self.qzero, self.bits, self.group,
                            (self.out_features, self.in_features))

    @property
    def weight_nbytes(self) -> int:
        return self.packed.nbytes + (0 if self.col_scale is None else self.col_scale.numel() * self.col_scale.element_size())

    def prepared(self, backend: str) -> PackedWeight:
        """The weight in ``backend``'s layout, converted once and rebuilt only if the buffers change."""
        key = (backend, self.qdata.device, self.qdata.data_ptr(), self.qdata._version, self.qscale._version)
        if self._prepared is None or self._prepared[0] != key:
            self._prepared = (key, kernels.prepare(self.packed, backend))
        return self._prepared[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        backend = kernels.select_backend(x.device, self.bits, self.group, self.backend_override)
        return kernels.quant_matmul(x, self.prepared(backend), self.col_scale, None, self.bias, backend=backend)

    def extra_repr(self) -> str:
        awq = "" if self.col_scale is None else ", activation-scaled"
        return f"{self.in_features}->{self.out_features}, {self.bits}-bit g{self.group}{awq}"


class TTQLinear(nn.Module):
    """Test-time quantized linear: keeps W, re-quantizes from each incoming activation.

    forward(x): s = D(x)^½ per input channel, y = (x/s)·Q[(W - BA) s]ᵀ + (x Aᵀ) Bᵀ + bias.
    With ``recompute="episode"`` the first call after :meth:`reset` calibrates and the
    quantized weight is reused until the next reset (one cache entry per batch slot when
    ``stats_scope="sample"``).
    """

    def __init__(self, linear: nn.Linear, cfg, name: str | None = None):
        super().__init__()
        check_group(tuple(linear.weight.shape), cfg.group, name)
        check_finite(linear.weight, "weight", name)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.cfg, self.name = cfg, name
        self.weight = nn.Parameter(linear.weight.detach(), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        if cfg.rank:
            b, a = lowrank_factors(linear.weight, cfg.rank)
            self.register_buffer("lr_b", b.to(linear.weight.dtype))
            self.register_buffer("lr_a", a.to(linear.weight.dtype))
        else:
            self.lr_b = self.lr_a = None
        self._cache: dict[int, tuple[PackedWeight, torch.Tensor]] = {}
        self._host_master: torch.Tensor | None = None  # see offload_master
        # True once a CUDA-graph runner (vla_ttq.models.fast) shares the cache's tensors and
        # refreshes them in place: snapshots (api.ttq_state) must then copy them.
        self.cache_shared = False
        self.calibrations = 0  # how many times D was computed and W re-quantized

    @property
    def lowrank(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return None if self.lr_b is None else (self.lr_b, self.lr_a)

    def reset(self) -> None:
        """Forget the episode calibration; the next call re-calibrates (recompute='episode')."""
        self._cache.clear()

    def residual_weight(self, device: torch.device | None = None) -> torch.Tensor:
        """W - BA (float32 when there is a low-rank part); ``device``: where to compute it (the master
        W may live on the host, see below)."""
        return residual(self.master_weight(device), self.lowrank)

    # --- full-precision master on the host ------------------------------------------------
    @property
    def master_on_host(self) -> bool:
        return self._host_master is not None

    def master_weight(self, device: torch.device | None = None) -> torch.Tensor:
        w = self.weight  # the host copy once offloaded (see __getattr__)
        return w if device is None else w.to(device, non_blocking=True)

    def offload_master(self, pin_memory: bool = True) -> None:
        """Keep the full-precision W only on the host (pinned when possible): the device then holds
        just the episode's packed weight, re-made from W at each calibration (copied in per layer).

        Only for ``recompute="episode"``: per-call recompute would copy W in on every call."""
        if self.cfg.recompute != "episode":
            raise ValueError(f"offload_master needs recompute='episode' (layer '{self.name}' recomputes D every "
                             f"call, which would copy its weight from the host on every call)")
        if self._host_master is not None:
            return
        w = self.weight.detach().to("cpu")
        if pin_memory and torch.cuda.is_available():
            w = w.pin_memory()
        self._host_master = w
        del self.weight  # the parameter (and its device memory) goes; ``weight`` reads the host copy
        self._cache.clear()

    def __getattr__(self, name: str):
        if name == "weight" and self.__dict__.get("_host_master") is not None:
            return self.__dict__["_host_master"]
        return super().__getattr__(name)

    def _column_scale(self, x: torch.Tensor, backend: str = "reference") -> torch.Tensor:
        """s = D(x)^½ per input channel (the TTQ scale of the paper, from this activation)."""
        return kernels.column_scale(x, self.cfg.p, self.cfg.lam, self.cfg.alpha, backend=backend)

    def _qargs(self) -> tuple:
        cfg = self.cfg
        return cfg.bits, cfg.group, cfg.symmetric, cfg.nu, SCALE_DTYPES[cfg.scale_dtype]

    def requantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dequantized ``Q[(W - BA) s]`` (float32) and ``s = D(x)^½`` for activation ``x``.

        The same codes as the calibration below, without packing and without host syncs (no
        finiteness check), so it can run inside a captured CUDA graph."""
        cfg = self.cfg
        s = self._column_scale(x)
        q = quantize_groupwise(scale_columns(self.residual_weight(x.device), s), cfg.bits, cfg.group,
                               cfg.symmetric, cfg.nu, check=False, param_dtype=SCALE_DTYPES[cfg.scale_dtype])
        return q.dequantize(), s

    def calibration_scale(self, x: torch.Tensor, backend: str) -> torch.Tensor:
        """One calibration's start: the input checked (when configured), counted, and s = D(x)^½."""
        if self.cfg.check_finite:
            check_finite(x, "activation", self.name)
        self.calibrations += 1
        return self._column_scale(x, backend)

    def _calibrate(self, x: torch.Tensor, backend: str) -> tuple[PackedWeight, torch.Tensor]:
        s = self.calibration_scale(x, backend)
        packed = kernels.quantize_pack(self.master_weight(x.device), s, *self._qargs(), backend=backend,
                                       lowrank=self.lowrank)
        return packed, s

    def _forward_one(self, x: torch.Tensor, slot: int, backend: str) -> torch.Tensor:
        if self.cfg.recompute == "episode":
            if slot not in self._cache:
                self._cache[slot] = self._calibrate(x, backend)
            packed, s = self._cache[slot]
            return kernels.quant_matmul(x, packed, s, self.lowrank, self.bias, backend=backend)
        # per call: the backend may quantize and multiply in one go (no packed codes kept)
        s = self.calibration_scale(x, backend)
        return kernels.online_matmul(x, self.master_weight(x.device), s, self.lowrank, self.bias, *self._qargs(),
                                     backend=backend)

    def per_slot(self, x: torch.Tensor, fn: Callable[[torch.Tensor, int], torch.Tensor]) -> torch.Tensor:
        """``fn(x_slot, slot)`` for each batch slot with its own calibration (``stats_scope="sample"``
        and a batched input), stacked; else ``fn(x, 0)`` once."""
        if self.cfg.stats_scope == "sample" and x.dim() >= 3 and x.shape[0] > 1:
            return torch.stack([fn(x[i], i) for i in range(x.shape[0])])
        return fn(x, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        backend = kernels.select_backend(x.device, self.cfg.bits, self.cfg.group, self.cfg.backend)
        return self.per_slot(x, lambda xi, slot: self._forward_one(xi, slot, backend))

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"{self.in_features}->{self.out_features}, TTQ {c.bits}-bit g{c.group} r={c.rank} "
                f"p={c.p} α={c.alpha} λ={c.lam} recompute={c.recompute}")


def dense_effective_weight(module: nn.Module) -> torch.Tensor:
    """The float32 weight a static quantized module applies (for tests and reports)."""
    if isinstance(module, QuantLinear):
        return effective_weight(module.packed, module.col_scale)
    if isinstance(module, nn.Linear):
        return module.weight.float()
    raise TypeError(f"no static effective weight for {type(module).__name__}")

