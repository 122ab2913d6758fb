"""lerobot's own pi0.5 (``PI05Pytorch.sample_actions``), timed in the same process for the ratio.

Random weights in lerobot's bfloat16 layout (vision, projector and norms in float32), the same
inputs as ours. Needs lerobot 0.6.1 importable (see docs/bench.md for the wheels on the GPU machine).
"""

from __future__ import annotations

import time

import torch

from .measure import clean, memory_now, reset_peak, summarise, sync, time_calls


def lerobot_available() -> str | None:
    """None when importable, else why not."""
    try:
        import lerobot  # noqa: F401
        from lerobot.policies.pi05.modeling_pi05 import PI05Pytorch  # noqa: F401
    except Exception as e:  # ImportError or a missing dependency of lerobot's
        return f"{type(e).__name__}: {e}"
    return None


def bench_lerobot(make_inputs, batch_sizes, steps: int, reps: int, budget_s: float, device: torch.device,
                  dtype: str = "bfloat16") -> list[dict]:
    import lerobot
    from lerobot.policies.pi05.configuration_pi05 import PI05Config
    from lerobot.policies.pi05.modeling_pi05 import PI05Pytorch

    clean(device)
    cfg = PI05Config(dtype=dtype, num_inference_steps=steps, device=str(device))
    t0 = time.perf_counter()
    with torch.device(device):
        model = PI05Pytorch(cfg).eval()
    sync(device)
    build_s = time.perf_counter() - t0
    weights = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers())
                  if t.device.type == device.type)
    rows = []
    for b in batch_sizes:
        images, masks, tokens, token_masks, noise = make_inputs(b)
        def call():
            return model.sample_actions(images, masks, tokens, token_masks, noise=noise, num_steps=steps)
        with torch.no_grad():
            call()
            reset_peak(device)
            times = time_calls(call, device, reps, budget_s)
        mem = memory_now(device)
        rows.append({"mode": f"lerobot {lerobot.__version__} {dtype}", "method": "lerobot", "dtype": dtype, "batch": b,
                     "engine": "lerobot", **summarise(times), "weights_bytes": weights,
                     "resident_bytes": mem.get("allocated"), "peak_bytes": mem.get("peak"),
                     "prepare": {"build_s": build_s}})
    del model
    clean(device)
    return rows
