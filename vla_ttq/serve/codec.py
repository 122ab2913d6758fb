"""msgpack with numpy arrays, byte-compatible with ``openpi_client.msgpack_numpy``.

Wire format (openpi's): an ndarray travels as a map with *bin-type* keys
``{b"__ndarray__": True, b"data": raw bytes, b"dtype": dtype.str, b"shape": [...]}`` and a numpy
scalar as ``{b"__npgeneric__": True, b"data": item, b"dtype": dtype.str}``.

Decoding is strict because the bytes come from the network: only bool/int/uint/float dtypes are
accepted and the buffer must hold exactly ``prod(shape) * itemsize`` bytes, so a lying header gives
a :class:`DecodeError` instead of a crash or an object array.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

ALLOWED_KINDS = "biuf"  # bool, signed int, unsigned int, float
MAX_NDIM = 32


class DecodeError(ValueError):
    """The bytes are not a msgpack message we can turn into Python/numpy values."""


def _encode_numpy(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind not in ALLOWED_KINDS:
        raise TypeError(f"cannot send numpy dtype {obj.dtype} (only bool/int/uint/float)")
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": np.ascontiguousarray(obj).tobytes(),
                b"dtype": obj.dtype.str, b"shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot encode {type(obj).__name__} as msgpack")


def _field(obj: dict, name: str) -> Any:
    # openpi sends bin keys; accept str keys too so non-Python clients can use text keys.
    if name.encode() in obj:
        return obj[name.encode()]
    if name in obj:
        return obj[name]
    raise DecodeError(f"numpy map is missing its '{name}' field")


def _dtype(obj: dict) -> np.dtype:
    spec = _field(obj, "dtype")
    if isinstance(spec, bytes):
        spec = spec.decode("ascii", "replace")
    if not isinstance(spec, str):
        raise DecodeError(f"numpy dtype must be a string such as '<f4', got {type(spec).__name__}")
    try:
        dtype = np.dtype(spec)
    except (TypeError, ValueError) as e:
        raise DecodeError(f"unknown numpy dtype {spec!r}") from e
    if dtype.kind not in ALLOWED_KINDS:
        raise DecodeError(f"numpy dtype {spec!r} is not allowed (only bool/int/uint/float)")
    return dtype


def _decode_numpy(obj: dict) -> Any:
    is_array = b"__ndarray__" in obj or "__ndarray__" in obj
    is_scalar = b"__npgeneric__" in obj or "__npgeneric__" in obj
    if not (is_array or is_scalar):
        return obj
    dtype = _dtype(obj)
    data = _field(obj, "data")
    if is_scalar:
        try:
            return dtype.type(data)
        except (TypeError, ValueError, OverflowError) as e:
            raise DecodeError(f"numpy scalar {data!r} does not fit dtype {dtype}") from e
    shape = _field(obj, "shape")
    if not isinstance(shape, (list, tuple)) or len(shape) > MAX_NDIM or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise DecodeError(f"numpy shape must be a list of at most {MAX_NDIM} non-negative ints, got {shape!r}")
    if not isinstance(data, bytes):
        raise DecodeError(f"numpy data must be bytes, got {type(data).__name__}")
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise DecodeError(f"numpy array of shape {tuple(shape)} and dtype {dtype} needs {expected} bytes, "
                          f"got {len(data)}")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def packb(obj: Any) -> bytes:
    """Serialise ``obj`` (dicts, lists, str, numbers, numpy arrays/scalars) to msgpack bytes."""
    return msgpack.packb(obj, default=_encode_numpy, use_bin_type=True)


def unpackb(data: bytes) -> Any:
    """Parse msgpack bytes; raises :class:`DecodeError` for anything malformed."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    try:
        return msgpack.unpackb(data, object_hook=_decode_numpy, raw=False)
    except DecodeError:
        raise
    except msgpack.StackError as e:
        raise DecodeError("msgpack message is nested too deeply") from e
    except (ValueError, TypeError, msgpack.UnpackException, UnicodeDecodeError) as e:
        # ExtraData, FormatError, truncated input, invalid utf-8, unhashable keys, ...
        detail = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        raise DecodeError(f"not a valid msgpack message ({detail})") from e


__all__ = ["DecodeError", "packb", "unpackb", "ALLOWED_KINDS"]
