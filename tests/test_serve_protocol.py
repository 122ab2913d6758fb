"""Codec and request validation of the policy server (no sockets)."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from contract_obs import make_obs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from openpi_client import msgpack_numpy as openpi_codec

from vla_ttq.serve import codec
from vla_ttq.serve.protocol import ObservationSpec, RequestError, check_policy_output, parse_request, validate_request

SPEC = ObservationSpec()
dtypes = st.sampled_from([np.bool_, np.int8, np.uint8, np.int16, np.int32, np.int64, np.uint32,
                          np.float16, np.float32, np.float64]).map(np.dtype)
arrays = dtypes.flatmap(lambda d: hnp.arrays(d, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)))


@settings(max_examples=60, deadline=None)
@given(arrays)
def test_codec_is_byte_compatible_with_openpi_client(arr):
    msg = {"x": arr, "nested": [arr, {"s": "txt"}]}
    assert codec.packb(msg) == openpi_codec.packb(msg)
    for decoded in (codec.unpackb(openpi_codec.packb(msg)), openpi_codec.unpackb(codec.packb(msg))):
        for got in (decoded["x"], decoded["nested"][0]):
            assert got.dtype == arr.dtype and got.shape == arr.shape
            np.testing.assert_array_equal(got, arr)


def test_codec_numpy_scalars_roundtrip():
    msg = {"a": np.float32(1.5), "b": np.int64(-3), "c": np.bool_(True)}
    out = codec.unpackb(openpi_codec.packb(msg))
    assert out == msg and type(out["a"]) is np.float32 and type(out["b"]) is np.int64


@pytest.mark.parametrize("header, match", [
    ({b"__ndarray__": True, b"data": b"1234", b"dtype": "|O", b"shape": [1]}, "not allowed"),
    ({b"__ndarray__": True, b"data": b"1234", b"dtype": "<U1", b"shape": [1]}, "not allowed"),
    ({b"__ndarray__": True, b"data": b"1234", b"dtype": "nonsense", b"shape": [1]}, "unknown numpy dtype"),
    ({b"__ndarray__": True, b"data": b"12", b"dtype": "<f4", b"shape": [1000, 1000]}, "needs 4000000 bytes"),
    ({b"__ndarray__": True, b"data": b"1234", b"dtype": "<f4", b"shape": [-1]}, "non-negative"),
    ({b"__ndarray__": True, b"data": "text", b"dtype": "<f4", b"shape": [1]}, "must be bytes"),
    ({b"__ndarray__": True, b"dtype": "<f4", b"shape": [1]}, "missing its 'data'"),
])
def test_codec_rejects_lying_array_headers(header, match):
    with pytest.raises(codec.DecodeError, match=match):
        codec.unpackb(msgpack.packb({"observation/state": header}))


def test_codec_refuses_to_send_object_arrays():
    with pytest.raises(TypeError, match="dtype"):
        codec.packb({"x": np.array([object()], dtype=object)})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=256))
def test_codec_random_bytes_decode_or_raise_decode_error(data):
    try:
        codec.unpackb(data)
    except codec.DecodeError:
        pass


def test_deeply_nested_message_is_a_decode_error():
    with pytest.raises(codec.DecodeError, match="nested too deeply"):
        codec.unpackb(b"\x91" * 100_000 + b"\xc0")


# ----------------------------------------------------------------------------- validation
def test_valid_observation_passes_and_state_becomes_float32():
    obs = make_obs(0)
    obs["observation/state"] = obs["observation/state"].astype(np.float64)  # what openpi's LIBERO client sends
    req = parse_request(codec.packb(obs), SPEC)
    assert req.reset is False and req.obs["prompt"] == obs["prompt"]
    assert req.obs["observation/state"].dtype == np.float32
    np.testing.assert_allclose(req.obs["observation/state"], obs["observation/state"], rtol=1e-6)


def test_reset_alone_and_inside_an_observation():
    assert validate_request({"reset": True}, SPEC).obs is None
    req = validate_request({**make_obs(0), "reset": True}, SPEC)
    assert req.reset and req.obs is not None
    with pytest.raises(RequestError, match="'reset' must be true or false"):
        validate_request({**make_obs(0), "reset": "yes"}, SPEC)
    with pytest.raises(RequestError, match="missing key"):
        validate_request({"reset": False}, SPEC)


def _mutated(key, value):
    obs = make_obs(0)
    obs[key] = value
    return obs


@pytest.mark.parametrize("msg, kind, match", [
    ([1, 2, 3], "bad_message", "must be a msgpack map"),
    ("hello", "bad_message", "must be a msgpack map"),
    ({b"raw": 1}, "bad_message", "keys must be strings"),
    ({k: v for k, v in make_obs(0).items() if k != "prompt"}, "invalid_observation", r"missing key\(s\) \['prompt'\]"),
    ({**make_obs(0), "observation/images": 1}, "invalid_observation", r"unknown key\(s\) \['observation/images'\]"),
    (_mutated("observation/image", np.zeros((32, 32, 3), np.float32)), "invalid_observation", "dtype uint8"),
    (_mutated("observation/image", np.zeros((3, 32, 32), np.uint8)), "invalid_observation", r"\(H, W, 3\), got \(3, 32, 32\)"),
    (_mutated("observation/wrist_image", np.zeros((32, 32), np.uint8)), "invalid_observation", "wrist_image"),
    (_mutated("observation/image", np.zeros((0, 32, 3), np.uint8)), "invalid_observation", "height and width"),
    (_mutated("observation/image", [[1, 2, 3]]), "invalid_observation", "numpy uint8 array"),
    (_mutated("observation/state", np.zeros(7, np.float32)), "invalid_observation", r"shape \(8,\), got \(7,\)"),
    (_mutated("observation/state", np.zeros(8, np.int64)), "invalid_observation", "float dtype"),
    (_mutated("observation/state", np.array([0, 1, np.nan, 0, 0, np.inf, 0, 0], np.float32)),
     "invalid_observation", r"NaN or inf at index \[2, 5\]"),
    (_mutated("observation/state", np.full(8, 1e300)), "invalid_observation", "float32 range"),
    (_mutated("prompt", 42), "invalid_observation", "'prompt' must be a string"),
    (_mutated("prompt", "   "), "invalid_observation", "'prompt' is empty"),
])
def test_bad_requests_get_an_error_naming_the_problem(msg, kind, match):
    with pytest.raises(RequestError, match=match) as err:
        validate_request(msg, SPEC)
    assert err.value.kind == kind
    reply = err.value.reply()
    assert reply["error_type"] == kind and isinstance(reply["error"], str)


def test_text_frames_and_garbage_are_bad_messages():
    for frame in ("a text frame", b"\xc1\xc1", b""):
        with pytest.raises(RequestError) as err:
            parse_request(frame, SPEC)
        assert err.value.kind == "bad_message"


values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=8)
    | st.binary(max_size=8) | arrays,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["observation/image", "observation/wrist_image", "observation/state", "prompt",
                         "reset", "x"]), children, max_size=6),
    max_leaves=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_any_decodable_message_is_accepted_or_refused_cleanly(msg):
    try:
        frame = codec.packb(msg)
    except (TypeError, ValueError, OverflowError):
        return  # not representable in msgpack at all
    try:
        req = parse_request(frame, SPEC)
    except RequestError as e:
        assert e.kind in ("bad_message", "invalid_observation") and str(e)
        return
    assert req.reset or req.obs is not None


def test_policy_output_check():
    out = check_policy_output({"actions": np.ones((10, 7), np.float64)}, 7)
    assert out["actions"].dtype == np.float32
    with pytest.raises(TypeError, match="shape"):
        check_policy_output({"actions": np.ones((10, 6))}, 7)
    with pytest.raises(RequestError, match="non-finite"):
        check_policy_output({"actions": np.full((10, 7), np.nan)}, 7)
