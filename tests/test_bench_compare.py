"""vla_ttq.kernels.bench_compare: regressions between two kernel benchmark runs, on files written here."""

import json

import pytest

from vla_ttq.kernels import bench_compare


def _bench(path, device="NVIDIA H100 80GB HBM3", **times):
    """A kernels_bench.json with one Gemma-2B gate/up row at M = 8 (``times``: column -> µs; 'bf16' etc.)
    and one online-quantize row."""
    quantize_us = times.pop("quantize", 30.0)
    row = {"set": "gemma2b", "layer": "gate/up", "N": 16384, "K": 2048, "group": 64, "M": 8}
    row.update({f"{k.replace('_', ' ')} us": v for k, v in times.items()})
    data = {"device": {"name": device}, "matmul": [row],
            "quantize": [{"set": "gemma2b", "layer": "gate/up", "N": 16384, "K": 2048, "group": 64, "bits": 4,
                          "us": quantize_us}]}
    path.write_text(json.dumps(data))
    return path


def test_a_kernel_that_got_slower_is_a_regression_and_exits_1(tmp_path, capsys):
    base = _bench(tmp_path / "a.json", bf16=18.0, W4_r0=15.5, W2_r0=13.6)
    new = _bench(tmp_path / "b.json", bf16=18.2, W4_r0=21.0, W2_r0=13.7)  # run 15's regression
    assert bench_compare.main([str(base), str(new), "--out", str(tmp_path / "r.md")]) == 1
    result = bench_compare.compare(bench_compare.load(base), bench_compare.load(new))
    assert [c["column"] for c in result["regressions"]] == ["W4 r0 us"]
    (reg,) = result["regressions"]
    assert reg["ratio"] == pytest.approx(21.0 / 15.5)
    assert reg["normalised"] == pytest.approx(21.0 / 15.5 / (18.2 / 18.0))
    report = (tmp_path / "r.md").read_text()
    assert "gemma2b gate/up 16384×2048 g64 M=8 | W4 r0 | 15.5 | 21.0" in report
    assert report.strip() in capsys.readouterr().out


def test_a_machine_slower_as_a_whole_is_not_a_regression(tmp_path):
    """Every time 20 % up, bf16 cuBLAS's too: the card, not the kernels."""
    base = _bench(tmp_path / "a.json", bf16=18.0, W4_r0=15.5, int4=12.0)
    new = _bench(tmp_path / "b.json", bf16=21.6, W4_r0=18.6, int4=20.0)
    result = bench_compare.compare(bench_compare.load(base), bench_compare.load(new))
    assert result["regressions"] == []
    assert {c["column"] for c in result["changes"]} == {"W4 r0 us", "quantize us"}  # bf16 and int4 are not ours
    assert bench_compare.main([str(base), str(new)]) == 0


def test_quantize_rows_and_failed_variants(tmp_path):
    base = _bench(tmp_path / "a.json", bf16=18.0, W4_r0=15.5, quantize=30.0)
    new = _bench(tmp_path / "b.json", bf16=18.0, W4_r0=float("inf"), quantize=36.0)  # a variant that failed: inf
    result = bench_compare.compare(bench_compare.load(base), bench_compare.load(new), tolerance=0.1)
    assert [(c["key"][0], c["column"]) for c in result["regressions"]] == [("quantize", "quantize us")]
    assert all(c["column"] != "W4 r0 us" for c in result["changes"])


def test_rows_of_one_run_only_are_listed(tmp_path):
    base = _bench(tmp_path / "a.json", bf16=18.0, W4_r0=15.5)
    data = json.loads(base.read_text())
    data["matmul"][0]["M"] = 16
    (tmp_path / "b.json").write_text(json.dumps(data))
    result = bench_compare.compare(bench_compare.load(base), bench_compare.load(tmp_path / "b.json"))
    assert [k[-1] for k in result["only_base"]] == [8] and [k[-1] for k in result["only_new"]] == [16]
    assert "Only in the baseline: gemma2b gate/up 16384×2048 g64 M=8" in bench_compare.report(result, "a", "b", 0.08)


def test_bad_input_is_named(tmp_path, capsys):
    good = _bench(tmp_path / "a.json", bf16=18.0, W4_r0=15.5)
    other_gpu = _bench(tmp_path / "h200.json", device="NVIDIA H200", bf16=18.0, W4_r0=15.5)
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"rows": []}))
    for args, msg in [([good, tmp_path / "missing.json"], "no such file"), ([good, tmp_path / "bad.json"], "not JSON"),
                      ([good, tmp_path / "other.json"], "not a kernels_bench.json"),
                      ([good, other_gpu], "different GPUs"), ([good, good, "--tolerance", "-1"], "tolerance")]:
        with pytest.raises(SystemExit) as e:
            bench_compare.main([str(a) for a in args])
        assert e.value.code == 2
        assert msg in capsys.readouterr().err
    assert bench_compare.main([str(good), str(other_gpu), "--cross-device"]) == 0
