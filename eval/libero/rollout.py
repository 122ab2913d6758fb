"""Run planned episodes in LIBERO and append each finished one to a :class:`ResultsStore`.

Episodes of one task run in *waves* of up to ``n_envs`` simulators stepped in lock-step, with
one batched ``policy.infer_batch`` per replanning point (lerobot's vectorised evaluation does
the same). Slot ``i`` of a wave is always batch position ``i``, so per-sample TTQ state
(``stats_scope="sample"``, ``recompute="episode"``) follows its episode; a slot whose episode
ended keeps its last observation in the batch until the wave ends. A policy whose ``infer``
takes ``env_index`` (the remote client) is called per live slot instead.

Each episode draws its flow-matching noise from its own generator seeded by ``item.seed``
(when the policy accepts ``noise``), so an episode's outcome does not depend on the batch it
ran in nor on the order of a resumed run.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import protocol
from .env import EnvPool, default_pool, frame_of
from .plan import EpisodeItem
from .results import ResultsStore, episode_key
from .video import VideoRecorder, video_path

log = logging.getLogger(__name__)


def _accepts(fn: Any, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


class _PolicyCaller:
    """Batched action chunks for the slots of a wave, whatever kind of policy this is."""

    def __init__(self, policy: Any):
        self.policy = policy
        self.per_env = _accepts(getattr(policy, "infer", None), "env_index")
        self.with_noise = not self.per_env and _accepts(getattr(policy, "infer_batch", None), "noise")
        cfg = getattr(policy, "config", None)
        self.noise_shape = (getattr(cfg, "chunk_size", 0), getattr(cfg, "max_action_dim", 0)) if cfg else None
        if self.with_noise and not all(self.noise_shape or ()):
            self.with_noise = False

    def reset(self, n_slots: int) -> None:
        if self.per_env:
            for i in range(n_slots):
                self.policy.reset(env_index=i)
        else:
            self.policy.reset()

    def __call__(self, obs: list[dict], live: list[int], gens: list) -> dict[int, np.ndarray]:
        if self.per_env:
            replies = {i: self.policy.infer(obs[i], env_index=i) for i in live}
        elif self.with_noise:
            import torch

            noise = torch.stack([torch.randn(self.noise_shape, generator=g) for g in gens])
            replies = dict(enumerate(self.policy.infer_batch(obs, noise=noise)))
        else:
            replies = dict(enumerate(self.policy.infer_batch(obs)))
        out = {}
        for i in live:
            a = np.asarray(replies[i]["actions"], dtype=np.float32)
            if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < protocol.ACTION_DIM:
                raise ValueError(f"policy returned actions of shape {a.shape}; expected (n, >= {protocol.ACTION_DIM})")
            out[i] = a[:, : protocol.ACTION_DIM]
        return out


def _record(item: EpisodeItem, success: bool, steps: int, wall: float) -> dict:
    rec = item.labels()
    rec["task"] = rec.pop("task_name")
    rec.update( success=bool(success), steps=int(steps), wall_s=round(wall, 3),
               finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return rec


def _run_wave(caller: _PolicyCaller, envs: list, wave: list[EpisodeItem], store: ResultsStore,
              video_dir: str | Path | None, on_done) -> list[dict]:
    import torch

    n = len(wave)
    caller.reset(n)
    start = time.perf_counter()
    for env, it in zip(envs, wave):
        env.reset_async(it.episode, it.seed, it.num_steps_wait, it.hard_reset)
    obs = [env.wait() for env in envs]
    gens = [torch.Generator().manual_seed(it.seed) for it in wave]
    queues: list[deque] = [deque() for _ in range(n)]
    steps, live = [0] * n, list(range(n))
    videos = [VideoRecorder(video_path(video_dir, it.config_hash, it.suite, it.task_id, it.episode))
              if video_dir else None for it in wave]
    for i, v in enumerate(videos):
        if v:
            v.add(frame_of(obs[i]))
    written = []
    try:
        while live:
            need = [i for i in live if not queues[i]]
            if need:
                for i, chunk in caller(obs, need, gens).items():
                    queues[i].extend(chunk)
            for i in live:
                envs[i].step_async(queues[i].popleft())
            for i in list(live):
                obs[i], success, done = envs[i].wait()
                steps[i] += 1
                if videos[i]:
                    videos[i].add(frame_of(obs[i]))
                if success or done or steps[i] >= wave[i].max_steps:
                    live.remove(i)
                    rec = _record(wave[i], success, steps[i], time.perf_counter() - start)
                    if videos[i]:
                        rec["video"] = str(videos[i].close())
                    if store.append(rec):
                        written.append(rec)
                    on_done(rec)
    finally:  # an interrupted wave leaves no half-written video behind
        for v in videos:
            if v is not None and v.is_open:
                v.discard()
    return written


def run_items(policy: Any, items: Sequence[EpisodeItem], store: ResultsStore, *, n_envs: int = 1,
              video_dir: str | Path | None = None, progress: bool = True, env_pool: EnvPool | None = None,
              desc: str = "episodes") -> list[dict]:
    """Run the items not yet in ``store``; each finished episode is appended as it finishes.

    Returns the records this call wrote, in finishing order."""
    if n_envs < 1:
        raise ValueError(f"n_envs must be >= 1, got {n_envs}")
    done, todo = store.done_keys(), []
    for it in items:
        k = episode_key(it)
        if k not in done:
            done.add(k)
            todo.append(it)
    groups: dict[tuple, list[EpisodeItem]] = {}
    for it in todo:
        groups.setdefault((it.suite, it.task_id, it.camera_res), []).append(it)
    pool = env_pool if env_pool is not None else default_pool()  # (an empty pool is falsy)
    caller = _PolicyCaller(policy)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc=desc, unit="ep", disable=not progress, dynamic_ncols=True)
    wins = [0, 0]

    def on_done(rec: dict) -> None:
        wins[0] += rec["success"]
        wins[1] += 1
        bar.update(1)
        bar.set_postfix(success=f"{wins[0]}/{wins[1]}", task=f"{rec['suite']}:{rec['task_id']}")

    written: list[dict] = []
    try:
        for (suite, task_id, res), group in groups.items():
            k = min(n_envs, len(group))
            envs = []
            try:
                envs = pool.acquire_many(suite, task_id, res, k)
                for w in range(0, len(group), k):
                    wave = group[w: w + k]
                    written += _run_wave(caller, envs[: len(wave)], wave, store,
                                         video_dir, on_done)
            finally:
                for env in envs:
                    pool.release(env)
    finally:
        bar.close()
    return written


__all__ = ["run_items"]
