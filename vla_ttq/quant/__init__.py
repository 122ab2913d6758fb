"""Quantization maths (pure torch, no model knowledge): RTN, AWQ and TTQ of the TTQ paper."""

from .api import QuantReport, calibrate, load_ttq_state, offload_ttq_masters, quantize_, reset_ttq, ttq_state
from .groupwise import GroupQuantized, dequantize_groupwise, qdq, quantize_groupwise
from .methods import (activation_aware_loss, awq_qdq, awq_search_alpha, lowrank_factors, rtn,
                      scaled_quantize, ttq_qdq)
from .modules import QuantLinear, TTQLinear
from .packing import PackedWeight, pack_codes, unpack_codes
from .scaling import channel_stat, column_scale
from .stats import ActivationStats, load_stats, save_stats

__all__ = [
    "ActivationStats", "GroupQuantized", "PackedWeight", "QuantLinear", "QuantReport", "TTQLinear",
    "activation_aware_loss", "awq_qdq", "awq_search_alpha", "calibrate", "channel_stat", "column_scale",
    "dequantize_groupwise", "load_stats", "load_ttq_state", "lowrank_factors", "offload_ttq_masters", "pack_codes", "qdq",
    "quantize_", "quantize_groupwise", "reset_ttq", "rtn", "save_stats", "scaled_quantize", "ttq_qdq",
    "ttq_state", "unpack_codes",
]
