"""vla_ttq.adapters.lerobot: module selection on lerobot's names (CPU, no lerobot needed), and on
lerobot's real PI05Policy at tiny sizes where lerobot 0.6.1 is installed (Python >= 3.12)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from vla_ttq.adapters.lerobot import (calibrate_lerobot_policy, lerobot_quant_targets, quantize_lerobot_policy,
                                      require_lerobot, reset_lerobot_policy)
from vla_ttq.config import QuantConfig
from vla_ttq.quant.modules import QuantLinear, TTQLinear

LAYERS = 2
PWE = "model.paligemma_with_expert"
LM = f"{PWE}.paligemma.model.language_model.layers.{{i}}"
EXPERT = f"{PWE}.gemma_expert.model.layers.{{i}}"
BLOCK = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
         "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
# Every other linear lerobot 0.6.1's PI05Policy has (transformers' module names).
NEVER = ([f"{PWE}.paligemma.model.vision_tower.vision_model.encoder.layers.{i}.{m}" for i in range(LAYERS)
          for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                    "mlp.fc1", "mlp.fc2")]
         + [f"{PWE}.paligemma.model.multi_modal_projector.linear", f"{PWE}.paligemma.lm_head",
            f"{PWE}.gemma_expert.lm_head", f"{PWE}.gemma_expert.model.norm.dense",
            "model.action_in_proj", "model.action_out_proj", "model.time_mlp_in", "model.time_mlp_out"]
         + [f"{EXPERT.format(i=i)}.{n}.dense" for i in range(LAYERS) for n in ("input_layernorm",
                                                                                  "post_attention_layernorm")])


def lerobot_like_tree(width: int = 64) -> nn.Module:
    """A module tree whose linears carry lerobot's PI05Policy names (small square layers)."""
    root = nn.Module()
    names = [f"{p.format(i=i)}.{b}" for p in (LM, EXPERT) for i in range(LAYERS) for b in BLOCK] + NEVER
    g = torch.Generator().manual_seed(0)
    for name in names:
        parent = root
        for part in name.split(".")[:-1]:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        lin = nn.Linear(width, width, bias=False)
        lin.weight.data = torch.randn(width, width, generator=g)
        parent.add_module(name.split(".")[-1], lin)
    return root


def lm_names() -> list[str]:
    return [f"{LM.format(i=i)}.{b}" for i in range(LAYERS) for b in BLOCK]


def expert_names() -> list[str]:
    return [f"{EXPERT.format(i=i)}.{b}" for i in range(LAYERS) for b in BLOCK]


def test_default_targets_are_exactly_the_language_model_linears():
    tree = lerobot_like_tree()
    assert sorted(lerobot_quant_targets(tree)) == sorted(lm_names())
    assert sorted(lerobot_quant_targets(tree, quantize_expert=True)) == sorted(lm_names() + expert_names())


def test_quantize_replaces_only_targets_and_records_bytes(tmp_path):
    tree = lerobot_like_tree()
    x = torch.randn(3, 64)
    before = {n: tree.get_submodule(n)(x) for n in lm_names()}
    report = quantize_lerobot_policy(tree, QuantConfig(method="rtn", bits=8, group=64), check_type=False)
    assert sorted(report.modules) == sorted(lm_names())
    for n in lm_names():
        m = tree.get_submodule(n)
        assert isinstance(m, QuantLinear)
        # lerobot reads q_proj.weight.dtype: an empty tensor answers it
        assert m.weight.dtype == torch.float32 and m.weight.numel() == 0
        assert "weight" not in m.state_dict()
        y = m(x)
        assert torch.linalg.norm(y - before[n]) / torch.linalg.norm(before[n]) < 0.02
    for n in NEVER + expert_names():
        assert type(tree.get_submodule(n)) is nn.Linear, n
    assert report.bytes_before == len(lm_names()) * 64 * 64 * 4
    assert 0 < report.bytes_after < report.bytes_before / 3
    report.save(tmp_path / "r.json")
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["modules"] == report.modules and saved["bytes_after"] == report.bytes_after


