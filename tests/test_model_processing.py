"""pi0.5 pre/post-processing: images, state bins in the prompt, (un)normalisation, local tokenizer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vla_ttq.models import load_policy
from vla_ttq.models.policy import resolve_tokenizer
from vla_ttq.models.processing import (Normalizer, PromptTokenizer, discretize_state, image_to_model_input,
                                       make_prompt, read_processor_files, resize_with_pad)
from vla_ttq.models.tiny import SPECIALS


# --- images -------------------------------------------------------------------------------------
def test_resize_with_pad_keeps_aspect_and_centres():
    img = torch.full((3, 48, 64), 0.5)
    out = resize_with_pad(img, 32, 32)
    assert out.shape == (3, 32, 32)
    # 64 wide -> 32, 48 high -> 24: 4 black rows above and below
    assert torch.all(out[:, :4] == 0) and torch.all(out[:, -4:] == 0)
    assert torch.allclose(out[:, 4:28], torch.tensor(0.5))


def test_resize_with_pad_square_input_has_no_padding():
    img = torch.rand(3, 256, 256)
    out = resize_with_pad(img, 224, 224)
    assert out.shape == (3, 224, 224)
    assert out[:, 0].abs().sum() > 0 and out[:, -1].abs().sum() > 0 and out[:, :, 0].abs().sum() > 0


def test_image_scaling_to_minus_one_one():
    img = np.zeros((32, 32, 3), np.uint8)
    img[..., 0] = 255
    out = image_to_model_input(img, (32, 32))
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert torch.all(out[0] == 1.0) and torch.all(out[1:] == -1.0)
    big = image_to_model_input(np.full((256, 256, 3), 128, np.uint8), (224, 224))
    assert big.shape == (3, 224, 224)
    assert torch.allclose(big, torch.tensor(128 / 255 * 2 - 1), atol=1e-6)
    assert torch.allclose(image_to_model_input(np.full((8, 8, 3), 0.25, np.float32), (8, 8)), torch.tensor(-0.5))


@pytest.mark.parametrize("bad,match", [(np.zeros((32, 32), np.uint8), "HxWx3"),
                                       (np.full((8, 8, 3), 2.0, np.float32), r"not in \[0, 1\]"),
                                       (np.zeros((8, 8, 3), np.int32), "uint8 or float")])
def test_bad_images_are_named(bad, match):
    with pytest.raises(ValueError, match=match):
        image_to_model_input(bad, (32, 32), name="observation/image")


# --- state prompt -------------------------------------------------------------------------------
def test_state_discretisation_into_256_bins():
    edges = np.linspace(-1, 1, 257)
    x = np.array([-1.0, -0.999, 0.0, 0.999, edges[1], edges[1] - 1e-6, -1.5, 1.5])
    assert discretize_state(x).tolist() == [0, 0, 128, 255, 1, 0, -1, 255]


def test_prompt_format():
    p = make_prompt(" pick_up the cup\n", np.array([-1.0, 0.0, 0.999]))
    assert p == "Task: pick up the cup, State: 0 128 255;\nAction: "


@pytest.mark.parametrize("mode,count", [("raw", 8), ("padded", 32)])
def test_state_prompt_variants(tiny_dir, mode, count):
    policy = load_policy(tiny_dir, state_prompt=mode)
    st = policy.processor.normalizer.stats["observation.state"]
    state = ((st["q01"] + st["q99"]) / 2).numpy()  # normalises to 0 -> bin 128
    obs = {"observation/image": np.zeros((32, 32, 3), np.uint8), "observation/state": state, "prompt": "open it"}
    prompt = policy.prepare([obs])["prompts"][0]
    bins = prompt.split("State: ")[1].split(";")[0].split()
    assert len(bins) == count and set(bins) == {"128"}
    assert policy.metadata["state_prompt"] == mode
    with pytest.raises(ValueError, match="state_prompt"):
        load_policy(tiny_dir, state_prompt="openpi")


# --- normalisation ------------------------------------------------------------------------------
def _normalizer(mode: str) -> Normalizer:
    stats = {"observation.state": {"mean": torch.tensor([1.0, -2.0]), "std": torch.tensor([2.0, 0.5]),
                                   "min": torch.tensor([0.0, -3.0]), "max": torch.tensor([4.0, -1.0]),
                                   "q01": torch.tensor([0.5, -2.5]), "q99": torch.tensor([3.5, -1.5])}}
    return Normalizer(stats, {"STATE": mode}, {"observation.state": "STATE"})


@pytest.mark.parametrize("mode,expected", [("MEAN_STD", [0.5, 2.0]), ("MIN_MAX", [0.0, 1.0]),
                                           ("QUANTILES", [0.0, 2.0]), ("IDENTITY", [2.0, -1.0])])
def test_normalisation_modes_and_inverse(mode, expected):
    n = _normalizer(mode)
    x = torch.tensor([2.0, -1.0])
    y = n("observation.state", x)
    assert torch.allclose(y, torch.tensor(expected), atol=1e-6)
    assert torch.allclose(n("observation.state", y, inverse=True), x, atol=1e-6)


def test_quantiles_map_q01_q99_to_minus_one_one():
    n = _normalizer("QUANTILES")
    st = n.stats["observation.state"]
    assert torch.allclose(n("observation.state", st["q01"]), torch.tensor(-1.0))
    assert torch.allclose(n("observation.state", st["q99"]), torch.tensor(1.0))


def test_missing_statistics_are_named():
    n = Normalizer({"observation.state": {"mean": torch.zeros(2)}}, {"STATE": "MEAN_STD"},
                   {"observation.state": "STATE"})
    with pytest.raises(ValueError, match=r"missing \['std'\]"):
        n("observation.state", torch.zeros(2))


def test_processor_files_of_the_checkpoint(tiny_dir):
    proc = read_processor_files(tiny_dir)
    assert proc.max_length == 96
    assert proc.normalizer.norm_map == {"VISUAL": "IDENTITY", "STATE": "QUANTILES", "ACTION": "QUANTILES"}
    assert set(proc.normalizer.stats) == {"observation.state", "action"}
    assert set(proc.unnormalizer.stats) == {"action"}
    # the postprocessor's statistics are what unnormalises the actions
    pre = json.loads((tiny_dir / "policy_postprocessor.json").read_text())
    assert pre["steps"][0]["registry_name"] == "unnormalizer_processor"


def test_actions_are_unnormalised_with_stored_stats(tiny_dir):
    policy = load_policy(tiny_dir)
    obs = [{"observation/image": np.zeros((32, 32, 3), np.uint8), "observation/state": np.zeros(8, np.float32),
            "prompt": "put the bowl on the plate"}]
    noise = policy.sample_noise(1)
    inp = policy.prepare(obs)
    raw = policy.model.sample_actions(inp["images"], inp["image_masks"], inp["tokens"], inp["token_masks"], noise)
    st = policy.processor.unnormalizer.stats["action"]
    expected = (raw[0, :, :7] + 1) * (st["q99"] - st["q01"]) / 2 + st["q01"]
    assert np.allclose(policy.predict_chunk(obs, noise=noise)[0], expected.numpy(), atol=1e-5)


# --- tokenizer ----------------------------------------------------------------------------------
def test_tokenizer_from_local_directory(tiny_dir, tmp_path):
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    (tok_dir / "tokenizer.json").write_bytes((tiny_dir / "tokenizer.json").read_bytes())
    path = resolve_tokenizer(tok_dir, tiny_dir, "google/paligemma-3b-pt-224")
    assert path == tok_dir / "tokenizer.json"
    tok = PromptTokenizer(path, max_length=24)
    ids, mask = tok(["Task: open the drawer, State: 1 2;\nAction: ", "x" * 100])
    assert ids.shape == mask.shape == (2, 24)
    assert ids[0, 0] == SPECIALS.index("<bos>") and ids[1, 0] == SPECIALS.index("<bos>")
    n = int(mask[0].sum())
    assert 5 < n < 24 and torch.all(ids[0, n:] == SPECIALS.index("<pad>")) and not mask[0, n:].any()
    assert mask[1].all()  # truncated to max_length, as lerobot does
    policy = load_policy(tiny_dir, tokenizer=tok_dir)
    assert policy.tokenizer.path == str(tok_dir / "tokenizer.json")


def test_missing_local_tokenizer_is_named(tiny_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        resolve_tokenizer(tmp_path / "empty", tiny_dir, "google/paligemma-3b-pt-224")
