"""eval.libero in the REAL LIBERO simulator with the tiny random pi0.5 (CPU, OSMesa).

One simulator (LIBERO-10 task 0, 64 px renders) is created once for the module and shared via
the process-wide env pool (creation takes ~12-17 s on 2 cores); episodes are a few steps long.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from eval.libero import cli
from eval.libero.build import build_policy
from eval.libero.calib import calib_path
from eval.libero.config import CalibConfig, EvalConfig
from eval.libero.env import default_pool
from eval.libero.plan import plan_items
from eval.libero.results import ResultsStore
from eval.libero.rollout import run_items
from vla_ttq.config import QuantConfig

RES, STEPS = 64, 6
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("libero_cache")


@pytest.fixture(scope="module")
def pool():
    p = default_pool()  # the CLI's own pool, so in-process CLI runs reuse this simulator
    p.release(p.acquire("10", 0, RES))
    return p


def base_args(out, cache, soft: bool = True) -> list[str]:
    return ["--soft-reset"] * soft + ["--policy", "tiny", "--suite", "10", "--tasks", "0", "--max-steps", str(STEPS), "--camera-res", str(RES),
            "--out", str(out), "--cache-dir", str(cache), "--device", "cpu", "--no-progress"]


def test_cli_runs_a_real_episode_end_to_end(pool, cache, tmp_path, capsys):
    # the protocol's hard reset here; the other tests reset softly (faster)
    argv = base_args(tmp_path, cache, soft=False) + ["--episodes", "1", "--bits", "2", "--group", "64", "--video"]
    assert cli.main(argv) == 0
    (r,) = ResultsStore(tmp_path / "episodes.jsonl").records()
    assert (r["suite"], r["task_id"], r["episode"], r["method"], r["bits"], r["group"]) == ("10", 0, 0, "ttq", 2, 64)
    assert r["task"].startswith("LIVING_ROOM_SCENE2_put_both") and r["steps"] <= STEPS and r["wall_s"] > 0
    assert isinstance(r["success"], bool) and r["seed"] == 1000 and r["max_steps"] == STEPS
    out = capsys.readouterr().out
    assert "LIBERO 10" in out and re.search(r"all .* 1 .* (0\.0|100\.0)%", out)
    video = tmp_path / "videos" / r["config_hash"] / "10" / "task00_ep00.mp4"
    assert r["video"] == str(video) and video.stat().st_size > 1000
    summaries = list((tmp_path / "summaries").glob("10-*.json"))
    assert len(summaries) == 1 and r["config_hash"] in summaries[0].name
    assert len(pool) == 1  # the shared simulator was reused, none created


class Interrupted(Exception):
    pass


class DyingStore(ResultsStore):
    """Dies right after the first episode was written, like a run killed between episodes."""

    def append(self, record):
        assert super().append(record)
        raise Interrupted


def test_killed_run_resumes_without_repeating_or_losing_episodes(pool, cache, tmp_path):
    cfg = EvalConfig(policy="tiny", suite="10", tasks=(0,), episodes=2, max_steps=STEPS, camera_res=RES, hard_reset=False,
                     out=str(tmp_path), cache_dir=str(cache))
    policy = build_policy(cfg)
    path = tmp_path / "episodes.jsonl"
    with pytest.raises(Interrupted):
        run_items(policy, plan_items(cfg), DyingStore(path), progress=False)
    first = path.read_bytes()
    assert first.count(b"\n") == 1
    with open(path, "ab") as f:
        f.write(b'{"config_hash": "')  # and a torn write of a process killed mid-line
    argv = base_args(tmp_path, cache) + ["--episodes", "2"]
    assert cli.main(argv) == 0
    data = path.read_bytes()
    assert data.startswith(first) and data.count(b"\n") == 2
    recs = ResultsStore(path).records()
    assert [r["episode"] for r in recs] == [0, 1] and len({r["config_hash"] for r in recs}) == 1
    assert cli.main(argv) == 0  # nothing left: nothing runs, nothing is added
    assert path.read_bytes() == data


class BatchSpy:
    def __init__(self, policy):
        self.policy, self.config, self.batches, self.actions = policy, policy.config, [], []

    def infer_batch(self, observations, noise=None):
        self.batches.append(len(observations))
        out = self.policy.infer_batch(observations, noise=noise)
        self.actions.append([o["actions"] for o in out])
        return out

    def reset(self, env_index=None):
        self.policy.reset(env_index)


def test_fast_sampler_flag_gives_the_plain_paths_actions(pool, cache, tmp_path):
    argv = base_args(tmp_path, cache) + ["--episodes", "1", "--method", "rtn", "--bits", "4", "--fast"]
    cfg = cli.config_from_args(cli.build_parser().parse_args(argv))
    assert cfg.fast and cfg.result_hash("10") == cfg.with_(fast=False).result_hash("10")
    runs = []
    for c in (cfg.with_(fast=False), cfg):
        spy = BatchSpy(build_policy(c))
        assert (spy.policy._fast is not None) == c.fast
        run_items(spy, plan_items(c), ResultsStore(tmp_path / f"fast{c.fast}.jsonl"), progress=False)
        runs.append(spy.actions)
    assert len(runs[0]) == len(runs[1]) > 0
    for plain, fast in zip(*runs):
        np.testing.assert_allclose(fast[0], plain[0], atol=1e-4)


def test_vectorised_envs_in_processes_batch_policy_calls_and_match_single_env(pool, cache, tmp_path):
    from eval.libero.env import EnvPool

    cfg = EvalConfig(policy="tiny", suite="10", tasks=(0,), episodes=2, max_steps=STEPS, camera_res=RES, hard_reset=False,
                     cache_dir=str(cache), quant=QuantConfig(method="fp"))
    items = plan_items(cfg)
    spy = BatchSpy(build_policy(cfg))
    # one in-process env: every call is a batch of 1; record the actions each episode received
    single = run_items(spy, items, ResultsStore(tmp_path / "one.jsonl"), n_envs=1, progress=False)
    calls = -(-STEPS // spy.config.n_action_steps)  # replanning points per episode
    assert spy.batches == [1] * 2 * calls
    per_episode = [[a[0] for a in spy.actions[e * calls:(e + 1) * calls]] for e in range(2)]
    spy.batches.clear(), spy.actions.clear()
    procs = EnvPool(processes=True)  # two simulators, each in its own process, stepped together
    try:
        double = run_items(spy, items, ResultsStore(tmp_path / "two.jsonl"), n_envs=2, progress=False,
                           env_pool=procs)
        envs = procs.acquire_many("10", 0, RES, 2)  # pooled processes are reused and still answer
        assert len(procs) == 2 and envs[1].reset(0, 1, 0)["prompt"] == double[0]["prompt"]
        for env in envs:
            procs.release(env)
    finally:
        procs.close()
    assert not any(env.proc.is_alive() for env in envs)
    assert spy.batches == [2] * calls and len(pool) == 1
    # slot i of every batch is episode i, and it gets the same actions as when run alone:
    # same init state, same seeded noise, deterministic simulator
    for e in range(2):
        for c in range(calls):
            np.testing.assert_allclose(spy.actions[c][e], per_episode[e][c], atol=3e-3)  # float32 batch maths
    assert np.abs(per_episode[0][0] - per_episode[1][0]).max() > 0.1  # the two episodes do differ
    key = lambda r: (r["episode"], r["steps"], r["success"])  # noqa: E731
    assert sorted(map(key, single)) == sorted(map(key, double))


def test_awq_calibrates_from_rollouts_once_and_reuses_the_statistics(pool, cache, monkeypatch):
    cfg = EvalConfig(policy="tiny", suite="10", tasks=(0,), episodes=1, max_steps=STEPS, camera_res=RES, hard_reset=False,
                     cache_dir=str(cache), quant=QuantConfig(method="awq", bits=2, group=64),
                     calib=CalibConfig(suite="10", episodes=1, tasks=(0,), max_steps=3))
    path = calib_path(cfg, "10")
    assert not path.exists()
    policy = build_policy(cfg, progress=False)
    assert path.exists() and policy.quant_report is not None and len(policy.quant_report.modules) > 0
    episodes = ResultsStore(path.with_name(path.stem + ".episodes.jsonl")).records()
    assert [(r["episode"], r["steps"], r["method"]) for r in episodes] == [(49, 3, "fp")]  # init states from the end

    import eval.libero.rollout as rollout

    def no_rollouts(*a, **k):
        raise AssertionError("statistics should come from the cache")

    monkeypatch.setattr(rollout, "run_items", no_rollouts)
    again = build_policy(cfg.with_(episodes=5), progress=False)  # another eval config, same calibration key
    assert sorted(again.quant_report.modules) == sorted(policy.quant_report.modules)
    cross = cfg.with_(calib=CalibConfig(suite="spatial", episodes=1, tasks=(0,), max_steps=3))
    assert calib_path(cross, "spatial") != path and cross.calib_suite_for("10") == "spatial"


def test_server_path_runs_episodes_through_the_real_policy_server(pool, cache, tmp_path):
    pytest.importorskip("openpi_client")
    from vla_ttq.serve import PolicyServer, ServerConfig, ServerThread

    cfg = EvalConfig(policy="tiny", cache_dir=str(cache), quant=QuantConfig(method="rtn", bits=4, group=32))
    server = PolicyServer(build_policy(cfg), ServerConfig(host="127.0.0.1", port=0))
    with ServerThread(server) as st:
        argv = base_args(tmp_path, cache) + ["--episodes", "1", "--server", st.url]
        assert cli.main(argv) == 0
    (r,) = ResultsStore(tmp_path / "episodes.jsonl").records()
    # labelled with what the server runs, not with the CLI's defaults (ttq)
    assert (r["method"], r["bits"], r["group"]) == ("rtn", 4, 32) and 1 <= r["steps"] <= STEPS
    assert server.counts["infer"] == -(-r["steps"] // served_steps(r)) and server.counts["reset"] >= 1


def served_steps(record) -> int:
    from vla_ttq.models.tiny import tiny_config

    return tiny_config().n_action_steps



def test_sigkilled_cli_run_resumes_exactly(pool, cache, tmp_path):
    """A real `python -m eval.libero` process SIGKILLed during its second episode."""
    import os
    import signal
    import subprocess
    import sys
    import time

    argv = base_args(tmp_path, cache) + ["--episodes", "2", "--max-steps", "30", "--method", "fp"]
    path = tmp_path / "episodes.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "eval.libero", *argv], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (path.exists() and path.read_bytes().count(b"\n") >= 1):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "first episode did not finish in time"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stderr.close()
    first = path.read_bytes()
    assert first.count(b"\n") == 1, "the kill should land in the second episode"
    assert cli.main(argv) == 0  # resumed in this process (shared simulator)
    data = path.read_bytes()
    recs = ResultsStore(path).records()
    assert data.startswith(first) and [r["episode"] for r in recs] == [0, 1]
