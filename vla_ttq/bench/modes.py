"""What the benchmark measures: one :class:`BenchMode` per row of the results table."""

from __future__ import annotations

from dataclasses import dataclass

SCOPES = ("backbone", "backbone+expert")
ENGINES = ("fast", "plain")


@dataclass(frozen=True)
class BenchMode:
    """One configuration of the policy call.

    method ``fp`` with dtype ``float32``/``bfloat16``; ``rtn``/``awq``/``ttq`` quantize the
    language-model linears (``scope="backbone"``) or those and the action expert's. ``weights``:
    ``dense`` runs quantized layers on dequantized copies (speed), ``packed`` keeps only packed
    codes on the device and dequantizes inside every call (memory). ``host_master``: TTQ's
    full-precision weights stay on the host and the episode's packed weights are re-made at its
    first call (needs recompute ``episode``).
    """

    method: str = "fp"
    dtype: str = "bfloat16"
    bits: int = 16
    rank: int = 0
    recompute: str = "-"
    scope: str = "-"
    weights: str = "dense"
    host_master: bool = False
    engine: str = "fast"
    tf32: bool = False
    compiled: bool = False  # torch.compile the element-wise glue of the fast sampler

    def __post_init__(self) -> None:
        if self.method not in ("fp", "rtn", "awq", "ttq"):
            raise ValueError(f"unknown method {self.method!r}")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if self.method != "fp" and self.scope not in SCOPES:
            raise ValueError(f"{self.method} needs scope in {SCOPES}, got {self.scope!r}")
        if self.method == "ttq" and self.recompute not in ("call", "episode"):
            raise ValueError(f"ttq needs recompute 'call' or 'episode', got {self.recompute!r}")
        if self.host_master and (self.method != "ttq" or self.recompute != "episode"):
            raise ValueError("host_master needs method 'ttq' with recompute 'episode'")
        if self.compiled and self.engine != "fast":
            raise ValueError("compiled needs the fast engine")

    @property
    def name(self) -> str:
        if self.method == "fp":
            base = f"{'fp32' if self.dtype == 'float32' else 'bf16'}"
            base += "+tf32" if self.tf32 else ""
            base += " compiled" if self.compiled else ""
            return base + ("" if self.engine == "fast" else " (plain eager)")
        parts = [self.method, f"W{self.bits}"]
        if self.method == "ttq":
            parts += [f"r{self.rank}", self.recompute]
        parts.append("LM" if self.scope == "backbone" else "LM+expert")
        if self.host_master:
            parts.append("host-master")
        if self.weights == "packed":
            parts.append("packed")
        if self.compiled:
            parts.append("compiled")
        return " ".join(parts)

    @property
    def group(self) -> tuple:
        """Modes of one group share one prepared model (static methods fix the bits when quantizing)."""
        return (self.dtype, self.method, self.bits if self.method in ("rtn", "awq") else 0, self.rank, self.tf32)


def standard_modes(include_plain: bool = True) -> list[BenchMode]:
    """The issue's matrix: fp32/bf16, RTN/AWQ W4/W2, TTQ W4/W2 r0/r16 call/episode, both scopes,
    plus the memory modes (packed RTN, TTQ with the master on the host)."""
    modes = [BenchMode("fp", "float32"), BenchMode("fp", "bfloat16"), BenchMode("fp", "bfloat16", tf32=True),
             BenchMode("fp", "bfloat16", compiled=True), BenchMode("fp", "bfloat16", tf32=True, compiled=True)]
    if include_plain:
        modes.append(BenchMode("fp", "bfloat16", engine="plain"))
    for method in ("rtn", "awq"):
        for bits in (4, 2):
            for scope in SCOPES:
                modes.append(BenchMode(method, bits=bits, scope=scope))
            modes.append(BenchMode(method, bits=bits, scope="backbone+expert", weights="packed"))
    for rank in (0, 16):
        for scope in SCOPES:
            for bits in (4, 2):
                for rec in ("call", "episode"):
                    modes.append(BenchMode("ttq", bits=bits, rank=rank, recompute=rec, scope=scope))
                if rank == 0 and scope == "backbone+expert":
                    modes.append(BenchMode("ttq", bits=bits, rank=rank, recompute="episode", scope=scope,
                                           compiled=True))
        for bits in (4, 2):
            modes.append(BenchMode("ttq", bits=bits, rank=rank, recompute="episode", scope="backbone+expert",
                                   weights="packed", host_master=True))
    return modes
