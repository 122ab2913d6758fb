"""LIBERO evaluation of (quantized) pi0.5: ``python -m eval.libero`` (see docs/libero.md)."""

from .protocol import configure_rendering

# robosuite/mujoco read MUJOCO_GL when first imported: pick the headless backend before that.
configure_rendering()
