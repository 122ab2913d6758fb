"""Where the GPU time of one fast call goes: kernel count and the kernels taking the most time.

The call is run eagerly (not from the CUDA graph) under ``torch.profiler``; the sum of kernel
times against the graph-replay wall time says how much of the call is launch gaps.
"""

from __future__ import annotations

import torch


def profile_call(call, device: torch.device, rows: int = 25) -> dict:
    from torch.profiler import ProfilerActivity, profile

    call()
    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        call()
        torch.cuda.synchronize(device)
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    kernel_us = sum(e.device_time for e in events)
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=60)
    return {"kernels": len(events), "kernel_time_ms": kernel_us / 1e3, "table": table}
