"""eval.libero pieces that need no simulator: results store, plan, config, CLI errors, report."""

from __future__ import annotations

import csv
import json
import multiprocessing as mp

import numpy as np
import pytest

from eval import report
from eval.libero import cli
from eval.libero.config import EvalConfig
from eval.libero.env import quat_to_axis_angle
from eval.libero.plan import EpisodeItem, plan_items
from eval.libero.results import ResultsStore, episode_key, load_records
from vla_ttq.config import QuantConfig, load_yaml, save_yaml


def rec(task=0, ep=0, h="h1", suite="10", success=True, **kw):
    return {"config_hash": h, "suite": suite, "task_id": task, "episode": ep, "success": success, "steps": 7, **kw}


# --- results store ------------------------------------------------------------------------------
def test_store_appends_once_per_key_and_reads_back(tmp_path):
    store = ResultsStore(tmp_path / "r" / "episodes.jsonl")
    assert store.done_keys() == set() and store.records() == []
    assert store.append(rec(0, 0)) is True
    assert store.append(rec(0, 0, success=False)) is False  # same key: nothing written
    assert store.append(rec(0, 1)) is True and store.append(rec(0, 0, h="h2")) is True
    assert [r["success"] for r in store.records()] == [True, True, True]
    assert store.done_keys() == {("h1", "10", 0, 0), ("h1", "10", 0, 1), ("h2", "10", 0, 0)}
    assert len(store.path.read_text().splitlines()) == 3


def test_store_cuts_a_torn_last_line_and_keeps_complete_ones(tmp_path):
    store = ResultsStore(tmp_path / "e.jsonl")
    store.append(rec(0, 0))
    first = store.path.read_bytes()
    with open(store.path, "ab") as f:
        f.write(b'{"config_hash": "h1", "suite": "10", "task_id": 0, "epis')  # killed mid-write
    assert store.done_keys() == {("h1", "10", 0, 0)}
    assert store.append(rec(0, 1)) is True
    data = store.path.read_bytes()
    assert data.startswith(first) and data.count(b"\n") == 2 and b"epis'" not in data
    assert [r["episode"] for r in store.records()] == [0, 1]


def test_store_rejects_bad_records_and_corrupt_files(tmp_path):
    store = ResultsStore(tmp_path / "e.jsonl")
    with pytest.raises(ValueError, match="lacks"):
        store.append({"suite": "10"})
    store.path.write_text("not json\n")
    with pytest.raises(ValueError, match="corrupt record"):
        store.records()
    with pytest.raises(ValueError, match="directory"):
        ResultsStore(tmp_path)


def _hammer(path: str, worker: int) -> int:
    store = ResultsStore(path)
    return sum(store.append(rec(t, e, worker=worker)) for t in range(4) for e in range(5))


def test_store_concurrent_processes_never_duplicate(tmp_path):
    path = str(tmp_path / "e.jsonl")
    with mp.get_context("fork").Pool(3) as pool:
        wrote = pool.starmap(_hammer, [(path, w) for w in range(3)])
    assert sum(wrote) == 20
    keys = [episode_key(r) for r in ResultsStore(path).records()]
    assert len(keys) == len(set(keys)) == 20


def test_episode_key_of_items_and_records_agree():
    item = EpisodeItem(suite="10", task_id=3, episode=4, seed=1, config_hash="abc")
    assert episode_key(item) == episode_key(rec(3, 4, h="abc")) == ("abc", "10", 3, 4)
    with pytest.raises(ValueError):
        episode_key({"suite": "10"})


# --- plan and config ---------------------------------------------------------------------------
def test_plan_order_seeds_and_protocol():
    cfg = EvalConfig(policy="tiny", suite="all", tasks=(1, 0), episodes=2)
    items = plan_items(cfg)
    assert [(i.suite, i.task_id, i.episode) for i in items[:4]] == [("spatial", 0, 0), ("spatial", 0, 1),
                                                                    ("spatial", 1, 0), ("spatial", 1, 1)]
    assert len(items) == 16 and len({episode_key(i) for i in items}) == 16
    assert {i.suite: i.max_steps for i in items} == {"spatial": 280, "object": 280, "goal": 300, "10": 520}
    assert len({i.seed for i in items if i.suite == "10"}) == 4
    assert items[-1].prompt and items[-1].task_name and items[-1].method == "ttq" and items[-1].bits == 2


def test_result_hash_ignores_execution_and_tracks_what_changes_outcomes():
    base = EvalConfig(policy="tiny")
    same = [base.with_(episodes=3), base.with_(tasks=(2,)), base.with_(n_envs=4, device="cuda", out="x", video=True, fast=True)]
    assert {c.result_hash("10") for c in same} == {base.result_hash("10")}
    differ = [base.with_(quant=QuantConfig(method="ttq", bits=3, group=64)), base.with_(seed=1),
              base.with_(max_steps=10), base.with_(camera_res=224), base.with_(policy="other/ckpt")]
    assert len({c.result_hash("10") for c in differ} | {base.result_hash("10")}) == len(differ) + 1
    awq = base.with_(quant=QuantConfig(method="awq", bits=2, group=64))
    cross = awq.with_(calib=awq.calib.__class__(suite="spatial"))
    assert awq.result_hash("10") != cross.result_hash("10")
    assert awq.calib_suite_for("10") == "10" and cross.calib_suite_for("10") == "spatial"


