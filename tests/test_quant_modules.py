"""quantize_ / calibrate / the nn.Module wrappers / statistics streaming / config round trips."""

import copy
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from vla_ttq.config import QuantConfig, config_hash, load_yaml, save_yaml
from vla_ttq.quant import (ActivationStats, QuantLinear, TTQLinear, activation_aware_loss, calibrate, channel_stat,
                           load_stats, load_ttq_state, quantize_, reset_ttq, save_stats, ttq_qdq, ttq_state)
from vla_ttq.quant.modules import dense_effective_weight
from vla_ttq.quant.report import main as report_main

REPO = Path(__file__).resolve().parents[1]


def toy_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64), nn.GELU(), nn.Linear(64, 32))


def acts(*shape, seed=1):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    x[..., :4] *= 25.0
    return x


def test_quantize_replaces_only_filtered_layers_and_reports_bytes():
    m = toy_model()
    rep = quantize_(m, QuantConfig(method="rtn", bits=2, group=32), filter_fn=lambda mod, name: name != "4")
    assert rep.modules == ["0", "2"]
    assert isinstance(m[0], QuantLinear) and isinstance(m[2], QuantLinear) and type(m[4]) is nn.Linear
    fp_bytes = (64 * 128 + 128 * 64) * 4
    assert rep.bytes_before == fp_bytes
    assert rep.bytes_after == sum(m[i].packed.nbytes for i in (0, 2)) and rep.ratio < 0.1
    assert "2 linear layers quantized" in rep.summary()


def test_static_layer_output_equals_its_dense_effective_weight():
    m = toy_model()
    x = acts(10, 64)
    stats = calibrate(m, [x])
    quantize_(m, QuantConfig(method="awq", bits=3, group=32), calibration=stats)
    lin = m[0]
    assert lin.col_scale is not None
    expected = x @ dense_effective_weight(lin).T + lin.bias
    assert torch.allclose(lin(x), expected, atol=1e-4)


def test_awq_and_ttq_beat_rtn_end_to_end():
    x = acts(256, 64)
    with torch.no_grad():
        ref = toy_model()(x)
    errs = {}
    for method in ("rtn", "awq", "ttq"):
        m = toy_model()
        stats = calibrate(m, [x]) if method == "awq" else None
        quantize_(m, QuantConfig(method=method, bits=3, group=32), calibration=stats)
        with torch.no_grad():
            errs[method] = float((m(x) - ref).pow(2).mean())
    assert errs["awq"] < errs["rtn"] and errs["ttq"] < errs["rtn"]


def test_awq_alpha_search_never_worse_than_rtn_on_calibration_data():
    x = acts(128, 64)
    m = toy_model()
    w = m[0].weight.detach().clone()
    stats = calibrate(m, [x], filter_fn=lambda mod, n: n == "0")
    rep = quantize_(m, QuantConfig(method="awq", bits=2, group=32, lam=0.0), filter_fn=lambda mod, n: n == "0",
                    calibration=stats)
    rtn_m = toy_model()
    quantize_(rtn_m, QuantConfig(method="rtn", bits=2, group=32), filter_fn=lambda mod, n: n == "0")
    loss = lambda lin: activation_aware_loss(w, dense_effective_weight(lin), x)  # noqa: E731
    assert 0.0 <= rep.awq_alpha["0"] <= 1.0
    assert loss(m[0]) <= loss(rtn_m[0]) + 1e-9


def test_ttq_layer_matches_functional_ttq_and_recalibrates_every_call():
    lin = nn.Linear(64, 48)
    cfg = QuantConfig(method="ttq", bits=2, group=32, scale_dtype="float32")
    t = TTQLinear(lin, cfg, "L")
    for seed in (1, 2):
        x = acts(20, 64, seed=seed)
        w_eff = ttq_qdq(lin.weight, x, 2, 32, cfg.p, cfg.lam, cfg.alpha)
        assert torch.allclose(t(x), x @ w_eff.T + lin.bias, atol=1e-4)
    assert t.calibrations == 2


def test_ttq_lowrank_layer_output():
    lin = nn.Linear(64, 64)
    t = TTQLinear(lin, QuantConfig(method="ttq", bits=2, group=32, rank=8, scale_dtype="float32"), "L")
    x = acts(16, 64)
    w_eff = ttq_qdq(lin.weight, x, 2, 32, lowrank=(t.lr_b, t.lr_a))
    assert torch.allclose(t(x), x @ w_eff.T + lin.bias, atol=1e-4)


def test_ttq_episode_mode_calibrates_once_until_reset():
    m = toy_model()
    quantize_(m, QuantConfig(method="ttq", bits=3, group=32, recompute="episode"))
    first, other = acts(8, 64, seed=1), acts(8, 64, seed=2)
    y1 = m(first)
    y_other = m(other)  # reuses the weights calibrated on `first`
    layer = m[0]
    assert layer.calibrations == 1
    m_fresh = copy.deepcopy(m)
    reset_ttq(m_fresh)
    assert not torch.allclose(m_fresh(other), y_other)  # recalibrated on `other` gives a different answer
    assert torch.allclose(m(first), y1)
    # the per-episode calibration can be saved and restored (one per server client)
    snap = ttq_state(m)
    assert snap["0"][0][0] is layer._cache[0][0]  # a snapshot shares the (immutable) calibration: no copy per request
    assert reset_ttq(m) == 3
    m(other)
    load_ttq_state(m, snap)
    assert torch.allclose(m(other), y_other)


