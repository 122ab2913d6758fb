"""Prepare each group of modes once (build, calibrate, quantize) and measure every mode of it."""

from __future__ import annotations

import contextlib
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..config import QuantConfig
from ..models.config import Pi05Config
from ..models.fast import FastSampler
from ..models.quantize import quant_filter
from ..models.tiny import build_random_model, tiny_config
from ..quant.api import calibrate, offload_ttq_masters, quantize_, reset_ttq
from .measure import (clean, host_master_bytes, memory_now, reset_peak, summarise, sync, time_calls,
                      weight_bytes)
from .modes import BenchMode

PRESETS = ("full", "tiny")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class BenchSettings:
    preset: str = "full"
    device: str = "cuda"
    batch_sizes: tuple[int, ...] = (1, 8)
    num_cameras: int = 2
    num_tokens: int | None = None  # None: the config's tokenizer_max_length (200 for pi0.5)
    valid_tokens: int = 48  # prompt tokens that are not padding
    steps: int = 10
    reps: int = 20
    budget_s: float = 1.5  # per measurement; slow modes stop after this (at least 3 calls)
    group: int = 64
    stats_scope: str = "batch"  # TTQ: one D per batch (the paper's X); "sample" is per batch slot
    awq_grid: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    awq_reservoir: int = 256
    seed: int = 0
    fuse: bool = True
    profile: bool = False  # profile one eager fast call of each mode at the first batch size
    extra: dict = field(default_factory=dict)

    def model_config(self) -> Pi05Config:
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {self.preset!r}")
        cfg = Pi05Config() if self.preset == "full" else tiny_config()
        cfg.num_inference_steps = self.steps
        return cfg


def make_inputs(cfg: Pi05Config, s: BenchSettings, batch: int, device: torch.device) -> tuple:
    """Random inputs of one call: cameras in [-1, 1], a prompt of ``valid_tokens`` then padding, noise."""
    g = torch.Generator(device="cpu").manual_seed(s.seed + batch)
    res = cfg.image_resolution
    length = s.num_tokens or cfg.tokenizer_max_length
    images = [(torch.rand(batch, 3, *res, generator=g) * 2 - 1).to(device) for _ in range(s.num_cameras)]
    masks = [torch.ones(batch, dtype=torch.bool, device=device) for _ in range(s.num_cameras)]
    tokens = torch.randint(0, cfg.language.vocab_size, (batch, length), generator=g).to(device)
    token_masks = torch.zeros(batch, length, dtype=torch.bool)
    token_masks[:, : min(s.valid_tokens, length)] = True
    noise = torch.randn(batch, cfg.chunk_size, cfg.max_action_dim, generator=g).to(device)
    return images, masks, tokens, token_masks.to(device), noise


@contextlib.contextmanager
def tf32(enabled: bool):
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _stage(mode: BenchMode) -> tuple:
    """Order inside a group: LM-only first, then the expert is quantized too, host-master last."""
    return (mode.scope == "backbone+expert", mode.host_master, mode.weights == "packed", mode.engine == "plain")


