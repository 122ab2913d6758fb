"""The fast sampler computes what the plain path computes; TTQ's host-master memory mode; the bench CLI."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from contract_obs import make_obs

from vla_ttq.config import QuantConfig
from vla_ttq.models.fast import FastSampler, ttq_call_forward
from vla_ttq.models.quantize import quant_filter
from vla_ttq.models.tiny import build_random_model, make_tiny_checkpoint, tiny_config
from vla_ttq.models import load_policy
from vla_ttq.quant import offload_ttq_masters, quantize_, reset_ttq
from vla_ttq.quant.modules import TTQLinear
from vla_ttq.quant.packing import PackedWeight
from vla_ttq.kernels import reference

B = 2


@pytest.fixture(scope="module")
def root(tiny_dir):
    return load_policy(tiny_dir).root


def _inputs(cfg, seed: int, batch: int = B):
    g = torch.Generator().manual_seed(seed)
    length = cfg.tokenizer_max_length
    images = [torch.rand(batch, 3, *cfg.image_resolution, generator=g) * 2 - 1 for _ in range(2)]
    masks = [torch.ones(batch, dtype=torch.bool), torch.tensor([True, False][:batch])]  # 2nd camera missing once
    tokens = torch.randint(0, cfg.language.vocab_size, (batch, length), generator=g)
    token_masks = torch.zeros(batch, length, dtype=torch.bool)
    for i in range(batch):
        token_masks[i, : 20 + 17 * i] = True  # different prompt lengths: positions differ per sample
    noise = torch.randn(batch, cfg.chunk_size, cfg.max_action_dim, generator=g)
    return images, masks, tokens, token_masks, noise


def _close(a, b):
    # fp32 through the denoising steps in another op order (fused q/k/v and gate/up, static buffers):
    # last-bit differences add up. 1e-5 failed once on the 2-core CI machine under load (1.3e-5 on one
    # element of 3200: CPU GEMMs block differently with fewer free threads); a real mistake is O(0.1)
    torch.testing.assert_close(a, b, rtol=5e-5, atol=5e-5)


def test_fast_equals_plain_full_precision(root):
    model = copy.deepcopy(root).model
    inp = _inputs(model.config, 1)
    ref = model.sample_actions(*inp)
    sampler = FastSampler(model, B, 2, model.config.tokenizer_max_length)
    _close(sampler(*inp), ref)
    other = _inputs(model.config, 2)  # the static buffers really take the new inputs
    _close(sampler(*other), model.sample_actions(*other))
    assert not torch.allclose(model.sample_actions(*other), ref)


def test_fusion_shares_storage_and_keeps_plain_path(root):
    model = copy.deepcopy(root).model
    inp = _inputs(model.config, 3)
    ref = model.sample_actions(*inp)
    FastSampler(model, B, 2, model.config.tokenizer_max_length, fuse=True)
    attn = model.language_model.layers[0].self_attn
    assert attn.q_proj.weight.untyped_storage().data_ptr() == attn.v_proj.weight.untyped_storage().data_ptr()
    _close(model.sample_actions(*inp), ref)


@pytest.mark.parametrize("quant,weights", [
    (dict(method="rtn", bits=4), "dense"),
    (dict(method="rtn", bits=2), "packed"),
    (dict(method="ttq", bits=4, rank=4, recompute="call"), "dense"),
    (dict(method="ttq", bits=2, rank=0, recompute="call", stats_scope="batch"), "dense"),
    (dict(method="ttq", bits=4, rank=4, recompute="episode"), "dense"),
    (dict(method="ttq", bits=4, rank=4, recompute="episode", stats_scope="batch"), "dense"),
    (dict(method="ttq", bits=2, rank=0, recompute="episode", stats_scope="batch"), "packed"),
])
def test_fast_equals_plain_quantized(root, quant, weights):
    r = copy.deepcopy(root)
    model = r.model
    quantize_(r, QuantConfig(group=32, check_finite=False, **quant), quant_filter(quantize_expert=True))
    episode = quant.get("recompute") == "episode"
    inp, other = _inputs(model.config, 4), _inputs(model.config, 5)
    ref, ref_other = model.sample_actions(*inp), model.sample_actions(*other)  # calibrates on inp (episode)
    reset_ttq(r)
    sampler = FastSampler(model, B, 2, model.config.tokenizer_max_length, weights=weights)
    if quant.get("recompute") == "call":
        # D comes from each call's activation, which the fast path reproduces only to float32 rounding;
        # a rounding-level change moves the few weights sitting on a rounding boundary to the next code
        # (a handful per call), so end to end the paths agree to well under the error quantization itself
        # makes (the layer is checked exactly in
        # test_ttq_call_forward_is_the_layer)
        rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
        for x, want in ((inp, ref), (other, ref_other)):
            got = sampler(*x).clone()
            assert rel(got, want) < 0.25 * rel(want, root.model.sample_actions(*x))
        return
    _close(sampler(*inp), ref)  # episode: this call calibrates through the plain path
    _close(sampler(*other), ref_other)  # served by the sampler's own path
    # one dense weight per layer (static methods, or TTQ episode with one D per batch): q/k/v fused
    assert all(g.fused is not None for g in sampler.groups) == (weights == "dense" and (
        not episode or quant.get("stats_scope") == "batch"))
    assert sampler.calibrations == int(episode)
    if episode:  # a new episode re-calibrates and the sampler follows
        reset_ttq(r)
        new = model.sample_actions(*other)
        reset_ttq(r)
        _close(sampler(*other), new)
        _close(sampler(*inp), model.sample_actions(*inp))
        assert sampler.calibrations == 2


@pytest.mark.parametrize("rank,bits", [(0, 2), (4, 4)])
def test_ttq_call_forward_is_the_layer(rank, bits):
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48, bias=True)
    cfg = QuantConfig(method="ttq", bits=bits, group=32, rank=rank, recompute="call", stats_scope="batch")
    layer = TTQLinear(lin, cfg, "l")
    x = torch.randn(3, 10, 64) * torch.linspace(0.1, 3, 64)
    torch.testing.assert_close(ttq_call_forward(layer, x), layer(x), rtol=0, atol=1e-6)


def test_fast_equals_plain_through_triton_backend(root):
    """Packed static layers through the Triton kernels (CPU interpreter here, compiled on a GPU)."""
    pytest.importorskip("triton")
    r = copy.deepcopy(root)
    model = r.model
    quantize_(r, QuantConfig(method="rtn", bits=2, group=32, backend="triton"), quant_filter(quantize_expert=True))
    inp = _inputs(model.config, 9)
    sampler = FastSampler(model, B, 2, model.config.tokenizer_max_length, weights="packed")
    _close(sampler(*inp), model.sample_actions(*inp))


def test_per_call_ttq_groups_run_as_one_layer_through_triton(root):
    """q/k/v and gate/up of per-call TTQ: one column scale, one quantize pass, one matmul per group,
    the same codes as layer by layer (same x, same s; quantization is row-wise). Rank 4 (a
    block-diagonal B) and one calibration per sample; two denoising steps keep the interpreter short."""
    pytest.importorskip("triton")
    r = copy.deepcopy(root)
    model = r.model
    quantize_(r, QuantConfig(method="ttq", bits=3, group=32, rank=4, recompute="call", stats_scope="sample",
                             backend="triton", check_finite=False), quant_filter(quantize_expert=True))
    inp = _inputs(model.config, 14)
    length = model.config.tokenizer_max_length
    attn = model.language_model.layers[0].self_attn
    q_weight = attn.q_proj.weight.detach().clone()
    separate = FastSampler(model, B, 2, length, num_steps=2, fuse=False)(*inp).clone()
    sampler = FastSampler(model, B, 2, length, num_steps=2, fuse=True)
    assert all(g.ttq is not None for g in sampler.groups)
    assert attn.q_proj.weight.untyped_storage().data_ptr() == attn.v_proj.weight.untyped_storage().data_ptr()
    assert torch.equal(attn.q_proj.weight, q_weight)  # re-pointed at the stacked weight, same values
    before = attn.q_proj.calibrations
    _close(sampler(*inp), separate)
    assert attn.q_proj.calibrations == before + B  # one calibration per sample, as layer by layer


def test_sampler_rejects_wrong_inputs(root):
    model = copy.deepcopy(root).model
    sampler = FastSampler(model, B, 2, model.config.tokenizer_max_length)
    images, masks, tokens, token_masks, noise = _inputs(model.config, 6)
    with pytest.raises(ValueError, match="tokens must have shape"):
        sampler(images, masks, tokens[:, :5], token_masks[:, :5], noise)
    with pytest.raises(ValueError, match="2 cameras"):
        sampler(images[:1], masks[:1], tokens, token_masks, noise)
    with pytest.raises(ValueError, match="weights must be"):
        FastSampler(model, B, 2, 8, weights="int4")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        FastSampler(model, B, 2, 8, cuda_graph=True)


def _ttq(root, **kw):
    r = copy.deepcopy(root)
    quantize_(r, QuantConfig(method="ttq", bits=2, group=32, rank=4, recompute="episode", **kw),
              quant_filter(quantize_expert=True))
    return r


def test_host_master_equals_episode_mode(root):
    normal, offl = _ttq(root), _ttq(root)
    n_params = sum(p.numel() for p in offl.parameters())
    assert offload_ttq_masters(offl, pin_memory=False) == 4 * 7
    layers = [m for m in offl.modules() if isinstance(m, TTQLinear)]
    assert all(m.master_on_host and "weight" not in dict(m.named_parameters()) for m in layers)
    assert sum(p.numel() for p in offl.parameters()) == n_params - sum(m.weight.numel() for m in layers)
    inp = _inputs(root.model.config, 7)
    _close(offl.model.sample_actions(*inp), normal.model.sample_actions(*inp))
    for a, b in zip(layers, [m for m in normal.modules() if isinstance(m, TTQLinear)]):
        (pa, sa), (pb, sb) = a._cache[0], b._cache[0]
        assert torch.equal(pa.data, pb.data) and torch.equal(pa.scale, pb.scale) and torch.equal(sa, sb)
    # a new episode re-quantizes from the host master, with the fast sampler as well
    other = _inputs(root.model.config, 8)
    reset_ttq(offl), reset_ttq(normal)
    sampler = FastSampler(offl.model, B, 2, root.model.config.tokenizer_max_length, weights="packed")
    _close(sampler(*other), normal.model.sample_actions(*other))
    _close(sampler(*inp), normal.model.sample_actions(*inp))


def test_host_master_refuses_per_call_recompute(root):
    r = copy.deepcopy(root)
    quantize_(r, QuantConfig(method="ttq", bits=4, group=32, recompute="call"), quant_filter())
    with pytest.raises(ValueError, match="recompute='episode'"):
        offload_ttq_masters(r)
    with pytest.raises(ValueError, match="no TTQ layer"):
        offload_ttq_masters(copy.deepcopy(root))


def test_build_random_model_dtypes():
    r = build_random_model(tiny_config(), dtype=torch.bfloat16, seed=1)
    m = r.model
    assert m.language_model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    assert m.paligemma_with_expert.paligemma.model.vision_tower.vision_model.embeddings.patch_embedding.weight.dtype \
        == torch.float32
    assert m.action_in_proj.weight.dtype == torch.float32
    assert not any(t.is_meta for t in r.state_dict().values())
    assert torch.isfinite(m.language_model.layers[0].mlp.up_proj.weight.float()).all()


def test_bench_cli_tiny(tmp_path):
    from vla_ttq.bench.cli import main

    result = main(["--preset", "tiny", "--device", "cpu", "--batch", "1", "--reps", "2", "--budget", "0",
                   "--only", r"^bf16$|^rtn W2 LM\+expert packed$|^ttq W4 r0 episode LM\+expert$",
                   "--out", str(tmp_path), "--stem", "t"])
    rows = json.loads((tmp_path / "t.json").read_text())["rows"]
    assert [r["mode"] for r in rows] == [r["mode"] for r in result["rows"]]
    assert {r["mode"] for r in rows} == {"bf16", "rtn W2 LM+expert packed", "ttq W4 r0 episode LM+expert"}
    assert all("error" not in r and r["ms_median"] > 0 for r in rows)
    bf16 = next(r for r in rows if r["mode"] == "bf16")
    rtn = next(r for r in rows if r["method"] == "rtn")
    assert rtn["block_linears_bytes"] < 0.3 * bf16["block_linears_bytes"]
    assert next(r for r in rows if r["method"] == "ttq")["calibration_ms"] > 0
    assert (tmp_path / "t.md").read_text().startswith("# pi0.5 benchmark (tiny)")


def test_compiled_glue_equals_eager():
    from vla_ttq.models.fast import Glue

    eager, comp = Glue(False), Glue(True)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 5, n, 8, generator=g) for n in (4, 2, 2))
    mask = torch.where(torch.rand(1, 1, 5, 5, generator=g) > 0.3, 0.0, -1e30)
    torch.testing.assert_close(comp.attention(q, k, v, mask), eager.attention(q, k, v, mask))
    x = torch.randn(2, 5, 16, generator=g)
    s1, sh = torch.rand(2, 1, 16, generator=g), torch.randn(2, 1, 16, generator=g)
    torch.testing.assert_close(comp.ada(x, 1e-6, s1, sh), eager.ada(x, 1e-6, s1, sh))


def test_policy_fast_sampler_same_actions(tmp_path):
    import numpy as np

    from vla_ttq.models import load_policy

    d = make_tiny_checkpoint(tmp_path / "ck", seed=3)
    plain, fast = load_policy(d), load_policy(d, fast=True)
    assert fast.metadata["fast_sampler"] and not plain.metadata["fast_sampler"]
    obs = [make_obs(i, side=256) for i in range(2)]
    noise = plain.sample_noise(2)
    np.testing.assert_allclose(fast.predict_chunk(obs, noise=noise), plain.predict_chunk(obs, noise=noise),
                               rtol=1e-5, atol=1e-5)
    assert list(fast._samplers) == [(2, 2, plain.config.tokenizer_max_length)]
    # AWQ statistics still see every layer (collected through the plain path), quantizing drops the samplers
    stats = fast.collect_stats(obs)
    assert len(stats) == 14 and fast._fast is not None
    qc = QuantConfig(method="ttq", bits=4, group=32, recompute="episode")
    for p in (plain, fast):
        p.quantize(qc, quantize_expert=True)
    assert not fast._samplers
    for episode in range(2):  # each episode re-calibrates on its first call, in both
        plain.reset(), fast.reset()
        for step in range(2):
            batch = [make_obs(10 * episode + step + i, side=256) for i in range(2)]
            noise = plain.sample_noise(2)
            np.testing.assert_allclose(fast.predict_chunk(batch, noise=noise), plain.predict_chunk(batch, noise=noise),
                                       rtol=1e-5, atol=1e-5)
    assert next(iter(fast._samplers.values())).calibrations == 2


@dataclasses.dataclass
class _DerivedPackedWeight(PackedWeight):
    """Like torch_int4's / Marlin's weights: the matmul reads a copy in the backend's own layout
    (here the dequantized weight), made from the codes at pack time."""

    derived: torch.Tensor | None = None


def _derived_pack(*args):
    p = reference.quantize_pack(*args)
    return _DerivedPackedWeight(p.data, p.scale, p.zero, p.bits, p.group, p.shape, p.dequantize())


def _derived_matmul(x, packed, col_scale=None, lowrank=None, bias=None):
    y = torch.nn.functional.linear(x, (packed.derived / col_scale).to(x.dtype), bias)
    return y if lowrank is None else y + reference.lowrank_term(x, lowrank)


@pytest.fixture
def derived_backend(monkeypatch):
    """A backend "derived" (explicit use only), registered for one test."""
    from vla_ttq.kernels import dispatch

    monkeypatch.setattr(dispatch, "_BACKENDS", dict(dispatch._BACKENDS))
    monkeypatch.setattr(dispatch, "_AUTO_ORDER", list(dispatch._AUTO_ORDER))
    dispatch.register_backend("derived", lambda device, bits, group: True, _derived_matmul, _derived_pack,
                              auto_ok=lambda device: False)
    return "derived"


@pytest.mark.parametrize("weights,backend", [("dense", "auto"), ("packed", "auto"), ("packed", "derived")])
def test_sampler_follows_swapped_ttq_states(root, weights, backend, request):
    """A server keeps one calibration per client (ttq_state / load_ttq_state); the sampler must serve
    the one loaded, and refreshing its graph copies in place must not alter a saved snapshot. With
    "derived", the backend's weight holds a layout copy beyond the codes, which must follow too."""
    from vla_ttq.quant import load_ttq_state, ttq_state

    if backend == "derived":
        request.getfixturevalue("derived_backend")
    r = _ttq(root, stats_scope="batch", backend=backend)
    model, length = r.model, root.model.config.tokenizer_max_length
    a, b, probe = _inputs(model.config, 11), _inputs(model.config, 12), _inputs(model.config, 13)
    sampler = FastSampler(model, B, 2, length, weights=weights)
    sampler(*a)  # client A's episode starts: calibrates on a
    want_a = model.sample_actions(*probe)
    state_a = ttq_state(r)
    reset_ttq(r)
    sampler(*b)  # client B's episode starts
    want_b = model.sample_actions(*probe)
    state_b = ttq_state(r)
    fresh = _ttq(root, stats_scope="batch", backend=backend).model  # B's calibration made from scratch
    fresh.sample_actions(*b)
    _close(want_b, fresh.sample_actions(*probe))  # the in-place refresh left nothing of A behind
    load_ttq_state(r, state_a)
    _close(sampler(*probe), want_a)
    load_ttq_state(r, state_b)
    _close(sampler(*probe), want_b)
    load_ttq_state(r, state_a)  # A's snapshot survived B's in-place refresh
    _close(sampler(*probe), want_a)
    assert sampler.calibrations == 2


