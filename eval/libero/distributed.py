"""LIBERO evaluation spread over GPUs and machines with Ray (``--workers N`` / ``--ray-address``).

The driver plans every episode of every run (:func:`plan_items`), drops those already in the
results store, and cuts the rest into *chunks*: up to ``chunk_size`` episodes of one
(run, suite, task), by default one wave of ``n_envs`` simulators. Ray actors
(:class:`EpisodeWorker`, one GPU each when the cluster has GPUs, else one CPU) run chunks with
the single-process runner (:func:`run_items`); each keeps the policy of the run it is on and the
simulators of the task it is on, and the driver hands a free worker another chunk of the same
run (then task) first, so policies are built and AWQ calibrated rarely.

Only the driver writes the results file: a worker returns the records of its chunk and the
driver appends them to the :class:`ResultsStore` (locked, deduplicated by key). Workers therefore
need no shared file system, and a worker that dies (killed, out of memory, node lost) loses only
its chunk in flight: the driver puts that chunk back in the queue, starts a replacement worker
(up to ``max_failures`` in all) and the chunk runs again elsewhere. Nothing of a lost chunk ever
reached the file, so every episode ends up there exactly once; a killed driver resumes from it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .config import EvalConfig
from .plan import EpisodeItem, plan_items
from .results import ResultsStore, episode_key

log = logging.getLogger(__name__)


# --- work items -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Chunk:
    """Episodes of one (run, suite, task) that one worker runs in one call."""

    run: str
    items: tuple[EpisodeItem, ...]

    @property
    def task(self) -> tuple[str, str, int]:
        return self.run, self.items[0].suite, self.items[0].task_id

    @property
    def policy_key(self) -> tuple[str, str | None]:
        """Episodes with the same key run with the same policy: a run's policy differs between its
        suites only where AWQ calibrates on each suite (the result hash also covers per-suite
        episode lengths, so keying on it rebuilt the policy at every suite change)."""
        return self.run, self.items[0].calib_suite


def make_chunks(run: str, items: list[EpisodeItem], chunk_size: int) -> list[Chunk]:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    by_task: OrderedDict[tuple, list[EpisodeItem]] = OrderedDict()
    for it in items:
        by_task.setdefault((it.suite, it.task_id), []).append(it)
    return [Chunk(run, tuple(group[i: i + chunk_size]))
            for group in by_task.values() for i in range(0, len(group), chunk_size)]


class WorkQueue:
    """Chunks waiting for a worker, handed out with affinity (same task, then same run, else the run
    with the most work per worker already on it), so workers rarely rebuild a policy or a simulator."""

    def __init__(self, chunks: list[Chunk]):
        self._runs: OrderedDict[str, OrderedDict[tuple, deque[Chunk]]] = OrderedDict()
        for c in chunks:
            self._runs.setdefault(c.run, OrderedDict()).setdefault(c.task, deque()).append(c)

    def __len__(self) -> int:
        return sum(len(q) for tasks in self._runs.values() for q in tasks.values())

    def items_left(self) -> int:
        return sum(len(c.items) for tasks in self._runs.values() for q in tasks.values() for c in q)

    def _pop(self, run: str, task: tuple | None = None) -> Chunk:
        tasks = self._runs[run]
        task = task if task in tasks else next(iter(tasks))
        chunk = tasks[task].popleft()
        if not tasks[task]:
            del tasks[task]
        if not tasks:
            del self._runs[run]
        return chunk

    def take(self, last: Chunk | None = None, busy: Counter | None = None) -> Chunk | None:
        """Next chunk for a worker whose previous chunk was ``last``; ``busy``: workers per run now."""
        if not self._runs:
            return None
        if last is not None and last.run in self._runs:
            return self._pop(last.run, last.task)
        busy = busy or Counter()
        run = max(self._runs, key=lambda r: sum(len(c.items) for q in self._runs[r].values() for c in q)
                  / (1 + busy[r]))
        return self._pop(run)

    def put_back(self, chunk: Chunk) -> None:
        """A lost chunk goes first in line for its task."""
        tasks = self._runs.setdefault(chunk.run, OrderedDict())
        tasks.setdefault(chunk.task, deque()).appendleft(chunk)
        tasks.move_to_end(chunk.task, last=False)


# --- the worker ---------------------------------------------------------------------------------

class EpisodeWorker:
    """Runs chunks with the single-process runner; keeps one policy and the current task's simulators.

    Used as a Ray actor (see :func:`run_distributed`), and plain in-process in tests."""

    def __init__(self, device: str = "cpu"):
        from .env import EnvPool  # importing eval.libero set MUJOCO_GL (eval/libero/__init__.py)

        self.device = device
        self.pool = EnvPool()
        self.policy: Any = None
        self.policy_key: tuple | None = None
        self.task: tuple | None = None
        self.builds = 0

    def ready(self) -> dict[str, Any]:
        return {"host": socket.gethostname(), "pid": os.getpid(), "device": self.device,
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}

    def _policy_for(self, cfg: EvalConfig, chunk: Chunk) -> Any:
        if self.policy_key != chunk.policy_key:
            self.policy = None  # free the previous run's weights before loading the next
            if self.device.startswith("cuda"):
                import torch

                torch.cuda.empty_cache()
            from .build import build_policy

            self.policy = build_policy(cfg, suite=chunk.items[0].suite, env_pool=self.pool, progress=False)
            self.policy_key = chunk.policy_key
            self.builds += 1
        return self.policy

    def run(self, cfg: EvalConfig, chunk: Chunk) -> list[dict]:
        """Run ``chunk``'s episodes; returns their records (the driver writes them)."""
        from .rollout import run_items

        cfg = cfg.with_(device=self.device)
        policy = self._policy_for(cfg, chunk)
        if self.pool.processes != cfg.env_processes:
            from .env import EnvPool

            self.pool.close()
            self.pool = EnvPool(processes=cfg.env_processes)
        elif self.task != chunk.task[1:] or len(self.pool) > cfg.n_envs:
            self.pool.close()  # keep only the current task's simulators (~1 GB each), not calibration's
        self.task = chunk.task[1:]
        video_dir = Path(cfg.out) / "videos" if cfg.video else None  # on the worker's machine
        with tempfile.TemporaryDirectory(prefix="vla_ttq_chunk_") as tmp:
            store = ResultsStore(Path(tmp) / "chunk.jsonl")
            return run_items(policy, list(chunk.items), store, n_envs=cfg.n_envs, video_dir=video_dir,
                             progress=False, env_pool=self.pool)


