"""The LIBERO evaluation protocol of the pi0.5 LIBERO checkpoints (lerobot's LIBERO env).

Every constant here is read from lerobot's source (``src/lerobot/envs/libero.py``,
``src/lerobot/envs/configs.py``, ``src/lerobot/processor/env_processor.py``); docs/libero.md
lists them with their sources. Changing one changes results, so they all enter the config hash.
"""

from __future__ import annotations

import os
from pathlib import Path

# Short names used on the command line and in tables -> LIBERO benchmark names.
SUITES = {"spatial": "libero_spatial", "object": "libero_object", "goal": "libero_goal", "10": "libero_10"}
SUITE_ORDER = ("spatial", "object", "goal", "10")  # Table 13's column order
SUITE_TITLES = {"spatial": "Libero Spatial", "object": "Libero Object", "goal": "Libero Goal", "10": "Libero 10"}

# lerobot TASK_SUITE_MAX_STEPS (longest training demo: 193 / 254 / 270 / 505 steps)
MAX_STEPS = {"spatial": 280, "object": 280, "goal": 300, "10": 520}
NUM_STEPS_WAIT = 10  # no-op steps after reset so objects settle
DUMMY_ACTION = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)  # no motion, gripper open
CAMERA_RES = 360  # lerobot LiberoEnv observation_height/width (the model resizes to 224 with padding)
ACTION_DIM = 7
STATE_DIM = 8  # eef pos (3) + eef axis-angle (3) + gripper qpos (2)
EPISODES_PER_TASK = 20  # Table 13: 200 episodes per suite = 10 tasks x 20 init states
DEFAULT_SEED = 1000  # lerobot-eval's default seed

# LIBERO cameras -> the policy contract's observation keys (openpi naming, see vla_ttq/models/policy.py)
CAMERAS = {"agentview_image": "observation/image", "robot0_eye_in_hand_image": "observation/wrist_image"}
STATE_KEY, PROMPT_KEY = "observation/state", "prompt"


def suite_names(spec: str) -> list[str]:
    """'all' -> the four suites in Table 13 order; otherwise one short name, validated."""
    if spec == "all":
        return list(SUITE_ORDER)
    if spec not in SUITES:
        raise ValueError(f"unknown suite {spec!r}; choose one of {', '.join(SUITE_ORDER)} or all")
    return [spec]


def configure_rendering() -> None:
    """Headless MuJoCo: EGL where an NVIDIA GPU is visible, OSMesa otherwise; the user's MUJOCO_GL wins.

    Must run before robosuite/mujoco are first imported (they read MUJOCO_GL at import)."""
    os.environ.setdefault("MUJOCO_GL", "egl" if Path("/dev/nvidia0").exists() else "osmesa")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])


def benchmark_suite(short: str):
    """The LIBERO benchmark object of a suite (cheap: no simulator is created)."""
    from libero.libero import benchmark

    return benchmark.get_benchmark_dict()[SUITES[short]]()
