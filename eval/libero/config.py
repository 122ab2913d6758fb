"""``EvalConfig``: everything a LIBERO run needs, serialisable to YAML (``configs/libero/``).

The quantization part is :class:`vla_ttq.config.QuantConfig`. ``result_hash`` tags every episode
record: it covers what changes an episode's outcome (policy, quantization, calibration, protocol,
seed) and leaves out what only changes how a run is executed (suites, tasks, number of episodes,
device, vectorisation, output folder), so a longer run of the same config resumes a shorter one.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from vla_ttq.config import QuantConfig, config_hash, to_dict

from ..cache import default_cache_dir
from . import protocol

DEFAULT_POLICY = "lerobot/pi05_libero_finetuned"
TINY = "tiny"


def _checked_tasks(tasks, what: str) -> tuple[int, ...] | None:
    """``tasks`` as sorted unique ids (None: every task); the suite's range is checked when planning."""
    if tasks is None:
        return None
    ids = tuple(sorted({int(t) for t in tasks}))
    if not ids or min(ids) < 0:
        raise ValueError(f"{what} must be non-negative task ids, got {ids}")
    return ids


def _check_counts(prefix: str, episodes: int, max_steps: int | None) -> None:
    """Episodes per task and step limit of an evaluation (prefix "") or of AWQ calibration."""
    if not 1 <= episodes <= 50:
        raise ValueError(f"{prefix}episodes must be in 1..50 (LIBERO has 50 init states per task), got {episodes}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"{prefix}max_steps must be >= 1, got {max_steps}")


@dataclass
class CalibConfig:
    """How AWQ statistics are collected: full-precision rollouts of one suite in the simulator."""

    suite: str | None = None  # None: the suite being evaluated; "spatial" with suite 10 = cross-suite
    episodes: int = 1  # rollouts per task (init states counted from the END of the 50, apart from eval's)
    tasks: tuple[int, ...] | None = None  # None: every task of the calibration suite
    max_steps: int | None = None  # None: the suite's protocol maximum
    p: float = 2.0
    reservoir: int = 1024
    dataset: str | None = None  # lerobot/libero directory (not readable yet: see docs/libero.md)

    def validate(self) -> None:
        if self.suite is not None:
            protocol.suite_names(self.suite)
        _check_counts("calibration ", self.episodes, self.max_steps)
        self.tasks = _checked_tasks(self.tasks, "calibration tasks")


@dataclass
class EvalConfig:
    suite: str = "10"  # spatial | object | goal | 10 | all
    quant: QuantConfig = field(default_factory=lambda: QuantConfig(method="ttq", bits=2, group=64))
    calib: CalibConfig = field(default_factory=CalibConfig)
    policy: str = DEFAULT_POLICY  # hub id, local checkpoint directory, or "tiny"
    episodes: int = protocol.EPISODES_PER_TASK  # per task: init states 0..episodes-1
    tasks: tuple[int, ...] | None = None  # subset of task ids (None: all tasks of the suite)
    seed: int = protocol.DEFAULT_SEED
    # protocol (defaults: lerobot's LIBERO env)
    max_steps: int | None = None  # None: per-suite maximum (280/280/300/520)
    num_steps_wait: int = protocol.NUM_STEPS_WAIT
    camera_res: int = protocol.CAMERA_RES
    hard_reset: bool = True  # lerobot's default: rebuild the model on every reset (~3 s); False: soft reset
    n_action_steps: int | None = None  # actions executed per chunk before replanning; None: checkpoint's
    # model
    dtype: str | None = None  # float32 | bfloat16; None: the checkpoint's
    quantize_expert: bool = False  # Table 13 quantizes the VLM backbone only
    tiny_seed: int = 0  # weights of the "tiny" test checkpoint
    # execution (not part of the result hash)
    device: str = "auto"  # auto: cuda when available, else cpu
    n_envs: int = 1
    env_processes: bool = False  # each simulator in its own process (parallel rendering on many cores)
    fast: bool = False  # FastSampler (static KV cache, CUDA graph on GPU): same actions within float tolerance
    server: str | None = None  # ws://host:port: episodes through a remote policy server
    out: str = "results/libero"
    video: bool = False
    cache_dir: str | None = None  # tiny checkpoint + AWQ statistics; None: $VLA_TTQ_CACHE or ~/.cache/vla_ttq

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        protocol.suite_names(self.suite)
        self.quant.validate()
        self.calib.validate()
        _check_counts("", self.episodes, self.max_steps)
        self.tasks = _checked_tasks(self.tasks, "tasks")
        if self.num_steps_wait < 0:
            raise ValueError(f"num_steps_wait must be >= 0, got {self.num_steps_wait}")
        if self.camera_res < 16:
            raise ValueError(f"camera_res must be >= 16 pixels, got {self.camera_res}")
        if self.n_action_steps is not None and self.n_action_steps < 1:
            raise ValueError(f"n_action_steps must be >= 1, got {self.n_action_steps}")
        if self.n_envs < 1:
            raise ValueError(f"n_envs must be >= 1, got {self.n_envs}")
        if self.dtype not in (None, "float32", "bfloat16"):
            raise ValueError(f"dtype must be float32 or bfloat16, got {self.dtype!r}")

    # --- derived ------------------------------------------------------------------------------
    @property
    def method(self) -> str:
        return self.quant.method

    def suites(self) -> list[str]:
        return protocol.suite_names(self.suite)

    def calib_suite_for(self, suite: str) -> str | None:
        """The suite whose rollouts calibrate AWQ when evaluating ``suite`` (None unless AWQ)."""
        if self.method != "awq":
            return None
        return self.calib.suite or suite

    def max_steps_for(self, suite: str) -> int:
        return self.max_steps if self.max_steps is not None else protocol.MAX_STEPS[suite]

    def result_hash(self, suite: str) -> str:
        """Tag of every episode record of ``suite`` (see the module docstring)."""
        q = to_dict(self.quant) if self.method != "fp" else {"method": "fp"}
        blob = {
            "policy": self.policy if self.policy != TINY else f"tiny:{self.tiny_seed}",
            "quant": q, "quantize_expert": self.quantize_expert if self.method != "fp" else False,
            "calib": ({**to_dict(self.calib), "suite": self.calib_suite_for(suite)}
                      if self.method == "awq" else None),
            "seed": self.seed, "max_steps": self.max_steps_for(suite), "num_steps_wait": self.num_steps_wait,
            "camera_res": self.camera_res, "n_action_steps": self.n_action_steps, "dtype": self.dtype,
            **({} if self.hard_reset else {"hard_reset": False}),  # (absent when default: hashes stay stable)
        }
        return config_hash(blob)

    @property
    def cache_root(self) -> Path:
        return Path(self.cache_dir or default_cache_dir()).expanduser()

    def torch_device(self) -> str:
        if self.device not in (None, "auto"):  # (None: a YAML's `device: null`)
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def with_(self, **changes) -> "EvalConfig":
        return replace(self, **changes)


__all__ = ["EvalConfig", "CalibConfig", "DEFAULT_POLICY", "TINY", "default_cache_dir"]
