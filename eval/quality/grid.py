"""Run the quality grid: full precision, then every (method, bits, group) cell on every domain.

The model is loaded once; each cell quantizes its linears in place with ``quantize_`` and puts
the original ``nn.Linear`` modules back afterwards (they are never modified), so no copy of the
1 GB model is made. AWQ's activation statistics are collected once per calibration domain and
reused by every (bits, group): they do not depend on either.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from vla_ttq.quant import calibrate, quantize_
from vla_ttq.quant.api import iter_targets

from .config import QualityConfig, row_label
from .model import body_linear_filter
from .perplexity import nll_sum, ppl_from_nll
from .texts import Windows, make_windows


@dataclass
class Result:
    method: str  # fp | rtn | awq | ttq
    label: str  # the table row
    rank: int
    calib: str | None
    bits: int | None
    group: int | None
    domain: str
    ppl: float
    nll: float
    tokens: int
    seconds: float  # quantize (shared by the cell's domains) + this domain's evaluation
    awq_alpha_mean: float | None = None


@contextlib.contextmanager
def original_linears_restored(model: torch.nn.Module, filter_fn):
    """Whatever replaces the selected linears inside the block is undone on exit."""
    originals = dict(iter_targets(model, filter_fn))
    try:
        yield
    finally:
        for name, module in originals.items():
            model.set_submodule(name, module)


def build_windows(cfg: QualityConfig, tokenizer) -> tuple[dict[str, Windows], dict[str, Windows]]:
    """(evaluation, calibration) windows per domain; calibration ones only when AWQ runs (nothing else uses them)."""
    calib_domains = cfg.calib_domains if "awq" in cfg.methods else ()
    evals, calibs = {}, {}
    for d in dict.fromkeys(cfg.eval_domains + calib_domains):
        ev, cal = make_windows(tokenizer, d, cfg.n_eval, cfg.n_calib if d in calib_domains else 0,
                               cfg.seq_len, cfg.seed)
        if d in cfg.eval_domains:
            evals[d] = ev
        if d in calib_domains:
            calibs[d] = cal
    return evals, calibs


def collect_awq_stats(model, cfg: QualityConfig, windows: Windows, on_window: Callable[[], None]):
    """Activation statistics of every body linear on the calibration windows (no LM head needed)."""
    body = model.base_model

    def run():
        for w in windows.ids:
            body(input_ids=w[None])
            on_window()

    return calibrate(model, run, body_linear_filter, p=cfg.quant.p, reservoir=cfg.reservoir)


def run_grid(model, tokenizer, cfg: QualityConfig, on_result: Callable[[Result], None] | None = None,
             progress: bool = True) -> list[Result]:
    cfg.validate()
    evals, calibs = build_windows(cfg, tokenizer)
    cells = cfg.bit_group_cells()
    rows = cfg.methods_of_cell()
    n_eval_windows = sum(w.ids.shape[0] for w in evals.values())
    total = n_eval_windows * (1 + len(cells) * len(rows)) + sum(c.ids.shape[0] for c in calibs.values())
    bar = tqdm(total=total, unit="window", desc="quality", disable=not progress, dynamic_ncols=True)
    results: list[Result] = []

    def emit(r: Result) -> None:
        results.append(r)
        if on_result:
            on_result(r)

    def evaluate(desc: str, row: dict, t_quant: float) -> None:
        """One Result per evaluation domain; ``row``: the fields shared by the domains."""
        for d, w in evals.items():
            bar.set_postfix_str(f"{desc} on {d}")
            t0 = time.perf_counter()
            nll, n = nll_sum(model, w.ids, on_batch=bar.update)
            emit(Result(**row, domain=d, ppl=ppl_from_nll(nll, n), nll=nll, tokens=n,
                        seconds=t_quant + time.perf_counter() - t0))

    evaluate("full precision", dict(method="fp", label="full precision", rank=0, calib=None, bits=None,
                                    group=None), 0.0)
    stats = {}
    for d, w in calibs.items():
        bar.set_postfix_str(f"AWQ calibration on {d}")
        stats[d] = collect_awq_stats(model, cfg, w, lambda: bar.update(1))
    for bits, group in cells:
        for method, rank, calib in rows:
            qcfg = cfg.quant_config(method, bits, group, rank)
            label = row_label(method, rank, calib)
            with original_linears_restored(model, body_linear_filter):
                bar.set_postfix_str(f"{label} {bits}-bit g{group}: quantizing")
                t0 = time.perf_counter()
                report = quantize_(model, qcfg, body_linear_filter, stats.get(calib))
                t_quant = time.perf_counter() - t0
                alpha = (sum(report.awq_alpha.values()) / len(report.awq_alpha)) if report.awq_alpha else None
                evaluate(f"{label} {bits}-bit g{group}", dict(method=method, label=label, rank=rank, calib=calib,
                                                             bits=bits, group=group, awq_alpha_mean=alpha), t_quant)
    bar.close()
    return results

