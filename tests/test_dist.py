"""Grid configs, work planning and the Ray runner (eval/libero/{grid,distributed,dist_cli}.py).

The Ray test runs real LIBERO episodes with the tiny pi0.5 on two CPU workers, kills a worker in
the middle of a chunk and checks that its episodes are run again and written exactly once.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

from eval.libero.config import CalibConfig, EvalConfig
from eval.libero.distributed import Chunk, WorkQueue, make_chunks, plan_chunks
from eval.libero.grid import GridConfig, deep_merge, format_plan, load_grid, plan_grid, plan_table
from eval.libero.plan import EpisodeItem, plan_items
from eval.libero.results import ResultsStore, episode_key
from vla_ttq.config import QuantConfig

ROOT = Path(__file__).resolve().parents[1]


def test_table13_grid_is_the_papers_grid():
    grid = load_grid(ROOT / "configs/table13.yaml")
    configs = grid.eval_configs()
    assert list(configs) == ["fp", "rtn", "awq_spatial", "awq_object", "awq_goal", "awq_10", "ttq_r0", "ttq_r16"]
    for name, cfg in configs.items():
        assert cfg.suites() == ["spatial", "object", "goal", "10"]
        assert cfg.episodes == 20 and cfg.policy == "lerobot/pi05_libero_finetuned" and not cfg.quantize_expert
        if cfg.method != "fp":
            assert (cfg.quant.bits, cfg.quant.group) == (2, 64), name
    assert {n: c.calib.suite for n, c in configs.items() if c.method == "awq"} == {
        "awq_spatial": "spatial", "awq_object": "object", "awq_goal": "goal", "awq_10": "10"}
    assert (configs["ttq_r0"].quant.rank, configs["ttq_r16"].quant.rank) == (0, 16)
    rows = plan_table(plan_grid(configs))
    assert len(rows) == 8 * 4
    assert all(r["items"] == 200 and r["tasks"] == 10 for r in rows)  # "200 episodes per benchmark"
    assert sum(r["items"] for r in rows) == 6400
    assert format_plan(rows).splitlines()[-1].split()[:2] == ["total", "6400"]


def test_grid_overrides_and_errors(tmp_path):
    base = {"suite": "spatial", "policy": "tiny", "episodes": 3, "quant": {"bits": 2, "group": 64}}
    grid = GridConfig(base=base, runs={"rtn": {"quant": {"method": "rtn"}}, "ttq": {"quant": {"rank": 4}}})
    cfgs = grid.eval_configs({"episodes": 1, "quant": {"bits": 3}})
    assert cfgs["rtn"].quant.method == "rtn" and cfgs["rtn"].quant.bits == 3 and cfgs["rtn"].quant.group == 64
    assert cfgs["ttq"].quant.rank == 4 and cfgs["ttq"].episodes == 1
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}
    with pytest.raises(ValueError, match="grid run 'bad'.*unknown EvalConfig field"):
        GridConfig(base=base, runs={"bad": {"episode": 3}})
    with pytest.raises(ValueError, match="'a' and 'b' are the same evaluation"):
        GridConfig(base=base, runs={"a": {"quant": {"method": "rtn"}}, "b": {"quant": {"method": "rtn"}}})
    with pytest.raises(ValueError, match="non-empty"):
        GridConfig(base=base, runs={})
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({"base": base, "runs": {"x": {}}, "outt": "y"}))
    with pytest.raises(ValueError, match="unknown GridConfig field"):
        load_grid(path)


def _items(run_suite_tasks, episodes=3) -> list[EpisodeItem]:
    return [EpisodeItem(suite=s, task_id=t, episode=e, seed=e, config_hash=h)
            for h, s, t in run_suite_tasks for e in range(episodes)]


def test_chunks_stay_within_a_task():
    items = _items([("h", "10", 0), ("h", "10", 1)], episodes=5)
    chunks = make_chunks("r", items, 2)
    assert [len(c.items) for c in chunks] == [2, 2, 1, 2, 2, 1]
    assert all(len({(i.suite, i.task_id) for i in c.items}) == 1 for c in chunks)
    assert [i for c in chunks for i in c.items] == items
    with pytest.raises(ValueError, match="chunk_size"):
        make_chunks("r", items, 0)


def test_queue_affinity_and_put_back():
    a = make_chunks("a", _items([("ha", "10", 0), ("ha", "10", 1)]), 1)
    b = make_chunks("b", _items([("hb", "10", 0)]), 1)
    q = WorkQueue(a + b)
    assert len(q) == 9 and q.items_left() == 9
    first = q.take()
    assert first.run == "a"  # the run with the most work
    second = q.take(busy=Counter({"a": 1}))
    assert second.run == "b"  # a: 5 left / 2 workers < b: 3 / 1 -- spread workers over runs
    third = q.take(busy=Counter({"a": 1, "b": 1}))
    assert third.run == "a"  # a: 5 / 2 > b: 2 / 2
    nxt = q.take(last=second)
    assert nxt.task == second.task  # same run and task: no new policy, no new simulator
    q.put_back(first)
    assert q.take(last=third) == first  # a lost chunk is first in line for its task
    assert q.take(last=Chunk("a", a[5].items)).task == a[5].task  # ... but a worker keeps its own task
    rest = []
    while (c := q.take()) is not None:
        rest.append(c)
    assert len(rest) + 5 == 9 and len(q) == 0  # 5 taken for good above (first was put back once)


def test_a_run_keeps_its_policy_across_suites_unless_awq_calibrates_per_suite(tmp_path):
    """Workers rebuild pi0.5 when the chunk's policy key changes: never between the suites of a
    fp/RTN/TTQ run (their result hashes differ, by episode length), per suite for AWQ without a
    fixed calibration suite, once for AWQ calibrated on one suite."""
    store = ResultsStore(tmp_path / "episodes.jsonl")

    def keys(method, calib_suite=None):
        cfg = EvalConfig(suite="all", policy="tiny", episodes=1, tasks=(0,), device="cpu",
                         quant=QuantConfig(method=method, bits=2, group=64), calib=CalibConfig(suite=calib_suite))
        chunks, _ = plan_chunks({"r": cfg}, store)
        assert len({c.items[0].config_hash for c in chunks}) > 1
        return {c.policy_key for c in chunks}

    assert len(keys("ttq")) == 1
    assert len(keys("awq")) == 4
    assert keys("awq", "spatial") == {("r", "spatial")}


def test_plan_chunks_skips_what_is_stored(tmp_path):
    cfg = EvalConfig(suite="spatial", policy="tiny", episodes=3, tasks=(0, 1), device="cpu")
    store = ResultsStore(tmp_path / "episodes.jsonl")
    items = plan_items(cfg)
    store.append({**items[1].labels(), "success": True, "steps": 1})
    chunks, skipped = plan_chunks({"x": cfg}, store, chunk_size=2)
    assert skipped == 1
    left = [i for c in chunks for i in c.items]
    assert {episode_key(i) for i in left} == {episode_key(i) for i in items} - {episode_key(items[1])}


def test_dry_run_prints_the_plan(capsys):
    from eval.libero.cli import main

    assert main(["--grid", str(ROOT / "configs/table13.yaml"), "--dry-run", "--episodes", "2"]) == 0
    out = capsys.readouterr().out
    assert "awq_spatial" in out and "ttq_r16" in out
    assert [ln for ln in out.splitlines() if ln.startswith("total")][0].split()[1] == str(8 * 4 * 10 * 2)


def test_cli_rejects_bad_combinations(capsys):
    from eval.libero.cli import main

    with pytest.raises(SystemExit):
        main(["--grid", str(ROOT / "configs/table13.yaml"), "--config", "x.yaml", "--dry-run"])
    assert "--config and --grid" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--grid", "nope.yaml", "--dry-run"])
    assert "grid config not found" in capsys.readouterr().err


# --- Ray ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_local():
    import ray  # the dist extra; scripts/setup.sh installs it

    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    except Exception as e:  # only Ray failing to start skips: everything after it must pass
        pytest.skip(f"Ray cannot start on this machine: {type(e).__name__}: {e}")
    yield ray
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_ray_workers_killed_mid_run_rerun_their_episodes_exactly_once(ray_local, tmp_path):
    from eval.libero.distributed import run_distributed

    ray = ray_local
    cfg = EvalConfig(suite="spatial", policy="tiny", episodes=4, tasks=(0,), max_steps=3, num_steps_wait=0,
                     camera_res=32, device="cpu", cache_dir=str(tmp_path / "cache"), out=str(tmp_path / "out"))
    store = ResultsStore(tmp_path / "out" / "episodes.jsonl")
    killed = []

    def kill_one_in_flight(dispatcher, records):
        if killed:
            return
        refs = [r for r, (_, chunk) in dispatcher.pending.items() if chunk is not None]
        _, running = ray.wait(refs, num_returns=len(refs), timeout=0)
        assert running, "no chunk in flight to kill"
        worker, chunk = dispatcher.pending[running[0]]
        killed.append(chunk)
        ray.kill(worker)

    report = run_distributed({"ttq": cfg}, store, workers=2, progress=False, on_result=kill_one_in_flight)
    assert killed and report.worker_failures == 1
    assert report.requeued_items == len(killed[0].items) >= 1
    assert len(report.workers) >= 2 and {w["device"] for w in report.workers} == {"cpu"}

    lines = [json.loads(ln) for ln in store.path.read_text().splitlines() if ln.strip()]
    planned = {episode_key(i) for i in plan_items(cfg)}
    assert len(lines) == len(planned) == 4  # exactly one line per episode
    assert {episode_key(r) for r in lines} == planned
    assert {episode_key(i) for i in killed[0].items} <= {episode_key(r) for r in lines}
    assert all(r["steps"] == 3 and r["method"] == "ttq" and r["policy"] == "tiny" for r in lines)
    assert report.written == 4 and report.duplicates == 0

    again = run_distributed({"ttq": cfg}, store, workers=2, progress=False)  # resume: nothing left
    assert (again.written, again.skipped, again.workers) == (0, 4, [])
    assert len(store.path.read_text().splitlines()) == 4


def test_ray_worker_errors_are_not_retried(ray_local, tmp_path):
    """A failure inside the episode code is a bug or a bad config: it surfaces, naming the chunk."""
    from eval.libero.distributed import run_distributed

    cfg = EvalConfig(suite="spatial", policy=str(tmp_path / "no_checkpoint_here"), episodes=1, tasks=(0,),
                     device="cpu", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(RuntimeError, match="worker failed on run 'x', suite spatial, task 0"):
        run_distributed({"x": cfg}, ResultsStore(tmp_path / "e.jsonl"), workers=1, progress=False)
    assert not (tmp_path / "e.jsonl").exists()


def test_more_workers_than_the_cluster_has_is_an_error(ray_local, tmp_path):
    from eval.libero.distributed import run_distributed

    cfg = EvalConfig(suite="spatial", policy="tiny", episodes=1, tasks=(0,), device="cpu")
    with pytest.raises(ValueError, match="3 CPU workers need 3 CPUs; the Ray cluster has 2"):
        run_distributed({"x": cfg}, ResultsStore(tmp_path / "e.jsonl"), workers=3, progress=False)
    gpu = EvalConfig(suite="spatial", policy="tiny", episodes=1, tasks=(0,), device="cuda")
    with pytest.raises(ValueError, match="no GPU"):
        run_distributed({"x": gpu}, ResultsStore(tmp_path / "e.jsonl"), workers=1, progress=False)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_grid_cli_on_ray_writes_one_store_and_a_matrix(ray_local, tmp_path, capsys):
    """``python -m eval.libero --grid G --workers 1`` end to end: two runs, one worker, one store."""
    from eval.libero.cli import main

    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({
        "name": "t", "out": str(tmp_path / "out"),
        "base": {"suite": "spatial", "policy": "tiny", "episodes": 1, "tasks": [0], "max_steps": 2,
                 "num_steps_wait": 0, "camera_res": 32, "cache_dir": str(tmp_path / "cache")},
        "runs": {"fp": {"quant": {"method": "fp"}}, "rtn": {"quant": {"method": "rtn", "bits": 4}}}}))
    assert main(["--grid", str(grid), "--workers", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    records = ResultsStore(tmp_path / "out" / "episodes.jsonl").records()
    assert sorted(r["method"] for r in records) == ["fp", "rtn"]
    assert all(r["steps"] == 2 for r in records)
    matrix = {ln.split()[0]: ln.split()[1:] for ln in out.splitlines() if ln.split()[:1] in (["fp"], ["rtn"])}
    assert set(matrix) == {"fp", "rtn"} and all(v[0].endswith("%") and v[1] in ("(0/1)", "(1/1)") for v in matrix.values())
    assert "2 episodes written, 0 already done" in out
    assert len(list((tmp_path / "out" / "configs").glob("spatial-*.yaml"))) == 2
    assert len(list((tmp_path / "out" / "summaries").glob("spatial-*.json"))) == 2
    assert main(["--grid", str(grid), "--workers", "1", "--no-progress"]) == 0  # resumes: nothing to run
    assert "0 episodes written, 2 already done" in capsys.readouterr().out
