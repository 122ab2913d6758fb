"""Loading: tiny round trip, strict key checks, and the full-size key layout of lerobot's pi0.5."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vla_ttq.models import CheckpointMismatchError, Pi05Config, build_model, expected_shapes, load_policy
from vla_ttq.models.loading import EMBED, LM_HEAD, unused_checkpoint_shapes
from vla_ttq.models.tiny import make_tiny_checkpoint, tiny_config

DATA = Path(__file__).parent / "data"


def test_tiny_round_trip_exact(tiny_dir):
    stored = load_file(str(tiny_dir / "model.safetensors"))
    root = build_model(Pi05Config.from_file(tiny_dir / "config.json"), tiny_dir / "model.safetensors")
    state = root.state_dict()
    assert set(state) == set(stored) - set(unused_checkpoint_shapes(tiny_config()))
    for k, v in state.items():
        assert torch.equal(v, stored[k]), k
    assert not any(p.requires_grad for p in root.parameters())


def test_tiny_checkpoint_is_deterministic(tmp_path, tiny_dir):
    other = make_tiny_checkpoint(tmp_path / "again", seed=0)
    a, b = load_file(str(tiny_dir / "model.safetensors")), load_file(str(other / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tiny_dir / "tokenizer.json").read_text() == (other / "tokenizer.json").read_text()
    c = load_file(str(make_tiny_checkpoint(tmp_path / "seed1", seed=1) / "model.safetensors"))
    assert not torch.equal(a[EMBED], c[EMBED])


def _rewrite(tiny_dir: Path, tmp_path: Path, edit) -> Path:
    out = tmp_path / "edited"
    out.mkdir()
    for f in tiny_dir.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    state = load_file(str(tiny_dir / "model.safetensors"))
    edit(state)
    save_file(state, str(out / "model.safetensors"))
    return out


LAYER0_Q = "model.paligemma_with_expert.paligemma.model.language_model.layers.0.self_attn.q_proj.weight"


def test_missing_key_is_named(tiny_dir, tmp_path):
    d = _rewrite(tiny_dir, tmp_path, lambda s: s.pop(LAYER0_Q))
    with pytest.raises(CheckpointMismatchError, match=r"1 missing key.*layers\.0\.self_attn\.q_proj\.weight"):
        load_policy(d)


def test_unexpected_key_is_named(tiny_dir, tmp_path):
    d = _rewrite(tiny_dir, tmp_path, lambda s: s.__setitem__("model.some_new_head.weight", torch.zeros(3)))
    with pytest.raises(CheckpointMismatchError, match=r"unexpected key.*model\.some_new_head\.weight"):
        load_policy(d)


def test_misshaped_key_is_named(tiny_dir, tmp_path):
    def edit(s):
        s[LAYER0_Q] = s[LAYER0_Q][:-1].contiguous()
    d = _rewrite(tiny_dir, tmp_path, edit)
    with pytest.raises(CheckpointMismatchError, match=r"shape mismatch.*q_proj\.weight: checkpoint \(63, 128\)"):
        load_policy(d)


def test_lm_head_shape_is_checked_too(tiny_dir, tmp_path):
    def edit(s):
        s[LM_HEAD] = s[LM_HEAD][:, :5].contiguous()
    with pytest.raises(CheckpointMismatchError, match="lm_head"):
        load_policy(_rewrite(tiny_dir, tmp_path, edit))


def test_legacy_key_variants_load(tiny_dir, tmp_path):
    """Keys without the 'model.' prefix and openpi's action_time_mlp_* names load like lerobot's fix-ups."""
    def edit(s):
        for k in list(s):
            v = s.pop(k)
            k = k.removeprefix("model.").replace("time_mlp_in", "action_time_mlp_in")
            s[k] = v
    policy = load_policy(_rewrite(tiny_dir, tmp_path, edit))
    ref = load_file(str(tiny_dir / "model.safetensors"))
    assert torch.equal(policy.model.time_mlp_in.weight, ref["model.time_mlp_in.weight"])


def test_tied_embedding_stored_as_lm_head(tmp_path):
    d = make_tiny_checkpoint(tmp_path / "tied", tie_embedding=True)
    stored = load_file(str(d / "model.safetensors"))
    assert EMBED not in stored
    policy = load_policy(d)
    assert torch.equal(policy.model.language_model.embed_tokens.weight, stored[LM_HEAD])


def test_full_size_layout_matches_lerobot(tmp_path):
    """Keys and shapes of the full-size model (built on meta) equal the layout read from lerobot's source."""
    layout = json.loads((DATA / "pi05_lerobot_layout.json").read_text())
    want = {k: tuple(v) for k, v in layout["global"].items()}
    for part, spec in layout["per_layer"].items():
        for i in range(layout["layers"][part]):
            for k, shape in spec["keys"].items():
                want[spec["prefix"].format(i=i) + k] = tuple(shape)
    cfg = Pi05Config.from_lerobot_json({"type": "pi05", "paligemma_variant": "gemma_2b",
                                        "action_expert_variant": "gemma_300m"})
    have = expected_shapes(cfg)
    assert sorted(set(have) - set(want)) == []
    assert sorted(set(want) - set(have)) == []
    assert {k: v for k, v in have.items() if want[k] != v} == {}
    assert unused_checkpoint_shapes(cfg) == {k: tuple(v) for k, v in layout["stored_but_unused"].items()}
    vision = sum(torch.Size(s).numel() for k, s in have.items() if ".vision_tower." in k)
    assert vision == layout["param_counts_from_notes"]["vision_tower"]


def test_real_config_json_fields(tmp_path):
    """A lerobot-style config.json (no explicit sizes) resolves to the variant sizes and its features."""
    data = {"type": "pi05", "paligemma_variant": "gemma_2b", "action_expert_variant": "gemma_300m",
            "dtype": "bfloat16", "n_action_steps": 10, "chunk_size": 50, "empty_cameras": 1,
            "input_features": {"observation.images.image": {"type": "VISUAL", "shape": [3, 256, 256]},
                               "observation.images.image2": {"type": "VISUAL", "shape": [3, 256, 256]},
                               "observation.state": {"type": "STATE", "shape": [8]}},
            "output_features": {"action": {"type": "ACTION", "shape": [7]}},
            "optimizer_lr": 2.5e-5, "push_to_hub": True}
    cfg = Pi05Config.from_lerobot_json(data)
    assert cfg.language.width == 2048 and cfg.expert.mlp_dim == 4096 and cfg.vision.depth == 27
    assert cfg.image_keys == ["observation.images.image", "observation.images.image2",
                              "observation.images.empty_camera_0"]
    assert cfg.action_dim == 7 and cfg.dtype == "bfloat16"
    with pytest.raises(ValueError, match="gemma_9b"):
        Pi05Config.from_lerobot_json({**data, "paligemma_variant": "gemma_9b"})
    with pytest.raises(ValueError, match="not 'pi05'"):
        Pi05Config.from_lerobot_json({**data, "type": "pi0"})


def test_bad_paths_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found"):
        load_policy(tmp_path / "nope")
    with pytest.raises(RuntimeError, match="pass the local directory"):
        load_policy("someone/not-a-real-repo-xyz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_policy(tmp_path / "empty")


def test_missing_processor_files(tiny_dir, tmp_path):
    d = _rewrite(tiny_dir, tmp_path, lambda s: None)
    (d / "policy_postprocessor.json").unlink()
    with pytest.raises(FileNotFoundError, match="policy_postprocessor.json"):
        load_policy(d)
