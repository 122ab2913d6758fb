"""Apply vla_ttq quantization to lerobot's own ``PI05Policy`` (lerobot >= 0.5, Python >= 3.12).

lerobot's pi0.5 has the same module names as ours (``model.paligemma_with_expert.paligemma.model.
language_model.layers.N.self_attn.q_proj`` ...), so the same selection applies: every linear of
the PaliGemma language model by default, the action expert's on request; the SigLIP tower, the
projector, the LM heads, the AdaRMS ``dense`` layers and the action/time projections never.

    from lerobot.policies.pi05.modeling_pi05 import PI05Policy
    from vla_ttq.adapters.lerobot import quantize_lerobot_policy
    policy = PI05Policy.from_pretrained("lerobot/pi05_libero_finetuned")
    report = quantize_lerobot_policy(policy, QuantConfig(method="ttq", bits=4, group=64))
    report.save("quant_report.json")

This module imports without lerobot; the functions that need it raise a clear ImportError.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Callable

import torch
import torch.nn as nn

from ..config import QuantConfig
from ..models.quantize import quant_filter
from ..quant.api import QuantReport, calibrate, iter_targets, quantize_, reset_ttq
from ..quant.stats import ActivationStats

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'lerobot[pi]==0.6.1' (needs Python >= 3.12)"
PI05_MODULE = "lerobot.policies.pi05.modeling_pi05"


def require_lerobot():
    """The ``lerobot`` package, or an ImportError saying what is missing and what to use instead."""
    if sys.version_info < (3, 12):
        raise ImportError(f"lerobot's pi0.5 (lerobot >= 0.5) needs Python >= 3.12, this is "
                          f"{sys.version.split()[0]}. Use vla_ttq.models.load_policy (same checkpoints, "
                          f"any Python >= 3.11), or on Python >= 3.12: {INSTALL_HINT}")
    try:
        import lerobot
    except ImportError as e:
        raise ImportError(f"lerobot is not installed: {INSTALL_HINT}") from e
    return lerobot


def _pi05_policy_class() -> type:
    require_lerobot()
    mod = sys.modules.get(PI05_MODULE) or importlib.import_module(PI05_MODULE)
    return mod.PI05Policy


def lerobot_quant_targets(policy: nn.Module, quantize_expert: bool = False) -> list[str]:
    """Names of the linears :func:`quantize_lerobot_policy` would replace (checked, never empty)."""
    keep = quant_filter(quantize_expert=quantize_expert)
    names = [n for n, _ in iter_targets(policy, keep)]
    if not names:
        raise ValueError(f"no PaliGemma language-model linear found in {type(policy).__name__}: expected lerobot's "
                         f"PI05Policy (modules 'model.paligemma_with_expert.paligemma.model.language_model.layers.N...')")
    return names


def quantize_lerobot_policy(policy: nn.Module, quant: QuantConfig, quantize_expert: bool = False,
                            calibration: dict[str, ActivationStats] | None = None,
                            check_type: bool = True) -> QuantReport:
    """Quantize lerobot's ``PI05Policy`` in place with :func:`vla_ttq.quant.quantize_`; returns the report
    (modules replaced, their weight bytes before/after), which is also logged.

    ``check_type=False`` skips the lerobot import and type check (for module trees that only share
    lerobot's names, e.g. in tests).
    """
    if check_type:
        cls = _pi05_policy_class()
        if not isinstance(policy, cls):
            raise TypeError(f"expected lerobot's PI05Policy, got {type(policy).__module__}.{type(policy).__name__}")
    targets = lerobot_quant_targets(policy, quantize_expert)
    dtypes = {n: policy.get_submodule(n).weight.dtype for n in targets}
    report = quantize_(policy, quant, quant_filter(quantize_expert=quantize_expert), calibration)
    for name in report.modules:
        module = policy.get_submodule(name)
        if not hasattr(module, "weight"):
            # lerobot reads ``layers[0].self_attn.q_proj.weight.dtype`` to pick the activation dtype;
            # a packed layer keeps an empty tensor of the original dtype to answer it (no memory).
            module.register_buffer("weight", torch.empty(0, dtype=dtypes[name], device=module.qdata.device),
                                   persistent=False)
    log.info("lerobot PI05Policy: %s", report.summary())
    return report


def calibrate_lerobot_policy(policy: nn.Module, run: Callable[[], None], quantize_expert: bool = False,
                             **kwargs) -> dict[str, ActivationStats]:
    """Activation statistics (for AWQ) of the layers :func:`quantize_lerobot_policy` would replace,
    while ``run()`` drives the full-precision policy (e.g. ``policy.select_action`` over episodes)."""
    return calibrate(policy, run, quant_filter(quantize_expert=quantize_expert), **kwargs)


def reset_lerobot_policy(policy: nn.Module) -> None:
    """New episode: lerobot's action queue and vla_ttq's per-episode TTQ calibration."""
    policy.reset()
    reset_ttq(policy)