def test_per_sample_scope_is_independent_of_batch_composition():
    m = toy_model()
    quantize_(m, QuantConfig(method="ttq", bits=2, group=32, stats_scope="sample"))
    batch = torch.stack([acts(12, 64, seed=s) for s in range(3)])
    alone = m(batch[1])
    assert torch.allclose(m(batch)[1], alone, atol=1e-5)
    m2 = toy_model()
    quantize_(m2, QuantConfig(method="ttq", bits=2, group=32, stats_scope="batch"))
    assert not torch.allclose(m2(batch)[1], alone, atol=1e-5)


def test_ttq_refuses_nan_activation_with_layer_name():
    m = toy_model()
    quantize_(m, QuantConfig(method="ttq", bits=4, group=32))
    x = acts(4, 64)
    x[0, 3] = float("nan")
    with pytest.raises(ValueError, match="activation of layer '0' contains 1 NaN/inf"):
        m(x)


def test_group_mismatch_names_the_layer():
    m = toy_model()
    with pytest.raises(ValueError, match="group size 48 does not divide the input dimension 64 of layer '0'"):
        quantize_(m, QuantConfig(method="rtn", bits=4, group=48))


def test_awq_without_statistics_and_empty_filter_are_errors():
    with pytest.raises(ValueError, match="AWQ needs calibration statistics for layer '0'"):
        quantize_(toy_model(), QuantConfig(method="awq"))
    with pytest.raises(ValueError, match="matched no nn.Linear"):
        quantize_(toy_model(), QuantConfig(method="rtn"), filter_fn=lambda m, n: False)
    with pytest.raises(ValueError, match="never reached"):
        calibrate(toy_model(), lambda: None)


def test_streaming_statistics_equal_one_big_batch(tmp_path):
    chunks = [acts(n, 32, seed=n) for n in (5, 17, 40)]
    st = ActivationStats(32, p=2.0, reservoir=16)
    for c in chunks:
        st.update(c)
    assert st.count == 62 and st.samples.shape == (16, 32)
    assert torch.allclose(st.channel_stat(), channel_stat(torch.cat(chunks)), rtol=1e-5)
    # every reservoir row is a real token of the stream
    full = torch.cat(chunks)
    assert all(bool((full == row).all(dim=1).any()) for row in st.samples)
    save_stats({"layer.a": st}, tmp_path / "s.safetensors")
    back = load_stats(tmp_path / "s.safetensors")["layer.a"]
    assert back.count == 62 and torch.equal(back.samples, st.samples)
    assert torch.allclose(back.channel_stat(), st.channel_stat())
    with pytest.raises(FileNotFoundError, match="calibration statistics file not found"):
        load_stats(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="has 8 channels, statistics expect 32"):
        st.update(torch.ones(2, 8))


def test_p_inf_statistic_is_squared_max():
    x = acts(30, 16)
    st = ActivationStats(16, p=float("inf"), reservoir=0)
    st.update(x[:10])
    st.update(x[10:])
    assert torch.allclose(st.channel_stat(), x.abs().amax(0) ** 2)


def test_config_yaml_round_trip_and_validation(tmp_path):
    cfg = QuantConfig(method="ttq", bits=2, group=64, rank=16, recompute="episode", alpha_grid=(0.0, 0.5))
    save_yaml(cfg, tmp_path / "c.yaml")
    back = load_yaml(QuantConfig, tmp_path / "c.yaml")
    assert back == cfg and config_hash(back) == config_hash(cfg)
    assert config_hash(QuantConfig(bits=3)) != config_hash(QuantConfig(bits=4))
    (tmp_path / "bad.yaml").write_text("method: ttq\nbitz: 3\n")
    with pytest.raises(ValueError, match="unknown QuantConfig field.*bitz"):
        load_yaml(QuantConfig, tmp_path / "bad.yaml")
    for bad, msg in [(dict(method="gptq"), "method must be one of"), (dict(lam=2.0), "lam"),
                     (dict(method="rtn", rank=4), "rank > 0"), (dict(recompute="sometimes"), "recompute")]:
        with pytest.raises(ValueError, match=msg):
            QuantConfig(**bad)


def test_shipped_configs_load():
    files = sorted((REPO / "configs").glob("quant/*.yaml"))
    assert files, "configs/quant/*.yaml missing"
    for f in files:
        load_yaml(QuantConfig, f)


def test_report_command_prints_table(capsys, tmp_path):
    from safetensors.torch import save_file
    w = torch.randn(32, 128)
    save_file({"weight": w, "x": acts(64, 128)}, str(tmp_path / "pair.safetensors"))
    report_main(["--pair", str(tmp_path / "pair.safetensors"), "--bits", "2", "3", "--rank", "4",
                 "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert "| 2 |" in out and "TTQ r=4" in out
    with pytest.raises(SystemExit):
        report_main(["--pair", str(tmp_path / "nope.safetensors")])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_residual_weight_is_exactly_w_minus_ba_in_float32(dtype):
    """residual_weight builds W - BA in place from BA (fewer temporaries): the values must not move."""
    lin = nn.Linear(128, 64).to(dtype)
    layer = TTQLinear(lin, QuantConfig(method="ttq", bits=4, group=32, rank=8))
    want = layer.weight.float() - layer.lr_b.float() @ layer.lr_a.float()
    got = layer.residual_weight()
    assert got.dtype == torch.float32 and torch.equal(got, want)