# --- the driver ---------------------------------------------------------------------------------

@dataclass
class DistReport:
    written: int = 0  # records appended to the store by this call
    duplicates: int = 0  # records a worker returned that the store already had (not written)
    skipped: int = 0  # episodes already in the store before this call
    requeued_chunks: int = 0
    requeued_items: int = 0
    worker_failures: int = 0
    workers: list[dict] = field(default_factory=list)  # what each worker's ready() said
    wall_s: float = 0.0


class WorkersLost(RuntimeError):
    pass


def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise RuntimeError("distributed evaluation needs Ray: pip install -e '.[dist]'") from e
    return ray


def init_ray(address: str | None = None, num_cpus: int | None = None, **kwargs) -> bool:
    """Start a local Ray instance (address None) or join a cluster; False if Ray was already up."""
    ray = _import_ray()
    if ray.is_initialized():
        return False
    opts: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING, **kwargs}
    if address:
        ray.init(address=address, **opts)
    else:
        ray.init(num_cpus=num_cpus, **opts)
    return True


def plan_chunks(configs: dict[str, EvalConfig], store: ResultsStore,
                chunk_size: int | None = None) -> tuple[list[Chunk], int]:
    """Chunks of every episode not yet in ``store``, and the number already there."""
    done = store.done_keys()
    chunks, skipped = [], 0
    for run, cfg in configs.items():
        todo = []
        for it in plan_items(cfg):
            if episode_key(it) in done:
                skipped += 1
            else:
                todo.append(it)
        chunks += make_chunks(run, todo, chunk_size or cfg.n_envs)
    return chunks, skipped


