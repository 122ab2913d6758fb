"""One LIBERO task in the simulator, producing the policy contract's observations.

Follows lerobot's LIBERO env (see docs/libero.md): two cameras rendered square at
``camera_res``, both images rotated 180° (flip H and W), 8-dim state = eef position +
eef axis-angle + gripper joint positions, fixed init state per episode index, ``num_steps_wait``
no-op steps after reset, success from ``check_success()``.

Creating a simulator costs ~17 s on a small CPU, so :class:`EnvPool` keeps environments alive
and hands them out again per (suite, task, resolution).
"""

from __future__ import annotations

import atexit
import math
import os
import threading
from collections import defaultdict

import numpy as np

from . import protocol


def quat_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """(x, y, z, w) quaternion -> axis * angle, as robosuite's quat2axisangle and lerobot."""
    x, y, z, w = (float(v) for v in quat)
    w = min(1.0, max(-1.0, w))
    den = math.sqrt(max(0.0, 1.0 - w * w))
    if den < 1e-10:
        return np.zeros(3, dtype=np.float64)
    return np.array([x, y, z], dtype=np.float64) / den * (2.0 * math.acos(w))


def to_observation(raw: dict, prompt: str) -> dict:
    """A raw robosuite observation -> the contract's observation dict."""
    obs = {key: np.ascontiguousarray(raw[cam][::-1, ::-1]) for cam, key in protocol.CAMERAS.items()}
    state = np.concatenate([raw["robot0_eef_pos"], quat_to_axis_angle(raw["robot0_eef_quat"]),
                            raw["robot0_gripper_qpos"]]).astype(np.float32)
    obs[protocol.STATE_KEY] = state
    obs[protocol.PROMPT_KEY] = prompt
    return obs


class LiberoTaskEnv:
    """One task's simulator: ``reset(init_state, seed)`` and ``step(action)`` return contract observations."""

    def __init__(self, suite: str, task_id: int, camera_res: int = protocol.CAMERA_RES):
        from libero.libero import get_libero_path
        from libero.libero.envs import OffScreenRenderEnv

        bench = protocol.benchmark_suite(suite)
        if not 0 <= task_id < bench.n_tasks:
            raise ValueError(f"task id {task_id} out of range for suite {suite!r} (0..{bench.n_tasks - 1})")
        task = bench.get_task(task_id)
        self.suite, self.task_id, self.camera_res = suite, task_id, camera_res
        self.task_name, self.prompt = task.name, task.language
        self.init_states = bench.get_task_init_states(task_id)
        bddl = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
        self._pending = None
        self.env = OffScreenRenderEnv(bddl_file_name=bddl, camera_heights=camera_res, camera_widths=camera_res,
                                      hard_reset=False)  # chosen per reset, see reset()
        self.env.reset()

    def reset(self, init_state: int, seed: int, num_steps_wait: int = protocol.NUM_STEPS_WAIT,
              hard_reset: bool = True) -> dict:
        """New episode from fixed init state ``init_state``, after ``num_steps_wait`` no-op steps.

        ``hard_reset`` (lerobot's default) rebuilds the MuJoCo model and renderer (~3 s); a soft
        reset only resets the compiled sim (lerobot: opt-in, observations after the settle steps
        can differ slightly)."""
        if not 0 <= init_state < len(self.init_states):
            raise ValueError(f"init state {init_state} out of range (task has {len(self.init_states)})")
        self.env.env.hard_reset = bool(hard_reset)  # robosuite reads it on every reset()
        self.env.seed(int(seed))
        self.env.reset()
        raw = self.env.set_init_state(self.init_states[init_state])
        for _ in range(num_steps_wait):
            raw, _, _, _ = self.env.step(list(protocol.DUMMY_ACTION))
        for robot in self.env.robots:  # relative (delta) end-effector control, as lerobot sets it
            robot.controller.use_delta = True
        return to_observation(raw, self.prompt)

    def step(self, action) -> tuple[dict, bool, bool]:
        """-> (observation, success, done). ``done``: the simulator's own horizon ended."""
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape[0] != protocol.ACTION_DIM:
            raise ValueError(f"LIBERO expects {protocol.ACTION_DIM}-dim actions, got shape {np.shape(action)}")
        if not np.isfinite(a).all():
            raise ValueError(f"non-finite action {a}")
        raw, _, done, _ = self.env.step(a)
        return to_observation(raw, self.prompt), bool(self.env.check_success()), bool(done)

    # Two-phase calls, so a wave can start every simulator before waiting for any (SubprocEnv
    # overlaps them; in-process they simply run one after the other).
    def reset_async(self, *args) -> None:
        self._pending = ("reset", args)

    def step_async(self, action) -> None:
        self._pending = ("step", (action,))

    def wait(self):
        name, args = self._pending
        self._pending = None
        return getattr(self, name)(*args)

    def drain(self) -> None:
        self._pending = None

    def close(self) -> None:
        try:
            self.env.close()
        except Exception:  # closing a half-built simulator must not hide the real error
            pass