def test_targets_are_judged_from_the_rows():
    from vla_ttq.bench.report import targets

    def row(**kw):
        base = dict(batch=1, method="fp", dtype="bfloat16", engine="fast", tf32=False, compiled=False, rank=0,
                    weights="dense", host_master=False)
        return {**base, **kw}

    rows = [row(method="lerobot", ms_median=240.0),
            row(ms_median=40.0, weights_bytes=8e9, block_linears_bytes=4.6e9),
            row(tf32=True, compiled=True, ms_median=25.0),
            row(method="ttq", bits=4, recompute="episode", scope="backbone+expert", ms_median=40.5),
            row(method="rtn", bits=2, scope="backbone+expert", weights="packed", ms_median=45.0,
                weights_bytes=4e9, block_linears_bytes=1.4e9)]
    t = {x["target"]: x for x in targets(rows)}
    speed = t["our bf16 call at B=1 <= 1/8 of lerobot's time (same run)"]
    assert speed["met"] is False and speed["speedup"] == pytest.approx(6.0)
    assert t["our bf16+tf32 compiled call at B=1 <= 1/8 of lerobot's time (same run)"]["met"] is True
    ttq = next(v for k, v in t.items() if k.startswith("TTQ W4"))
    assert ttq["met"] is False and ttq["slower_by"] == pytest.approx(0.0125)  # "no slower": strictly
    mem = t["GPU weight memory >= 70 % smaller at W2, LM+expert (packed RTN W2)"]
    assert mem["block_linears_reduction"] == pytest.approx(1 - 1.4 / 4.6) and mem["met"] is False
    assert mem["whole_model_reduction"] == pytest.approx(0.5)
    assert t["GPU weight memory >= 70 % smaller at W2, LM+expert (TTQ W2 host-master)"]["met"] is None


