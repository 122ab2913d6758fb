"""Our pi0.5 against stored outputs of lerobot 0.6.1's own PI05Policy at tiny sizes (CPU, float32).

tests/data/tiny_reference.npz comes from scripts/make_tiny_reference.py, run with lerobot 0.6.1 on
the same tiny checkpoint (vla_ttq.models.tiny, seed 0): lerobot's preprocessor (normaliser, state
prompt, tokenizer), image preprocessing, prefix embedding, 10 flow steps from stored noise and
unnormaliser. If the tiny checkpoint maker changes, the digest test fails first: re-run the script.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vla_ttq.models import load_policy
from vla_ttq.models.loading import weights_digest

REF = np.load(Path(__file__).parent / "data" / "tiny_reference.npz")
CASES = sorted({k.split("_", 1)[0] for k in REF.files if k.endswith("_noise")})
# float32 on CPU; the reference script measured bit-equal results on its machine.
ATOL, RTOL = 2e-5, 1e-5


@pytest.fixture(scope="module")
def policy(tiny_dir):
    return load_policy(tiny_dir, dtype="float32")


def _observations(case: str) -> list[dict]:
    p = f"{case}_"
    out = []
    for i in range(REF[p + "state"].shape[0]):
        obs = {"observation/image": REF[p + "image"][i], "observation/state": REF[p + "state"][i],
               "prompt": str(REF[p + "prompt"][i])}
        if p + "wrist_image" in REF.files:
            obs["observation/wrist_image"] = REF[p + "wrist_image"][i]
        out.append(obs)
    return out


def test_reference_was_made_from_this_tiny_checkpoint(tiny_dir):
    assert weights_digest(tiny_dir / "model.safetensors") == str(REF["weights_sha256"]), \
        "tiny checkpoint changed: re-run scripts/make_tiny_reference.py where lerobot 0.6.1 is installed"


def test_cases_cover_both_cameras_and_a_missing_one():
    assert len(CASES) == 2
    assert any(f"{c}_wrist_image" not in REF.files for c in CASES)
    assert any(f"{c}_wrist_image" in REF.files for c in CASES)


@pytest.mark.parametrize("case", CASES)
def test_processing_matches_lerobot(policy, case):
    p = f"{case}_"
    inp = policy.prepare(_observations(case))
    assert inp["prompts"] == [str(s) for s in REF[p + "lerobot_prompts"]]
    np.testing.assert_array_equal(inp["tokens"].numpy(), REF[p + "tokens"])
    np.testing.assert_array_equal(inp["token_masks"].numpy(), REF[p + "token_masks"])
    np.testing.assert_array_equal(torch.stack(inp["image_masks"]).numpy(), REF[p + "image_masks"])
    np.testing.assert_allclose(torch.stack(inp["images"]).numpy(), REF[p + "images"], atol=1e-6, rtol=0)
    state = torch.as_tensor(REF[p + "state"])
    norm = policy.processor.normalizer("observation.state", state).numpy()
    np.testing.assert_allclose(norm, REF[p + "norm_state"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("case", CASES)
def test_prefix_embedding_and_actions_match_lerobot(policy, case):
    p = f"{case}_"
    obs = _observations(case)
    noise = torch.as_tensor(REF[p + "noise"])
    inp = policy.prepare(obs)
    embs, pad = policy.model.embed_prefix(inp["images"], inp["image_masks"], inp["tokens"], inp["token_masks"])
    np.testing.assert_array_equal(pad.numpy(), REF[p + "prefix_pad"])
    np.testing.assert_allclose(embs.numpy(), REF[p + "prefix_embs"], atol=ATOL, rtol=RTOL)
    raw = policy.model.sample_actions(inp["images"], inp["image_masks"], inp["tokens"], inp["token_masks"], noise)
    np.testing.assert_allclose(raw.numpy(), REF[p + "actions_raw"], atol=ATOL, rtol=RTOL)
    actions = policy.predict_chunk(obs, noise=noise)
    assert actions.shape == REF[p + "actions"].shape == (len(obs), policy.config.chunk_size, 7)
    np.testing.assert_allclose(actions, REF[p + "actions"], atol=ATOL, rtol=RTOL)


def test_tolerance_detects_a_one_percent_weight_change(tiny_dir):
    """The tolerance above is tight enough to see a 1 % change of one expert weight."""
    policy = load_policy(tiny_dir, dtype="float32")
    with torch.no_grad():
        policy.model.expert.layers[-1].mlp.down_proj.weight.mul_(1.01)
    case = CASES[0]
    actions = policy.predict_chunk(_observations(case), noise=torch.as_tensor(REF[f"{case}_noise"]))
    assert np.abs(actions - REF[f"{case}_actions"]).max() > 100 * ATOL