class Runner:
    def __init__(self, settings: BenchSettings, log: Callable[[str], None] = print):
        self.s, self.log = settings, log
        self.device = torch.device(settings.device)
        self.cfg = settings.model_config()
        self.length = settings.num_tokens or self.cfg.tokenizer_max_length

    # --- one group ---------------------------------------------------------------------------
    def run_group(self, modes: list[BenchMode], advance: Callable[[], None]) -> list[dict]:
        s, dev = self.s, self.device
        first = modes[0]
        rows: list[dict] = []
        clean(dev)
        t0 = time.perf_counter()
        root = build_random_model(self.cfg, DTYPES[first.dtype], dev, s.seed)
        sync(dev)
        prep = {"build_s": time.perf_counter() - t0}
        inputs = {b: make_inputs(self.cfg, s, b, dev) for b in s.batch_sizes}
        stats = None
        qcfg = None
        quantized_scope = None
        with tf32(first.tf32):
            if first.method == "awq":
                t0 = time.perf_counter()
                reservoir = s.awq_reservoir
                stats = calibrate(root, lambda: root.model.sample_actions(*inputs[s.batch_sizes[0]]),
                                  quant_filter(quantize_expert=True), reservoir=reservoir)
                sync(dev)
                prep["calibrate_s"] = time.perf_counter() - t0
            for mode in sorted(modes, key=_stage):
                if mode.method != "fp" and quantized_scope != mode.scope:
                    t0 = time.perf_counter()
                    if qcfg is None:
                        qcfg = QuantConfig(method=mode.method, bits=mode.bits, group=s.group, rank=mode.rank,
                                           recompute="call" if mode.method != "ttq" else mode.recompute,
                                           stats_scope=s.stats_scope, check_finite=False, alpha_grid=s.awq_grid)
                        quantize_(root, qcfg, quant_filter(quantize_expert=False), stats)
                    if mode.scope == "backbone+expert":
                        quantize_(root, qcfg, quant_filter(quantize_expert=True, quantize_language_model=False), stats)
                    sync(dev)
                    prep[f"quantize_{mode.scope}_s"] = time.perf_counter() - t0
                    quantized_scope = mode.scope
                if mode.method == "ttq":
                    qcfg.bits, qcfg.recompute = mode.bits, mode.recompute
                    if mode.host_master:
                        offload_ttq_masters(root)
                    reset_ttq(root)
                for b in s.batch_sizes:
                    row = {"mode": mode.name, **vars(mode), "batch": b, "prepare": dict(prep)}
                    try:
                        row.update(self.measure(root, mode, b, inputs[b]))
                    except Exception as e:  # one failing mode (e.g. out of memory) must not lose the others
                        row["error"] = f"{type(e).__name__}: {e}"
                        self.log(f"[red]{mode.name} B={b}: {row['error']}[/red]\n{traceback.format_exc(limit=3)}")
                    rows.append(row)
                    advance()
        del root, stats, inputs
        clean(dev)
        return rows

    def measure(self, root, mode: BenchMode, batch: int, inp: tuple) -> dict:
        s, dev = self.s, self.device
        model = root.model
        clean(dev)
        before = memory_now(dev)
        out: dict = {}
        sampler = None
        if mode.engine == "plain":
            call = lambda: model.sample_actions(*inp)  # noqa: E731
        else:
            sampler = FastSampler(model, batch, s.num_cameras, self.length, s.steps, weights=mode.weights,
                                  fuse=s.fuse, device=dev, compile=mode.compiled)
            call = lambda: sampler(*inp)  # noqa: E731
        if mode.method == "ttq" and mode.recompute == "episode":
            reset_ttq(root)
            reset_peak(dev)
            out["calibration_ms"] = time_calls(call, dev, reps=1, budget_s=0, min_reps=1)[0]
            out["calibration_peak_bytes"] = memory_now(dev).get("peak")
        t0 = time.perf_counter()
        call()  # warm-up (captures the CUDA graph)
        sync(dev)
        out["first_call_ms"] = (time.perf_counter() - t0) * 1e3
        call()
        reset_peak(dev)
        times = time_calls(call, dev, s.reps, s.budget_s)
        out.update(summarise(times))
        mem = memory_now(dev)
        extra = sampler.owned_tensors() if sampler is not None else []
        out.update({f"{k}_bytes": v for k, v in weight_bytes(root, extra, dev).items()})
        out["host_master_bytes"] = host_master_bytes(root)
        if mem:
            out["resident_bytes"] = mem["allocated"]
            out["peak_bytes"] = mem["peak"]
            out["allocated_before_bytes"] = before["allocated"]
        out["graph"] = bool(sampler is not None and sampler.graph is not None)
        if sampler is not None and sampler.graph is not None and mode.method == "fp":
            out.update(self.phases(sampler))
        if sampler is not None and sampler.graph is not None:
            if s.profile and batch == s.batch_sizes[0]:
                from .profile import profile_call
                try:
                    prof = profile_call(sampler._run, dev)
                except Exception as e:  # the profile is a diagnostic: never lose the row for it
                    prof = {"kernels": None, "kernel_time_ms": float("nan"), "table": f"profile failed: {e}"}
                self.log(f"profile of {mode.name} B={batch} (eager fast path): {prof['kernels']} kernels, "
                         f"{prof['kernel_time_ms']:.1f} ms of kernel time\n{prof['table']}")
                out["profile_kernels"], out["profile_kernel_time_ms"] = prof["kernels"], prof["kernel_time_ms"]
        if sampler is not None:  # the fast path must compute what the plain path computes
            fast = sampler(*inp).clone()
            ref = model.sample_actions(*inp)
            out["rel_err_vs_plain"] = float((fast - ref).float().norm() / ref.float().norm().clamp_min(1e-30))
        del sampler, call
        return out

    def phases(self, sampler: FastSampler) -> dict:
        """Where the time of one call goes: the vision tower alone, and the whole prefix (vision + LM),
        each captured as its own CUDA graph; the denoising steps take the rest."""
        out = {}
        for name, fn in (("vision_ms", lambda: sampler.model.embed_image(sampler.images)),
                         ("prefix_ms", sampler._prefix)):
            graph = torch.cuda.CUDAGraph()
            with torch.no_grad(), torch.cuda.graph(graph):
                fn()
            graph.replay()
            out[name] = summarise(time_calls(graph.replay, self.device, self.s.reps, self.s.budget_s))["ms_median"]
            del graph
        return out

    # --- all ---------------------------------------------------------------------------------
    def run(self, modes: list[BenchMode], progress=None,
            on_rows: Callable[[list[dict]], None] | None = None) -> list[dict]:
        """Every mode, one group (one prepared model) at a time; ``progress``: a rich Progress to
        advance; ``on_rows(rows)`` after each group (e.g. to save partial results)."""
        groups: dict[tuple, list[BenchMode]] = {}
        for m in modes:
            groups.setdefault(m.group, []).append(m)
        task = None if progress is None else progress.add_task("benchmark", total=len(modes) * len(self.s.batch_sizes))
        rows: list[dict] = []
        for g in groups.values():
            if task is not None:
                progress.update(task, description=g[0].name)
            group_rows = self.run_group(g, (lambda: None) if task is None else (lambda: progress.advance(task)))
            rows += group_rows
            if on_rows is not None:
                on_rows(group_rows)
        return rows