def test_expert_option_and_ttq():
    tree = lerobot_like_tree()
    report = quantize_lerobot_policy(tree, QuantConfig(method="ttq", bits=4, group=64), quantize_expert=True,
                                     check_type=False)
    assert len(report.modules) == 2 * 7 * LAYERS
    assert all(isinstance(tree.get_submodule(n), TTQLinear) for n in expert_names())


def test_awq_calibration_on_the_same_layers():
    tree = lerobot_like_tree()
    x = torch.randn(16, 64)

    def run():
        for name, m in tree.named_modules():
            if isinstance(m, nn.Linear):
                m(x)

    stats = calibrate_lerobot_policy(tree, run)
    assert sorted(stats) == sorted(lm_names())
    report = quantize_lerobot_policy(tree, QuantConfig(method="awq", bits=4, group=64, alpha_grid=(0.0, 0.5)),
                                     calibration=stats, check_type=False)
    assert set(report.awq_alpha) == set(lm_names())


def test_tree_without_paligemma_is_refused():
    tree = nn.Sequential(nn.Linear(64, 64))
    with pytest.raises(ValueError, match="PaliGemma language-model linear"):
        lerobot_quant_targets(tree)


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="checks the message on Python < 3.12")
def test_clear_error_without_lerobot():
    with pytest.raises(ImportError, match=r"Python >= 3.12.*load_policy"):
        require_lerobot()
    with pytest.raises(ImportError, match="Python >= 3.12"):
        quantize_lerobot_policy(lerobot_like_tree(), QuantConfig(method="rtn", bits=8, group=64))


# --- lerobot's real PI05Policy (tiny sizes, our tiny checkpoint's weights) ---------------------
@pytest.fixture(scope="module")
def lerobot_tiny(tiny_dir):
    pytest.importorskip("lerobot")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from lerobot_bridge import build_lerobot_policy, lerobot_processors, make_observations
    from safetensors.torch import load_file

    from vla_ttq.models import load_policy

    d = tiny_dir
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = load_policy(d).config
    state = load_file(str(d / "model.safetensors"))

    def build():
        return build_lerobot_policy(cfg, state, dev, "float32", full_size=False)[0]

    pre, _ = lerobot_processors(d, d, dev)
    obs = make_observations(2, 48, 64, seed=3, tasks=["pick up the ketchup and place it in the basket"])
    from lerobot_bridge import lerobot_batch

    batch = pre(lerobot_batch(obs))
    noise = torch.randn(2, cfg.chunk_size, cfg.max_action_dim, generator=torch.Generator().manual_seed(0)).to(dev)
    return build, batch, noise


@pytest.mark.parametrize("method,expert", [("rtn", False), ("rtn", True), ("ttq", False)])
def test_real_lerobot_policy_quantized(lerobot_tiny, method, expert):
    build, batch, noise = lerobot_tiny
    policy = build()
    ref = policy.predict_action_chunk(batch, noise=noise)
    report = quantize_lerobot_policy(policy, QuantConfig(method=method, bits=8, group=64), quantize_expert=expert)
    print(report.summary())
    print("\n".join(report.modules))
    assert len(report.modules) == 7 * 2 * (2 if expert else 1)
    assert type(policy.model.paligemma_with_expert.paligemma.lm_head) is nn.Linear
    assert type(policy.model.paligemma_with_expert.paligemma.model.multi_modal_projector.linear) is nn.Linear
    out = policy.predict_action_chunk(batch, noise=noise)
    assert torch.isfinite(out).all()
    rel = float(torch.linalg.norm(out - ref) / torch.linalg.norm(ref))
    print(f"{method} 8-bit expert={expert}: actions rel-L2 vs float32 {rel:.2e}")
    assert 0 < rel < 0.05
    reset_lerobot_policy(policy)