def test_eval_config_yaml_roundtrip(tmp_path):
    cfg = EvalConfig(policy="tiny", suite="goal", tasks=(0, 2), quant=QuantConfig(method="awq", bits=3, group=32))
    save_yaml(cfg, tmp_path / "c.yaml")
    back = load_yaml(EvalConfig, tmp_path / "c.yaml")
    assert back == cfg and back.result_hash("goal") == cfg.result_hash("goal")


# --- CLI errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, needle", [
    (["--suite", "20"], "argument --suite: invalid choice: '20'"),
    (["--method", "gptq"], "argument --method: invalid choice: 'gptq'"),
    (["--bits", "0"], "argument --bits: 0 is out of range [1, 8]"),
    (["--group", "x"], "argument --group: expected an integer, got 'x'"),
    (["--episodes", "51"], "argument --episodes: 51 is out of range [1, 50]"),
    (["--tasks", "a,b"], "argument --tasks: expected task ids"),
    (["--n-envs", "0"], "argument --n-envs"),
    (["--max-failures", "-1"], "argument --max-failures: -1 is out of range [0, inf)"),
    (["--workers", "0"], "argument --workers: 0 is out of range [1, inf)"),
    (["--policy", "tiny", "--tasks", "12", "--dry-run"], "task id(s) [12] out of range for suite '10'"),
    (["--method", "rtn", "--rank", "16", "--policy", "tiny"], "rank > 0"),
    (["--policy", "/no/such/checkpoint"], "checkpoint directory not found: /no/such/checkpoint"),
    (["--policy", "tiny", "--method", "awq", "--calib-dataset", "/no/libero"], "calibration data set not found"),
    (["--policy", "tiny", "--calib-suite", "spatial"], "--calib-suite applies to --method awq only (method is 'ttq')"),
])
def test_bad_flags_give_clear_errors(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    assert needle in capsys.readouterr().err


def test_flags_override_yaml_and_preset(tmp_path):
    save_yaml(EvalConfig(policy="tiny", suite="goal", episodes=5, quant=QuantConfig(method="awq", bits=4)),
              tmp_path / "c.yaml")
    cfg = cli.config_from_args(cli.build_parser().parse_args(
        ["--config", str(tmp_path / "c.yaml"), "--bits", "3", "--preset", "smoke", "--calib-suite", "spatial"]))
    assert (cfg.suite, cfg.quant.method, cfg.quant.bits, cfg.calib.suite) == ("goal", "awq", 3, "spatial")
    assert cfg.tasks == (0,) and cfg.max_steps == 30  # preset fills what neither YAML nor flags changed...
    assert cfg.episodes == 1  # ...its values win over the YAML's


# --- protocol detail ---------------------------------------------------------------------------
def test_axis_angle_matches_robosuite():
    from robosuite.utils.transform_utils import quat2axisangle

    rng = np.random.default_rng(0)
    for q in list(rng.normal(size=(20, 4))) + [np.array([0.0, 0.0, 0.0, 1.0])]:
        q = q / np.linalg.norm(q)
        np.testing.assert_allclose(quat_to_axis_angle(q), quat2axisangle(q.copy()), atol=1e-6)


# --- report -------------------------------------------------------------------------------------
def _table13_records():
    rng = np.random.default_rng(0)
    rows = [dict(method="fp", bits=None, group=None, rank=None, calib_suite=None, dtype="bfloat16", p=0.95),
            dict(method="rtn", bits=2, group=64, rank=None, calib_suite=None, p=0.3),
            dict(method="awq", bits=2, group=64, rank=None, calib_suite="spatial", p=0.8),
            dict(method="awq", bits=2, group=64, rank=None, calib_suite="goal", p=0.85),
            dict(method="ttq", bits=2, group=64, rank=0, calib_suite=None, p=0.9),
            dict(method="ttq", bits=2, group=64, rank=16, calib_suite=None, p=0.92)]
    out = []
    for i, row in enumerate(rows):
        p = row.pop("p")
        for suite in ("spatial", "object", "goal", "10"):
            for t in range(2):
                for e in range(5):
                    out.append(rec(t, e, h=f"h{i}{suite}", suite=suite, success=bool(rng.random() < p),
                                   policy="tiny", **row))
    return out


def test_report_writes_table13_markdown_csv_and_png(tmp_path):
    recs = _table13_records()
    store = ResultsStore(tmp_path / "run" / "episodes.jsonl")
    for r in recs:
        store.append(r)
    assert report.main([str(tmp_path / "run"), "--out", str(tmp_path / "t13")]) == 0
    md = (tmp_path / "t13.md").read_text()
    labels = ["BF16", "RTN", "AWQ (Spatial Calib)", "AWQ (Goal Calib)", "TTQ (r = 0)", "TTQ (r = 16)"]
    lines = md.splitlines()
    assert lines[0] == "| Method | Libero Spatial | Libero Object | Libero Goal | Libero 10 | Avg |"
    assert [ln.split("|")[1].strip() for ln in lines[2:8]] == labels
    # every cell recomputed from the records
    rows = list(csv.DictReader(open(tmp_path / "t13.csv")))
    for row, label in zip(rows, labels):
        sub = [r for r in recs if report.row_label(report.row_key(r), False, False) == label]
        rates = []
        for suite in ("spatial", "object", "goal", "10"):
            s = [r["success"] for r in sub if r["suite"] == suite]
            rates.append(sum(s) / len(s))
            assert float(row[f"{suite}_success_rate"]) == pytest.approx(rates[-1], abs=1e-4)
            assert int(row[f"{suite}_episodes"]) == 10
        assert float(row["avg"]) == pytest.approx(np.mean(rates), abs=1e-4)
    assert (tmp_path / "t13.png").read_bytes()[:4] == b"\x89PNG"
    best = max(float(r["10_success_rate"]) for r in rows[1:])
    assert f"**{100 * best:.1f}% (10)**" in md


def test_report_errors_on_missing_inputs(tmp_path, capsys):
    with pytest.raises(SystemExit):
        report.main([str(tmp_path / "nothing")])
    assert "no results file or directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        report.main([str(tmp_path / "empty")])
    assert "no episode records" in capsys.readouterr().err


def test_load_records_deduplicates_across_files(tmp_path):
    for name in ("a", "b"):
        s = ResultsStore(tmp_path / name / "episodes.jsonl")
        s.append(rec(0, 0))
        s.append(rec(0, 1 if name == "a" else 2))
    assert sorted(r["episode"] for r in load_records([tmp_path])) == [0, 1, 2]
    assert json.loads((tmp_path / "a" / "episodes.jsonl").read_text().splitlines()[0])["episode"] == 0


def test_summary_per_suite_and_task(capsys):
    from eval.libero.summary import print_summary, summarize

    labels = dict(method="ttq", bits=2, group=64, rank=0, policy="p")
    recs = [{**rec(0, 0, success=True, **labels), "task": "t0"}, {**rec(0, 1, success=False, **labels), "task": "t0"},
            {**rec(3, 0, success=True, **labels), "task": "t3"},
            {**rec(0, 0, suite="goal", success=False, **labels), "task": "g0"}]
    by_suite = {e["suite"]: e for e in summarize(recs)}
    ten = by_suite["10"]
    assert (ten["episodes"], ten["successes"]) == (3, 2) and ten["success_rate"] == pytest.approx(2 / 3)
    assert [(t["task_id"], t["episodes"], t["success_rate"]) for t in ten["tasks"]] == [(0, 2, 0.5), (3, 1, 1.0)]
    assert by_suite["goal"]["success_rate"] == 0.0
    print_summary([ten])
    out = capsys.readouterr().out
    assert "TTQ w2 g64 r=0" in out and "[h1]" in out and "66.7%" in out and "50.0%" in out


def test_summaries_cover_the_planned_episodes_only(tmp_path):
    """A shorter rerun of a config reports its own episodes, not those of a longer earlier run."""
    from eval.libero.summary import summarize_planned

    store = ResultsStore(tmp_path / "episodes.jsonl")
    for ep in range(4):
        store.append(rec(0, ep, success=ep == 0))
    planned = [EpisodeItem(suite="10", task_id=0, episode=ep, seed=ep, config_hash="h1") for ep in range(2)]
    (entry,) = summarize_planned(store, planned, tmp_path)
    assert (entry["episodes"], entry["successes"]) == (2, 1)
    saved = json.loads((tmp_path / "summaries" / "10-h1.json").read_text())
    assert saved["episodes"] == 2


def test_store_sees_other_writers_and_a_replaced_file_between_appends(tmp_path):
    """Appends read only what was added since the last one: other writers' records still count,
    and a deleted or rewritten file is read again from its start."""
    a, b = ResultsStore(tmp_path / "e.jsonl"), ResultsStore(tmp_path / "e.jsonl")
    assert a.append(rec(0, 0)) and b.append(rec(0, 1))
    assert a.append(rec(0, 1)) is False and b.append(rec(0, 0)) is False
    assert a.append(rec(0, 2)) and b.append(rec(0, 2)) is False
    a.path.unlink()
    assert b.append(rec(0, 0)) is True  # the old file's keys are gone with it
    a.path.write_text("")  # cut to nothing (same file)
    assert a.append(rec(0, 0)) is True
    assert [r["episode"] for r in a.records()] == [0]


@pytest.mark.parametrize("argv, needle", [(["--steps", "0"], "argument --steps: 0 is out of range"),
                                          (["--resets", "0"], "argument --resets: 0 is out of range"),
                                          (["--camera-res", "8"], "argument --camera-res: 8 is out of range")])
def test_timing_tool_rejects_counts_that_measure_nothing(argv, needle, capsys):
    from eval.libero.timing import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and needle in capsys.readouterr().err
