"""The episodes of a run: ``plan_items(eval_config)`` -> ordered, self-describing ``EpisodeItem``s.

An item carries everything a worker needs to run one episode and label its record, so items
can be shipped to other processes (Ray) and run in any order with the same outcome: the
episode's init state is fixed by its index, its seeds are derived from (seed, task, episode).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

from . import protocol
from .config import EvalConfig


@dataclass(frozen=True)
class EpisodeItem:
    suite: str  # short name: spatial | object | goal | 10
    task_id: int
    episode: int  # init-state index (0..49)
    seed: int  # env seed and policy noise seed of this episode
    config_hash: str
    task_name: str = ""
    prompt: str = ""  # the task's language instruction
    max_steps: int = 520
    num_steps_wait: int = protocol.NUM_STEPS_WAIT
    camera_res: int = protocol.CAMERA_RES
    hard_reset: bool = True
    # labels copied into the record (for summaries and the report)
    method: str = "ttq"
    bits: int | None = 2
    group: int | None = 64
    rank: int | None = 0
    calib_suite: str | None = None
    policy: str = ""
    dtype: str | None = None  # None: the checkpoint's
    n_action_steps: int | None = None  # None: the checkpoint's

    def labels(self) -> dict:
        return asdict(self)


def episode_seed(base: int, task_id: int, episode: int) -> int:
    """Distinct per (task, episode), independent of batching and of the order items run in."""
    return int(base) + 1000 * int(task_id) + int(episode)


@lru_cache(maxsize=None)
def suite_tasks(suite: str) -> tuple[tuple[str, str], ...]:
    """(name, language) of every task of a suite, in LIBERO's order."""
    bench = protocol.benchmark_suite(suite)
    return tuple((bench.get_task(i).name, bench.get_task(i).language) for i in range(bench.n_tasks))


def task_ids(suite: str, tasks: tuple[int, ...] | None, what: str = "task") -> list[int]:
    """``tasks`` checked against ``suite``'s range, or every task of the suite (None)."""
    n = len(suite_tasks(suite))
    ids = list(range(n)) if tasks is None else list(tasks)
    bad = [t for t in ids if t >= n]
    if bad:
        raise ValueError(f"{what} id(s) {bad} out of range for suite {suite!r} (0..{n - 1})")
    return ids


def plan_items(cfg: EvalConfig) -> list[EpisodeItem]:
    """All items of a run in order: suite by suite, task by task, episode by episode."""
    q = cfg.quant
    quantized = q.method != "fp"
    items = []
    for suite in cfg.suites():
        tasks = suite_tasks(suite)
        h = cfg.result_hash(suite)
        for t in task_ids(suite, cfg.tasks):
            for e in range(cfg.episodes):
                items.append(EpisodeItem(
                    suite=suite, task_id=t, episode=e, seed=episode_seed(cfg.seed, t, e), config_hash=h,
                    task_name=tasks[t][0], prompt=tasks[t][1], max_steps=cfg.max_steps_for(suite),
                    num_steps_wait=cfg.num_steps_wait, camera_res=cfg.camera_res, hard_reset=cfg.hard_reset,
                    method=q.method,
                    bits=q.bits if quantized else None, group=q.group if quantized else None,
                    rank=q.rank if quantized else None, calib_suite=cfg.calib_suite_for(suite),
                    policy=cfg.policy, dtype=cfg.dtype, n_action_steps=cfg.n_action_steps))
    return items


__all__ = ["EpisodeItem", "plan_items", "episode_seed", "suite_tasks", "task_ids"]