def test_weight_bytes_count_a_backends_layout_copy(derived_backend):
    """Device memory of a TTQ layer includes every tensor of its calibration, the backend's copy too."""
    from vla_ttq.bench.measure import weight_bytes

    m = TTQLinear(torch.nn.Linear(64, 32, bias=False),
                  QuantConfig(method="ttq", bits=4, group=32, recompute="episode", backend=derived_backend))
    m(torch.randn(3, 64))
    packed, s = m._cache[0]
    want = sum(t.untyped_storage().nbytes() for t in (m.weight, *packed.tensors().values(), s))
    assert packed.derived is not None
    assert weight_bytes(torch.nn.Sequential(m), [], torch.device("cpu"))["weights"] == want


def test_switch_sensitivity_script_runs_on_the_tiny_model_and_names_a_bad_switch(tmp_path, load_script):
    """scripts/switch_sensitivity.py (run 14) compares the fast path with a kernel switch on, on again and
    off against the plain path. On the CPU the reference backend ignores the switch, so every fast run
    must be the same; a name that is not a boolean switch is refused by name."""
    mod = load_script("switch_sensitivity")
    mod.main(["--out", str(tmp_path), "--preset", "tiny", "--device", "cpu", "--ranks", "4"])
    res = json.loads((tmp_path / "switch_sensitivity.json").read_text())
    assert [r["mode"] for r in res["rows"]] == ["bf16", "ttq W4 r4 call LM"]
    for row in res["rows"]:
        assert row["on vs off"] == row["on vs on again"] == row["plain vs plain again"] == 0.0
        assert 0.0 < row["on vs plain"] == row["off vs plain"] < 1e-2  # fast and plain differ only by rounding
    with pytest.raises(SystemExit, match="SCALE_TAIL_CHUNK is not a boolean switch"):
        mod.main(["--out", str(tmp_path), "--switch", "SCALE_TAIL_CHUNK"])
