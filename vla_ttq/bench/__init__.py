"""End-to-end speed and memory benchmark of (quantized) pi0.5: ``python -m vla_ttq.bench``.

See docs/bench.md. ``modes`` names what is measured, ``measure`` times one sampler and counts its
device memory, ``runner`` prepares the models group by group, ``lerobot_ref`` times lerobot's own
pi0.5 in the same process, ``report`` prints and saves the results.
"""
