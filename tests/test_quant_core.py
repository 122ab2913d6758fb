"""The quantization maths against the paper's pseudo-code and its own guarantees."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vla_ttq.quant import (activation_aware_loss, awq_qdq, channel_stat, column_scale, lowrank_factors,
                           pack_codes, qdq, quantize_groupwise, rtn, ttq_qdq, unpack_codes)
from vla_ttq.quant.packing import PackedWeight, packed_row_bytes

FAST = settings(max_examples=40, deadline=None)


# --- the paper's pseudo-code, verbatim in spirit (section 2 / appendix B, C) -------------------
def paper_rtn(W, q, g):
    ddash, d = W.shape
    W = W.reshape(-1, g)
    Wmax = W.amax(axis=1, keepdim=True)
    Wmin = W.amin(axis=1, keepdim=True)
    S, Z = (Wmax - Wmin) / (2**q - 1), Wmin
    Wint = ((W - Z) / S).round().clamp(0, 2**q - 1)
    return (Wint * S + Z).reshape(ddash, d)


def paper_awq(X, W, q, g, p, lam, alpha):  # X: (d, T)
    D = X.norm(p=p, dim=1)
    D = (D + lam) ** alpha
    What = paper_rtn(W * D[None, :], q, g)
    return What * D.reciprocal()[None, :]


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def outlier_acts(tokens, d, seed=1, n_out=8, gain=30.0):
    x = rand(tokens, d, seed=seed)
    x[:, torch.randperm(d, generator=torch.Generator().manual_seed(seed))[:n_out]] *= gain
    return x


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group", [16, 64])
def test_rtn_matches_paper_pseudocode(bits, group):
    w = rand(96, 128, seed=bits)
    assert torch.allclose(rtn(w, bits, group), paper_rtn(w, bits, group), atol=1e-6, rtol=0)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_ttq_with_zero_shrinkage_matches_paper_awq_pseudocode(bits):
    """Our D (mean-square statistic, λ=0) differs from the pseudo-code's only by a global factor,
    to which the scaled QDQ is invariant; rounding ties may flip a handful of codes."""
    w, x = rand(64, 256, seed=3), outlier_acts(200, 256)
    ours = ttq_qdq(w, x, bits, 64, p=2.0, lam=0.0, alpha=0.5)
    paper = paper_awq(x.T, w, bits, 64, 2, 0.0, 0.5)
    close = torch.isclose(ours, paper, atol=1e-4, rtol=1e-4)
    assert close.float().mean() > 0.999


def test_ttq_equals_awq_given_same_activations_and_alpha():
    w, x = rand(64, 256, seed=4), outlier_acts(100, 256)
    for lam, alpha in [(0.0, 0.5), (0.4, 0.5), (0.5, 0.75)]:
        assert torch.equal(ttq_qdq(w, x, 3, 32, lam=lam, alpha=alpha),
                           awq_qdq(w, channel_stat(x), 3, 32, lam, alpha))


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_activation_aware_methods_beat_rtn_with_outlier_channels(bits):
    w, x = rand(128, 512, seed=5), outlier_acts(256, 512)
    loss = lambda w_hat: float(activation_aware_loss(w, w_hat, x))  # noqa: E731
    base = loss(rtn(w, bits, 64))
    assert loss(ttq_qdq(w, x, bits, 64)) < 0.8 * base
    assert loss(awq_qdq(w, channel_stat(x), bits, 64, 0.4, 0.5)) < 0.8 * base


def test_lowrank_residual_reduces_error():
    u, v = rand(256, 16, seed=6), rand(16, 256, seed=7)
    w = u @ v / 4 + 0.05 * rand(256, 256, seed=8)  # decaying spectrum like trained weights
    x = outlier_acts(128, 256)
    lr = lowrank_factors(w, 16)
    e0 = activation_aware_loss(w, ttq_qdq(w, x, 2, 64), x)
    e16 = activation_aware_loss(w, ttq_qdq(w, x, 2, 64, lowrank=lr), x)
    assert e16 < 0.5 * e0


def test_lowrank_factors_are_top_r_svd():
    w = rand(40, 30, seed=9)
    b, a = lowrank_factors(w, 5)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    assert torch.allclose(b @ a, (u[:, :5] * s[:5]) @ vh[:5], atol=1e-5)
    assert torch.allclose(b.norm(dim=0), a.norm(dim=1), atol=1e-5)  # balanced: B = UΛ^½, A = Λ^½V


@FAST
@given(bits=st.integers(1, 8), rows=st.integers(1, 6), cols=st.integers(1, 70), seed=st.integers(0, 2**16))
def test_pack_unpack_round_trip(bits, rows, cols, seed):
    codes = torch.randint(0, 2**bits, (rows, cols), generator=torch.Generator().manual_seed(seed), dtype=torch.int64)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (rows, packed_row_bytes(cols, bits))
    assert torch.equal(unpack_codes(packed, bits, cols).long(), codes)


def test_packing_layout_is_little_endian_nibbles():
    codes = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    assert pack_codes(codes, 4).tolist() == [[0x21, 0x43, 0x65, 0x87]]
    assert pack_codes(torch.tensor([[1, 2, 3, 0, 3, 3, 3, 3]]), 2).tolist() == [[0b00111001, 0xFF]]


@FAST
@given(bits=st.integers(2, 8), group=st.sampled_from([8, 16, 32]), seed=st.integers(0, 2**16),
       scale=st.floats(1e-3, 1e3), symmetric=st.booleans())
def test_error_is_at_most_half_a_step(bits, group, seed, scale, symmetric):
    w = rand(8, 64, seed=seed) * scale
    q = quantize_groupwise(w, bits, group, symmetric=symmetric)
    err = (q.dequantize() - w).abs().reshape(8, -1, group)
    bound = q.scale.unsqueeze(-1) / 2 * (1 + 1e-4) + 1e-6 * scale
    assert bool((err <= bound).all())


@FAST
@given(seed=st.integers(0, 2**16), group=st.sampled_from([16, 64]))
def test_error_decreases_with_bits(seed, group):
    w = rand(32, 128, seed=seed)
    errs = [float((qdq(w, b, group) - w).pow(2).sum()) for b in range(1, 9)]
    assert all(a >= b for a, b in zip(errs, errs[1:]))


@pytest.mark.parametrize("symmetric", [False, True])
def test_degenerate_groups_are_exact_and_finite(symmetric):
    w = torch.zeros(4, 64)
    w[1] = 3.25
    w[2, :32] = -1.5
    for bits in (2, 4):
        w_hat = qdq(w, bits, 32, symmetric=symmetric)
        assert torch.isfinite(w_hat).all()
        if not symmetric:
            assert torch.equal(w_hat, w)
        assert torch.equal(w_hat[0], w[0])  # all-zero rows stay exactly zero in both formats


def test_zero_activation_channels_stay_finite():
    w, x = rand(16, 64), rand(10, 64)
    x[:, :8] = 0.0  # dead input channels
    assert torch.isfinite(ttq_qdq(w, x, 2, 32, lam=0.0)).all()
    assert torch.isfinite(ttq_qdq(w, torch.zeros(5, 64), 2, 32, lam=0.0)).all()


def test_expansion_factor_nu():
    w = rand(8, 64, seed=2)
    assert torch.equal(qdq(w, 3, 32, nu=1.0), rtn(w, 3, 32))
    narrow = quantize_groupwise(w, 3, 32, nu=0.9)
    plain = quantize_groupwise(w, 3, 32)
    assert torch.allclose(narrow.scale, plain.scale * 0.9, rtol=1e-5)
    # a shrunk range clips the extremes: the max element can no longer be represented exactly
    assert (narrow.dequantize().amax(dim=1) < w.amax(dim=1)).all()


def test_symmetric_format_zero_point():
    w = rand(4, 32, seed=3)
    q = quantize_groupwise(w, 4, 32, symmetric=True)
    amax = w.abs().amax(dim=1)
    assert torch.allclose(q.zero.squeeze(1), -amax) and torch.allclose(q.scale.squeeze(1), 2 * amax / 15)


def test_column_scale_definition():
    c = torch.tensor([1.0, 4.0, 16.0, 0.0])
    s = column_scale(c, lam=0.0, alpha=1.0)  # s = c^(1/2), up to a global factor
    ratio = s[:3] / s[0]
    assert torch.allclose(ratio, torch.tensor([1.0, 2.0, 4.0]))
    assert s[3] > 0 and math.isclose(float(s.log().mean()), 0.0, abs_tol=1e-5)
    assert torch.allclose(column_scale(c, lam=1.0, alpha=0.5), torch.ones(4))  # λ = 1 is plain RTN


def test_packed_weight_byte_count_is_measured():
    w = rand(256, 256)
    q = quantize_groupwise(w, 2, 64, param_dtype=torch.float16)
    pw = PackedWeight.from_quantized(q, torch.float16)
    assert pw.nbytes == 256 * 256 * 2 // 8 + 2 * 256 * (256 // 64) * 2
    assert pw.nbytes < 0.17 * w.numel() * 2  # vs bf16
    assert torch.equal(pw.dequantize(), q.dequantize())  # storage loses nothing beyond the chosen S, Z


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_codes_are_chosen_for_the_stored_scale_dtype(dtype):
    w = rand(64, 256, seed=11)
    q = quantize_groupwise(w, 3, 64, param_dtype=dtype)
    assert torch.equal(q.scale.to(dtype).float(), q.scale)  # S, Z representable in storage
    err = (q.dequantize() - w).abs().reshape(64, -1, 64)
    # nearest code for the stored S, Z: half a step, plus Z's own rounding at the clamped edge
    assert bool((err <= q.scale.unsqueeze(-1) / 2 + (q.zero.abs() * 2**-7).unsqueeze(-1) + 1e-6).all())


@pytest.mark.parametrize("bad, msg", [
    (dict(group=48), "group size 48 does not divide the input dimension 64 of layer 'blk.q' .weight shape 32x64."),
    (dict(bits=9), "bits must be an integer in"),
    (dict(bits=0), "bits must be an integer in"),
    (dict(group=0), "group size must be a positive integer"),
])
def test_bad_arguments_raise_clear_errors(bad, msg):
    kw = dict(bits=4, group=32, name="blk.q") | bad
    with pytest.raises(ValueError, match=msg):
        quantize_groupwise(rand(32, 64), **kw)


def test_nan_and_inf_are_refused():
    w = rand(8, 32)
    w[3, 4] = float("nan")
    with pytest.raises(ValueError, match="weight of layer 'L' contains 1 NaN/inf"):
        quantize_groupwise(w, 4, 32, name="L")
    x = rand(4, 32)
    x[0, 0] = float("inf")
    with pytest.raises(ValueError, match="activation contains 1 NaN/inf"):
        ttq_qdq(rand(8, 32), x, 4, 32)
    with pytest.raises(ValueError, match="shrinkage lambda"):
        column_scale(torch.ones(4), lam=1.5, alpha=0.5)


@pytest.mark.parametrize("w_dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("s_dtype", [torch.float32, torch.float64])
def test_scale_columns_is_exactly_the_float32_product(w_dtype, s_dtype):
    from vla_ttq.quant.scaling import scale_columns

    g = torch.Generator().manual_seed(7)
    w = torch.randn(16, 64, generator=g).to(w_dtype)
    s = (torch.rand(64, generator=g) * 4 + 0.01).to(s_dtype)
    got, want = scale_columns(w, s), w.float() * s
    assert got.dtype == want.dtype and torch.equal(got, want)
