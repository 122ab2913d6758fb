"""``python -m eval.libero.timing``: how long LIBERO takes on this machine (env creation, reset, step).

Steps the simulator with the no-op action (no policy), so it measures the simulator and the
renderer alone; prints one JSON object. docs/libero.md quotes its numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from . import protocol


def measure(suite: str, task_id: int, camera_res: int, steps: int, resets: int) -> dict:
    from .env import LiberoTaskEnv

    t0 = time.perf_counter()
    env = LiberoTaskEnv(suite, task_id, camera_res)
    create = time.perf_counter() - t0
    reset_s = []
    for i in range(resets):
        t0 = time.perf_counter()
        env.reset(i, seed=i, num_steps_wait=0, hard_reset=False)
        reset_s.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    env.reset(0, seed=0, num_steps_wait=0, hard_reset=True)
    hard = time.perf_counter() - t0
    t0 = time.perf_counter()
    env.reset(0, seed=0, hard_reset=False)  # with the protocol's 10 settling steps
    reset_wait = time.perf_counter() - t0
    step_s = []
    for _ in range(steps):
        t0 = time.perf_counter()
        env.step(np.array(protocol.DUMMY_ACTION))
        step_s.append(time.perf_counter() - t0)
    env.close()
    step = float(np.median(step_s))
    return {"suite": suite, "task_id": task_id, "camera_res": camera_res, "env_create_s": round(create, 2),
            "soft_reset_s": round(float(np.median(reset_s)), 3), "hard_reset_s": round(hard, 3),
            "soft_reset_with_wait_steps_s": round(reset_wait, 3),
            "step_median_s": round(step, 4), "step_p90_s": round(float(np.percentile(step_s, 90)), 4),
            "sim_only_episode_s": {s: round(reset_wait + n * step, 1) for s, n in protocol.MAX_STEPS.items()},
            "mujoco_gl": os.environ.get("MUJOCO_GL"), "cpus": os.cpu_count(), "machine": platform.node()}


def main(argv: list[str] | None = None) -> int:
    from .cli import _int_in

    p = argparse.ArgumentParser(prog="python -m eval.libero.timing", description=__doc__)
    p.add_argument("--suite", choices=protocol.SUITE_ORDER, default="10")
    p.add_argument("--task", type=_int_in(0), default=0)
    p.add_argument("--camera-res", type=_int_in(16), nargs="+", default=[protocol.CAMERA_RES])
    p.add_argument("--steps", type=_int_in(1), default=50)  # (0 steps or resets gave NaN medians)
    p.add_argument("--resets", type=_int_in(1), default=3)
    args = p.parse_args(argv)
    for res in args.camera_res:
        print(json.dumps(measure(args.suite, args.task, res, args.steps, args.resets)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