def run_distributed(configs: dict[str, EvalConfig], store: ResultsStore, *, workers: int | None = None,
                    address: str | None = None, chunk_size: int | None = None, max_failures: int | None = None,
                    progress: bool = True, on_result: Callable[["Dispatcher", list[dict]], None] | None = None,
                    ray_init: dict[str, Any] | None = None) -> DistReport:
    """Run every episode of ``configs`` (run name -> EvalConfig) on Ray workers into ``store``.

    Uses an already initialised Ray as it is; otherwise starts a local one (``address`` None) or
    joins the cluster at ``address`` ("auto", "host:port"), and shuts it down at the end.
    ``on_result(dispatcher, records)`` is called after each chunk's records are written and the
    freed worker got its next chunk (tests use it to kill workers mid-run)."""
    if not configs:
        raise ValueError("no runs to evaluate")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    t0 = time.perf_counter()
    chunks, skipped = plan_chunks(configs, store, chunk_size)
    report = DistReport(skipped=skipped)
    if not chunks:
        log.info("all %d episodes are already in %s", skipped, store.path)
        return report
    use_gpu = any(c.device.startswith("cuda") for c in configs.values())
    if use_gpu and not all(c.device.startswith("cuda") for c in configs.values()):
        raise ValueError("runs mix --device cpu and cuda: distributed workers use one kind of device")
    started = init_ray(address, num_cpus=None if address else max(os.cpu_count() or 1, workers or 1),
                       **(ray_init or {}))
    ray = _import_ray()
    try:
        dispatcher = Dispatcher(ray, configs, WorkQueue(chunks), store, report, use_gpu=use_gpu, workers=workers,
                                max_failures=max_failures, progress=progress, on_result=on_result)
        dispatcher.run()
    finally:
        if started:
            ray.shutdown()
    report.wall_s = time.perf_counter() - t0
    return report


