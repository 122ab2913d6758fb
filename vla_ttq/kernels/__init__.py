"""Low-bit matmul backends behind one interface.

Kernels know the packed storage format (``vla_ttq.quant.packing``) but not the model, and take
the definitions of Q and D from ``vla_ttq.quant`` (the reference backend calls them): they compute ``y = (x / s) @ dequant(W_q)ᵀ + (x Aᵀ) Bᵀ + bias``, the online
``quantize_pack`` step, both at once for TTQ's per-call step (``online_matmul``), and the fused form
of the column scale s = D^½ that ``vla_ttq.quant.scaling`` defines (``column_scale``).
``reference`` is plain torch (CPU and GPU) and defines the semantics;
``triton`` (our kernels, ``layout.py`` / ``triton_kernels.py``), ``torch_int4`` and ``marlin`` are
the fast ones. See docs/kernels.md.
"""

from .dispatch import (available_backends, column_scale, online_matmul, prepare, quant_matmul, quantize_pack,
                       register_backend, select_backend)

__all__ = ["available_backends", "column_scale", "online_matmul", "prepare", "quant_matmul", "quantize_pack",
           "register_backend", "select_backend"]