def frame_of(obs: dict) -> np.ndarray:
    """Video frame: agentview | wrist side by side, upright."""
    return np.concatenate([obs["observation/image"], obs["observation/wrist_image"]], axis=1)


def _serve_env(conn, suite: str, task_id: int, camera_res: int) -> None:
    """Body of a simulator process: build the env, then answer (method, args) requests."""
    import traceback

    try:
        env = LiberoTaskEnv(suite, task_id, camera_res)
        conn.send(("ok", (env.task_name, env.prompt, len(env.init_states))))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        try:
            name, args = conn.recv()
        except (EOFError, KeyboardInterrupt):
            break
        if name == "close":
            env.close()
            conn.send(("ok", None))
            break
        try:
            conn.send(("ok", getattr(env, name)(*args)))
        except Exception:
            conn.send(("error", traceback.format_exc()))


class SubprocEnv:
    """A :class:`LiberoTaskEnv` in its own process (``spawn``: a fresh EGL/OSMesa context), so the
    simulators of a wave render in parallel on a many-core machine."""

    def __init__(self, suite: str, task_id: int, camera_res: int = protocol.CAMERA_RES, wait: bool = True):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.suite, self.task_id, self.camera_res = suite, task_id, camera_res
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve_env, args=(child, suite, task_id, camera_res), daemon=True,
                                name=f"libero-{suite}-{task_id}")
        self.proc.start()
        child.close()
        self._ready = False
        self._outstanding = 0  # requests sent whose reply was not read yet
        if wait:
            self.ready()

    def _send(self, msg) -> None:
        self.conn.send(msg)
        self._outstanding += 1

    def _recv(self):
        try:
            status, payload = self.conn.recv()
            self._outstanding = max(0, self._outstanding - 1)
        except EOFError:
            raise RuntimeError(f"simulator process of {self.suite}:{self.task_id} died "
                               f"(exit code {self.proc.exitcode})") from None
        if status != "ok":
            raise RuntimeError(f"simulator process of {self.suite}:{self.task_id} failed:\n{payload}")
        return payload

    def ready(self) -> "SubprocEnv":
        if not self._ready:
            self.task_name, self.prompt, self.n_init_states = self._recv()
            self._ready = True
        return self

    def reset_async(self, *args) -> None:
        self._send(("reset", args))

    def step_async(self, action) -> None:
        self._send(("step", (np.asarray(action, dtype=np.float64),)))

    def drain(self) -> None:
        """Read replies left unread by an interrupted wave, so the next user starts in sync."""
        while self._outstanding:
            self._outstanding -= 1
            try:
                self.conn.recv()
            except EOFError:
                break

    def wait(self):
        return self._recv()

    def reset(self, *args) -> dict:
        self.reset_async(*args)
        return self.wait()

    def step(self, action):
        self.step_async(action)
        return self.wait()

    def close(self) -> None:
        try:
            if self.proc.is_alive():
                self.conn.send(("close", ()))
                self.conn.poll(10) and self.conn.recv()
        except (OSError, EOFError, BrokenPipeError):
            pass
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(timeout=5)


class EnvPool:
    """Keeps created environments per (suite, task, resolution) for reuse.

    ``processes=True``: every simulator runs in its own process (:class:`SubprocEnv`)."""

    def __init__(self, processes: bool = False):
        self.processes = processes
        self._free: dict[tuple, list] = defaultdict(list)
        self._all: list = []
        self._lock = threading.Lock()

    def acquire(self, suite: str, task_id: int, camera_res: int):
        return self.acquire_many(suite, task_id, camera_res, 1)[0]

    def acquire_many(self, suite: str, task_id: int, camera_res: int, n: int) -> list:
        """``n`` environments of one task; missing ones are created (in parallel with processes)."""
        key = (suite, int(task_id), int(camera_res))
        with self._lock:
            got = [self._free[key].pop() for _ in range(min(n, len(self._free[key])))]
        if self.processes:
            new = [SubprocEnv(suite, task_id, camera_res, wait=False) for _ in range(n - len(got))]
            try:
                for env in new:
                    env.ready()
            except BaseException:
                for env in new:
                    env.close()
                raise
        else:
            new = [LiberoTaskEnv(suite, task_id, camera_res) for _ in range(n - len(got))]
        with self._lock:
            self._all += new
        return got + new

    def release(self, env) -> None:
        env.drain()
        with self._lock:
            self._free[(env.suite, env.task_id, env.camera_res)].append(env)

    def close(self) -> None:
        with self._lock:
            for env in self._all:
                env.close()
            self._all.clear()
            self._free.clear()

    def __len__(self) -> int:
        return len(self._all)


_DEFAULT_POOL: EnvPool | None = None


def default_pool() -> EnvPool:
    """Process-wide pool: consecutive runs in one process (calibration, then evaluation) share envs."""
    global _DEFAULT_POOL
    if _DEFAULT_POOL is None:
        _DEFAULT_POOL = EnvPool()
        atexit.register(_DEFAULT_POOL.close)
    return _DEFAULT_POOL


__all__ = ["LiberoTaskEnv", "SubprocEnv", "EnvPool", "frame_of", "default_pool", "to_observation", "quat_to_axis_angle"]
