"""Perplexity of a causal LM over fixed token windows: exp(mean NLL of every predicted token)."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F


@torch.inference_mode()
def nll_sum(model, ids: torch.Tensor, batch: int = 1, on_batch: Callable[[int], None] | None = None) -> tuple[float, int]:
    """(sum of next-token negative log-likelihoods, number of predicted tokens) over ``ids`` (n, L).

    Each window is one forward call, so TTQ's test-time statistics D come from that window only.
    """
    if ids.dim() != 2 or ids.shape[1] < 2:
        raise ValueError(f"ids must be (n, L) with L >= 2, got shape {tuple(ids.shape)}")
    total, count = 0.0, 0
    for start in range(0, ids.shape[0], batch):
        x = ids[start:start + batch]
        logits = model(input_ids=x).logits
        nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), x[:, 1:].flatten(), reduction="sum")
        total += float(nll)
        count += x[:, 1:].numel()
        if on_batch:
            on_batch(x.shape[0])
    return total, count


def ppl_from_nll(total: float, count: int) -> float:
    """exp(mean NLL); inf where that overflows (a collapsed 2-bit model can get there)."""
    if count <= 0:
        raise ValueError(f"no predicted tokens (count={count})")
    mean = total / count
    return math.exp(mean) if mean < 700 else float("inf")


def perplexity(model, ids: torch.Tensor, batch: int = 1, on_batch: Callable[[int], None] | None = None) -> float:
    return ppl_from_nll(*nll_sum(model, ids, batch, on_batch))
