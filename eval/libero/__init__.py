"""LIBERO evaluation of (quantized) pi0.5: ``python -m eval.libero`` (see docs/libero.md)."""
