"""What the quality benchmark runs: methods x bits x groups, token budget, AWQ calibration."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from vla_ttq.config import QuantConfig

from .texts import DOMAINS

GRIDS = ("paper", "full")


@dataclass
class QualityConfig:
    """The benchmark's settings (YAML: ``configs/quality/*.yaml``).

    ``grid="full"`` runs every (bits, group); ``grid="paper"`` runs only the cells of the paper's
    Table 3 (all ``bits`` at ``table3_group``) and Table 2 (all ``groups`` at ``table2_bits``).
    """

    bits: tuple[int, ...] = (2, 3, 4, 5)
    groups: tuple[int, ...] = (32, 64, 128)
    grid: str = "paper"
    table3_group: int = 32  # the paper's Table 3 uses g = 32
    table2_bits: int = 3  # the paper's Table 2 is at 3 bits
    methods: tuple[str, ...] = ("rtn", "awq", "ttq")
    ttq_ranks: tuple[int, ...] = (0, 16)
    calib_domains: tuple[str, ...] = ("wiki",)  # AWQ is calibrated on domain A only
    eval_domains: tuple[str, ...] = ("wiki", "kjv")
    seq_len: int = 512
    n_eval: int = 4  # windows per evaluation domain
    n_calib: int = 8  # AWQ calibration windows (disjoint documents from the evaluation ones)
    reservoir: int = 128  # calibration tokens per layer on which AWQ's α line search runs
    seed: int = 0
    # Shared settings of every quantized cell (method, bits, group, rank are set per cell).
    quant: QuantConfig = field(default_factory=lambda: QuantConfig(check_finite=False))

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for name in ("bits", "groups", "methods", "ttq_ranks", "calib_domains", "eval_domains"):
            setattr(self, name, tuple(getattr(self, name)))
        if self.grid not in GRIDS:
            raise ValueError(f"grid must be one of {GRIDS}, got {self.grid!r}")
        bad = [m for m in self.methods if m not in ("rtn", "awq", "ttq")]
        if bad or not self.methods:
            raise ValueError(f"methods must be a non-empty subset of rtn, awq, ttq; got {self.methods}")
        for d in self.calib_domains + self.eval_domains:
            if d not in DOMAINS:
                raise ValueError(f"unknown text domain {d!r}; known: {', '.join(DOMAINS)}")
        if "awq" in self.methods and not self.calib_domains:
            raise ValueError("AWQ needs at least one calibration domain (calib_domains)")
        if not self.eval_domains:
            raise ValueError("eval_domains is empty")
        if self.grid == "paper" and (self.table3_group not in self.groups or self.table2_bits not in self.bits):
            raise ValueError(f"grid 'paper' needs table3_group={self.table3_group} in groups {self.groups} "
                             f"and table2_bits={self.table2_bits} in bits {self.bits}")
        for name, low in (("seq_len", 2), ("n_eval", 1), ("n_calib", 1), ("reservoir", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        self.quant.validate()

    def bit_group_cells(self) -> list[tuple[int, int]]:
        if self.grid == "full":
            return [(b, g) for b in self.bits for g in self.groups]
        cells = [(b, self.table3_group) for b in self.bits]
        cells += [(self.table2_bits, g) for g in self.groups if g != self.table3_group]
        return cells

    def methods_of_cell(self) -> list[tuple[str, int, str | None]]:
        """(method, rank, calibration domain) of each table row."""
        rows: list[tuple[str, int, str | None]] = []
        for m in self.methods:
            if m == "rtn":
                rows.append(("rtn", 0, None))
            elif m == "awq":
                rows += [("awq", 0, d) for d in self.calib_domains]
            else:
                rows += [("ttq", r, None) for r in self.ttq_ranks]
        return rows

    def quant_config(self, method: str, bits: int, group: int, rank: int) -> QuantConfig:
        return dataclasses.replace(self.quant, method=method, bits=bits, group=group, rank=rank)


def row_label(method: str, rank: int, calib: str | None) -> str:
    """The row names of the paper's tables."""
    if method == "rtn":
        return "RTN"
    if method == "awq":
        return f"AWQ ({calib} calib)"
    if method == "ttq":
        return f"TTQ (r={rank})"
    return "full precision"
