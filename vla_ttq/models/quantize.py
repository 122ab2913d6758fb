"""Which pi0.5 linears get quantized.

Default: every linear of the PaliGemma language model (q/k/v/o and gate/up/down of all layers).
The SigLIP tower, the projector, the token embedding / LM head, the action and time projections
and the AdaRMS ``dense`` layers stay in full precision; the action expert's attention and MLP
linears are added with ``quantize_expert=True``.
"""

from __future__ import annotations

import re

import torch.nn as nn

from ..quant.api import FilterFn

_BLOCK_LINEARS = r"layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
LANGUAGE_MODEL_LINEAR = re.compile(
    r"(^|\.)paligemma_with_expert\.paligemma\.model\.language_model\." + _BLOCK_LINEARS + r"$")
EXPERT_LINEAR = re.compile(r"(^|\.)paligemma_with_expert\.gemma_expert\.model\." + _BLOCK_LINEARS + r"$")


def quant_filter(quantize_expert: bool = False, quantize_language_model: bool = True) -> FilterFn:
    """A ``filter_fn(module, name)`` for :func:`vla_ttq.quant.quantize_` / ``calibrate``."""
    if not (quantize_expert or quantize_language_model):
        raise ValueError("quant_filter selects nothing: enable the language model and/or the expert")

    def keep(module: nn.Module, name: str) -> bool:
        if not isinstance(module, nn.Linear):
            return False
        return bool((quantize_language_model and LANGUAGE_MODEL_LINEAR.search(name))
                    or (quantize_expert and EXPERT_LINEAR.search(name)))

    return keep