class Dispatcher:
    """The driver's loop: free workers get chunks, results get written, lost chunks go back."""

    def __init__(self, ray, configs, queue: WorkQueue, store: ResultsStore, report: DistReport, *, use_gpu: bool,
                 workers: int | None, max_failures: int | None, progress: bool, on_result=None):
        self.ray, self.configs, self.queue, self.store, self.report = ray, configs, queue, store, report
        self.on_result = on_result
        resources = ray.cluster_resources()
        if use_gpu:
            gpus = int(resources.get("GPU", 0))
            if gpus < 1:
                raise ValueError("runs ask for --device cuda but the Ray cluster has no GPU "
                                 "(use --device cpu, or start Ray on GPU machines)")
            self.n_workers = workers or gpus
            if self.n_workers > gpus:
                raise ValueError(f"{self.n_workers} workers need {self.n_workers} GPUs; the Ray cluster has {gpus}")
            self.actor_cls = ray.remote(num_gpus=1, num_cpus=1)(EpisodeWorker)
            self.device = "cuda"
        else:
            cpus = int(resources.get("CPU", 0))
            self.n_workers = workers or 1
            if self.n_workers > cpus:
                raise ValueError(f"{self.n_workers} CPU workers need {self.n_workers} CPUs; the Ray cluster has {cpus}")
            self.actor_cls = ray.remote(num_cpus=1)(EpisodeWorker)
            self.device = "cpu"
        self.n_workers = min(self.n_workers, len(queue))  # no idle worker holding a GPU
        self.max_failures = self.n_workers if max_failures is None else max_failures
        self.idle: list = []  # ready workers without a chunk
        self.last: dict = {}  # worker -> its previous chunk (affinity)
        self.pending: dict = {}  # object ref -> (worker, chunk or None for ready())
        from tqdm.auto import tqdm

        self.bar = tqdm(total=queue.items_left(), desc="episodes", unit="ep", disable=not progress,
                        dynamic_ncols=True)
        self.successes = 0

    # workers -----------------------------------------------------------------------------------
    def start_worker(self) -> None:
        w = self.actor_cls.remote(self.device)
        self.pending[w.ready.remote()] = (w, None)

    def busy_runs(self) -> Counter:
        return Counter(chunk.run for _, chunk in self.pending.values() if chunk is not None)

    def assign(self, w) -> bool:
        chunk = self.queue.take(self.last.get(w), self.busy_runs())
        if chunk is None:
            return False
        self.pending[w.run.remote(self.configs[chunk.run], chunk)] = (w, chunk)
        return True

    def in_flight(self) -> list[tuple[Any, Chunk]]:
        """(worker, chunk) of every chunk being run now."""
        return [(w, c) for w, c in self.pending.values() if c is not None]

    def lose(self, w, chunk: Chunk | None, err: Exception) -> None:
        self.report.worker_failures += 1
        log.warning("worker lost (%s): %s", type(err).__name__, str(err).splitlines()[0] if str(err) else "")
        if chunk is not None:
            self.queue.put_back(chunk)
            self.report.requeued_chunks += 1
            self.report.requeued_items += len(chunk.items)
        self.last.pop(w, None)
        with contextlib.suppress(Exception):
            self.ray.kill(w)  # an unreachable worker must not come back with a late result
        if self.report.worker_failures > self.max_failures:
            raise WorkersLost(f"{self.report.worker_failures} workers lost (more than max_failures="
                              f"{self.max_failures}); last error: {err}")
        self.start_worker()

    def write(self, records: list[dict]) -> None:
        for rec in records:
            if self.store.append(rec):
                self.report.written += 1
                self.successes += bool(rec.get("success"))
            else:
                self.report.duplicates += 1
        self.bar.update(len(records))
        self.bar.set_postfix(success=f"{self.successes}/{self.report.written}",
                             lost=self.report.worker_failures)

    # loop ----------------------------------------------------------------------------------------
    def run(self) -> None:
        ray = self.ray
        try:
            for _ in range(self.n_workers):
                self.start_worker()
            while len(self.queue) or self.in_flight():  # (a worker still starting is not waited for)
                done, _ = ray.wait(list(self.pending), num_returns=1)
                ref = done[0]
                w, chunk = self.pending.pop(ref)
                try:
                    value = ray.get(ref)
                except ray.exceptions.RayTaskError as e:  # our code raised (a bug, a bad config): no retry
                    where = f" on run {chunk.run!r}, suite {chunk.task[1]}, task {chunk.task[2]}" if chunk else ""
                    raise RuntimeError(f"worker failed{where}: {e}") from e
                except ray.exceptions.RayError as e:  # the worker died or its node went: the chunk runs again
                    self.lose(w, chunk, e)
                    self._fill()
                    continue
                if chunk is None:
                    self.report.workers.append(value)
                else:
                    self.last[w] = chunk
                    self.write(value)
                if not self.assign(w):
                    self.idle.append(w)
                self._fill()
                if chunk is not None and self.on_result:
                    self.on_result(self, value)
        finally:
            self.bar.close()
            for w, _ in list(self.pending.values()) + [(w, None) for w in self.idle]:
                with contextlib.suppress(Exception):
                    ray.kill(w)

    def _fill(self) -> None:
        """Give waiting chunks (e.g. put back after a loss) to idle workers; let the others go."""
        while self.idle and len(self.queue):
            self.assign(self.idle.pop())
        if not len(self.queue):
            for w in self.idle:
                with contextlib.suppress(Exception):
                    self.ray.kill(w)  # release its GPU as soon as there is nothing left to give it
            self.idle.clear()


__all__ = ["Chunk", "WorkQueue", "make_chunks", "plan_chunks", "EpisodeWorker", "run_distributed", "init_ray",
           "DistReport", "Dispatcher", "WorkersLost"]
