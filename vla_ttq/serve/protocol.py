"""What a request may contain, how it is validated, and what replies look like.

Requests (one msgpack map per binary WebSocket frame):

* an **observation** with exactly the keys of openpi's LIBERO client::

      {"observation/image": uint8 HxWx3, "observation/wrist_image": uint8 HxWx3,
       "observation/state": float (8,), "prompt": str}

  optionally with ``"reset": True`` to start a new episode for this client *before* inferring;
* a bare **reset** ``{"reset": True}`` (nothing else): starts a new episode and is answered with
  ``{"reset": True, "server_timing": {...}}``.

Replies: the policy output (``{"actions": float32 (chunk, 7), ...}``) plus ``"server_timing"``,
or an **error reply** ``{"error": "<what is wrong>", "error_type": "<kind>"}`` (see ``ERROR_TYPES``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .codec import DecodeError, unpackb

IMAGE_KEYS = ("observation/image", "observation/wrist_image")
STATE_KEY = "observation/state"
PROMPT_KEY = "prompt"
RESET_KEY = "reset"

ERROR_TYPES = {
    "bad_message": "the frame is not a binary msgpack map",
    "invalid_observation": "missing/unknown keys, wrong shapes, dtypes or values",
    "policy_error": "the policy rejected a well-formed observation",
    "shutting_down": "the server got SIGTERM and no longer starts new requests",
    "internal_error": "a bug in the server or policy; the traceback is in the server log",
}


@dataclass
class ObservationSpec:
    """Accepted observation layout (defaults: openpi's LIBERO example / our policy contract)."""

    image_keys: tuple[str, ...] = IMAGE_KEYS
    state_key: str = STATE_KEY
    prompt_key: str = PROMPT_KEY
    state_dim: int = 8
    max_image_side: int = 4096
    max_prompt_chars: int = 4096

    @property
    def required_keys(self) -> tuple[str, ...]:
        return (*self.image_keys, self.state_key, self.prompt_key)

    def describe(self) -> dict[str, Any]:
        """JSON-able description sent in the connect metadata so clients can check themselves."""
        return {
            **{k: {"dtype": "uint8", "shape": ["H", "W", 3]} for k in self.image_keys},
            self.state_key: {"dtype": "float32 (any float accepted)", "shape": [self.state_dim]},
            self.prompt_key: {"dtype": "str"},
            RESET_KEY: {"dtype": "bool", "optional": True},
        }


class RequestError(ValueError):
    """A request the server refuses; ``kind`` is one of :data:`ERROR_TYPES`."""

    def __init__(self, kind: str, message: str):
        assert kind in ERROR_TYPES, kind
        super().__init__(message)
        self.kind = kind

    def reply(self) -> dict[str, Any]:
        return error_reply(self.kind, str(self))


def error_reply(kind: str, message: str) -> dict[str, Any]:
    return {"error": message, "error_type": kind}


@dataclass
class Request:
    """A validated request: an observation to infer (or None for a bare reset) and the reset flag."""

    obs: dict[str, Any] | None
    reset: bool = False


def _bad(message: str) -> RequestError:
    return RequestError("invalid_observation", message)


def _check_image(key: str, value: Any, spec: ObservationSpec) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise _bad(f"'{key}' must be a numpy uint8 array of shape (H, W, 3), got {type(value).__name__}")
    if value.dtype != np.uint8:
        raise _bad(f"'{key}' must have dtype uint8, got {value.dtype}")
    if value.ndim != 3 or value.shape[2] != 3:
        raise _bad(f"'{key}' must have shape (H, W, 3), got {tuple(value.shape)}")
    h, w = value.shape[:2]
    if not (1 <= h <= spec.max_image_side and 1 <= w <= spec.max_image_side):
        raise _bad(f"'{key}' height and width must be in [1, {spec.max_image_side}], got {h}x{w}")
    return value


def _check_state(key: str, value: Any, spec: ObservationSpec) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise _bad(f"'{key}' must be a numpy float array of shape ({spec.state_dim},), got {type(value).__name__}")
    if value.dtype.kind != "f":
        raise _bad(f"'{key}' must have a float dtype, got {value.dtype}")
    if value.shape != (spec.state_dim,):
        raise _bad(f"'{key}' must have shape ({spec.state_dim},), got {tuple(value.shape)}")
    bad = np.flatnonzero(~np.isfinite(value))
    if bad.size:
        raise _bad(f"'{key}' contains NaN or inf at index {bad.tolist()}")
    with np.errstate(over="ignore"):
        state = value.astype(np.float32)
    if not np.isfinite(state).all():  # finite float64 can still overflow float32
        raise _bad(f"'{key}' has values outside the float32 range")
    return state


def _check_prompt(key: str, value: Any, spec: ObservationSpec) -> str:
    if not isinstance(value, str):
        raise _bad(f"'{key}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise _bad(f"'{key}' is empty")
    if len(value) > spec.max_prompt_chars:
        raise _bad(f"'{key}' is longer than {spec.max_prompt_chars} characters ({len(value)})")
    return value


def validate_request(msg: Any, spec: ObservationSpec) -> Request:
    """Turn a decoded message into a :class:`Request`, or raise :class:`RequestError`."""
    if not isinstance(msg, dict):
        raise RequestError("bad_message", f"request must be a msgpack map (dict), got {type(msg).__name__}")
    non_str = [k for k in msg if not isinstance(k, str)]
    if non_str:
        raise RequestError("bad_message", f"request keys must be strings, got {non_str[0]!r}")
    reset = msg.get(RESET_KEY, False)
    if not isinstance(reset, (bool, np.bool_)):
        raise _bad(f"'{RESET_KEY}' must be true or false, got {type(reset).__name__}")
    reset = bool(reset)
    present = set(msg) - {RESET_KEY}
    if reset and not present:
        return Request(obs=None, reset=True)
    required = spec.required_keys
    missing = [k for k in required if k not in msg]
    unknown = sorted(present - set(required))
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing key(s) {missing}")
        if unknown:
            parts.append(f"unknown key(s) {unknown}")
        raise _bad(f"{' and '.join(parts)}; an observation needs exactly {list(required)} "
                   f"(plus optional '{RESET_KEY}')")
    obs: dict[str, Any] = {k: _check_image(k, msg[k], spec) for k in spec.image_keys}
    obs[spec.state_key] = _check_state(spec.state_key, msg[spec.state_key], spec)
    obs[spec.prompt_key] = _check_prompt(spec.prompt_key, msg[spec.prompt_key], spec)
    return Request(obs=obs, reset=reset)


def parse_request(frame: bytes | str, spec: ObservationSpec) -> Request:
    """Decode one WebSocket frame and validate it."""
    if isinstance(frame, str):
        raise RequestError("bad_message", "expected a binary msgpack frame, got a text frame")
    try:
        msg = unpackb(frame)
    except DecodeError as e:
        raise RequestError("bad_message", str(e)) from e
    return validate_request(msg, spec)


def check_policy_output(out: Any, action_dim: int | None = None) -> dict[str, Any]:
    """Make sure what goes back on the wire is a dict with a finite float32 ``actions`` array."""
    if not isinstance(out, dict) or "actions" not in out:
        raise TypeError(f"policy.infer must return a dict with 'actions', got {type(out).__name__}")
    actions = np.asarray(out["actions"], dtype=np.float32)
    if actions.ndim != 2 or (action_dim is not None and actions.shape[1] != action_dim):
        raise TypeError(f"policy actions must have shape (chunk, {action_dim or 'dim'}), got {actions.shape}")
    if not np.isfinite(actions).all():
        raise RequestError("policy_error", "the policy produced non-finite actions for this observation")
    return {**out, "actions": actions}


__all__ = ["IMAGE_KEYS", "STATE_KEY", "PROMPT_KEY", "RESET_KEY", "ERROR_TYPES", "ObservationSpec",
           "RequestError", "Request", "error_reply", "validate_request", "parse_request", "check_policy_output"]
