"""LIBERO evaluation of (quantized) pi0.5: ``python -m eval.libero`` (see docs/libero.md)."""

from .protocol import configure_rendering

# robosuite/mujoco read MUJOCO_GL when first imported: pick the headless backend before that.
configure_rendering()  # runs on the first import of any eval.libero module, so the modules need not call it
