"""Quantizing the pi0.5 policy: which modules, the expert option, the record of modules and bytes."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest
import torch.nn as nn
from contract_obs import make_obs

from vla_ttq.config import QuantConfig
from vla_ttq.models import load_policy
from vla_ttq.quant.modules import QuantLinear, TTQLinear

LM = r"model\.paligemma_with_expert\.paligemma\.model\.language_model\.layers\.\d+\."
EXPERT = r"model\.paligemma_with_expert\.gemma_expert\.model\.layers\.\d+\."
BLOCK = r"(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)$"
RTN8 = QuantConfig(method="rtn", bits=8, group=64)
HW = (40, 48)  # not square: the resize pads


def _linears(policy) -> dict[str, nn.Module]:
    return {n: m for n, m in policy.root.named_modules() if isinstance(m, (nn.Linear, QuantLinear, TTQLinear))}


def test_default_is_exactly_the_seven_linears_of_every_language_model_layer(tiny_dir, caplog):
    policy = load_policy(tiny_dir)
    depth = policy.config.language.depth
    before = _linears(policy)
    fp_bytes = sum(m.weight.numel() * 4 for n, m in before.items() if re.match(LM + BLOCK, n))
    with caplog.at_level(logging.INFO, logger="vla_ttq.models.policy"):
        report = policy.quantize(RTN8)
    assert len(report.modules) == 7 * depth
    assert all(re.match(LM + BLOCK, n) for n in report.modules)
    after = _linears(policy)
    for name, m in after.items():
        assert isinstance(m, QuantLinear) == (name in report.modules), name
    # vision tower, projector, expert, AdaRMS, action/time projections are untouched
    assert any("vision_tower" in n for n in after) and any("gemma_expert" in n for n in after)
    assert report.bytes_before == fp_bytes
    assert 0 < report.bytes_after < fp_bytes / 3  # 8 bits + fp16 scale/zero per 64 vs 32 bits
    assert f"{7 * depth} linear layers quantized" in caplog.text
    meta = policy.metadata
    assert meta["quantized_modules"] == 7 * depth and meta["quantized_weight_bytes_after"] == report.bytes_after
    assert meta["quant"]["method"] == "rtn" and meta["quantize_expert"] is False
    assert policy.quantized_modules() == report.modules
    with pytest.raises(RuntimeError, match="already quantized"):
        policy.quantize(RTN8)


def test_fp_records_the_config_and_replaces_nothing(tiny_dir):
    policy = load_policy(tiny_dir, quant=QuantConfig(method="fp"))
    assert not any(isinstance(m, (QuantLinear, TTQLinear)) for m in _linears(policy).values())
    assert policy.metadata["quant"]["method"] == "fp" and policy.metadata["quantized_modules"] == 0
    assert policy.quant_report is None and policy.quantized_modules() == []
    assert len(policy.quantize(RTN8).modules) == 7 * policy.config.language.depth  # still full precision


def test_expert_option_adds_the_expert_blocks(tiny_dir):
    policy = load_policy(tiny_dir)
    report = policy.quantize(RTN8, quantize_expert=True)
    depth = policy.config.expert.depth
    assert len(report.modules) == 14 * depth
    assert sum(bool(re.match(EXPERT + BLOCK, n)) for n in report.modules) == 7 * depth
    names = set(_linears(policy))
    dense = [n for n in names if n.endswith("layernorm.dense")]
    assert dense and not any(n in report.modules for n in dense)


def test_report_is_saved_and_actions_stay_close(tiny_dir, tmp_path):
    fp = load_policy(tiny_dir)
    q = load_policy(tiny_dir, quant=RTN8)
    noise = fp.sample_noise(1)
    a, b = fp.predict_chunk([make_obs(0, side=HW)], noise=noise), q.predict_chunk([make_obs(0, side=HW)], noise=noise)
    assert np.isfinite(b).all()
    rel = np.linalg.norm(a - b) / np.linalg.norm(a)
    assert 0 < rel < 0.05
    q.quant_report.save(tmp_path / "quant.json")
    saved = json.loads((tmp_path / "quant.json").read_text())
    assert saved["num_modules"] == len(q.quant_report.modules) and saved["bytes_before"] > saved["bytes_after"]


def test_awq_needs_calibration_and_uses_collected_stats(tiny_dir):
    policy = load_policy(tiny_dir)
    with pytest.raises(ValueError, match="calibration"):
        load_policy(tiny_dir, quant=QuantConfig(method="awq", bits=4, group=64))
    stats = policy.collect_stats([make_obs(0, side=HW), make_obs(1, side=HW)], batch_size=2)
    assert len(stats) == 7 * policy.config.language.depth
    report = policy.quantize(QuantConfig(method="awq", bits=4, group=64, alpha_grid=(0.0, 0.5)), stats)
    assert set(report.awq_alpha) == set(report.modules)


def test_ttq_per_episode_recalibrates_after_reset(tiny_dir):
    policy = load_policy(tiny_dir, quant=QuantConfig(method="ttq", bits=4, group=64, recompute="episode"))
    ttq = [m for m in policy.root.modules() if isinstance(m, TTQLinear)]
    assert len(ttq) == 7 * policy.config.language.depth
    policy.infer(make_obs(0, side=HW))
    assert all(m._cache for m in ttq)
    policy.reset()
    assert not any(m._cache for m in ttq)
