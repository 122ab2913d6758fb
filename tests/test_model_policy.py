"""The pi0.5 policy end to end on the tiny checkpoint: action chunk, n_action_steps, batch, reset, errors."""

from __future__ import annotations

import numpy as np
import pytest
from contract_obs import make_obs

from vla_ttq.models import load_policy

SIDE = 256  # LIBERO's camera images, resized to the tiny model's 32 x 32


@pytest.fixture(scope="module")
def policy(tiny_dir):
    return load_policy(tiny_dir)


def test_infer_returns_n_action_steps_of_the_chunk(policy):
    out = policy.infer(make_obs(0, side=SIDE))
    assert set(out) == {"actions"}
    assert out["actions"].shape == (policy.config.n_action_steps, 7) == (10, 7)
    assert out["actions"].dtype == np.float32 and np.isfinite(out["actions"]).all()
    chunk = policy.predict_chunk([make_obs(0, side=SIDE)], noise=policy.sample_noise(1))
    assert chunk.shape == (1, policy.config.chunk_size, 7)


def test_n_action_steps_option(tiny_dir):
    p = load_policy(tiny_dir, n_action_steps=4, num_inference_steps=2)
    assert p.infer(make_obs(1, side=SIDE))["actions"].shape == (4, 7)
    assert p.metadata["n_action_steps"] == 4 and p.metadata["num_inference_steps"] == 2
    for bad in (0, 51):
        with pytest.raises(ValueError, match="n_action_steps"):
            load_policy(tiny_dir, n_action_steps=bad)


def test_batch_equals_single_calls_with_the_same_noise(policy):
    noise = policy.sample_noise(2)
    both = policy.infer_batch([make_obs(2, side=SIDE), make_obs(3, side=SIDE)], noise=noise)
    one = policy.infer_batch([make_obs(3, side=SIDE)], noise=noise[1:])
    assert len(both) == 2
    np.testing.assert_allclose(both[1]["actions"], one[0]["actions"], atol=1e-4)
    assert not np.allclose(both[0]["actions"], both[1]["actions"])


def test_same_seed_same_actions_and_reset_keeps_working(tiny_dir):
    a, b = load_policy(tiny_dir, seed=5), load_policy(tiny_dir, seed=5)
    first = a.infer(make_obs(4, side=SIDE))["actions"]
    np.testing.assert_array_equal(first, b.infer(make_obs(4, side=SIDE))["actions"])
    a.reset()
    a.reset(env_index=0)
    second = a.infer(make_obs(4, side=SIDE))["actions"]  # fresh noise: a different sample of the same policy
    assert second.shape == first.shape and not np.array_equal(first, second)


def test_missing_wrist_camera_is_an_empty_camera(policy):
    inp = policy.prepare([make_obs(5, side=SIDE, wrist=False)])
    assert [bool(m[0]) for m in inp["image_masks"]] == [True, False]
    assert float(inp["images"][1].max()) == -1.0
    assert policy.infer(make_obs(5, side=SIDE, wrist=False))["actions"].shape == (10, 7)


@pytest.mark.parametrize("edit,match", [
    (lambda o: o.pop("observation/state"), "observation/state"),
    (lambda o: o.pop("prompt"), "prompt"),
    (lambda o: o.__setitem__("prompt", 3), "must be a string"),
    (lambda o: [o.pop("observation/image"), o.pop("observation/wrist_image")], "no camera image"),
])
def test_bad_observations_are_named(policy, edit, match):
    obs = make_obs(6, side=SIDE)
    edit(obs)
    with pytest.raises(ValueError, match=match):
        policy.infer(obs)


def test_camera_present_in_part_of_a_batch_is_refused(policy):
    with pytest.raises(ValueError, match="some observations"):
        policy.infer_batch([make_obs(7, side=SIDE), make_obs(8, side=SIDE, wrist=False)])
