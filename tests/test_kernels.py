"""Kernel backends against the float64 reference on fresh random data.

Without CUDA the Triton kernels run under the Triton CPU interpreter (TRITON_INTERPRET=1, set in
conftest.py before any kernel is decorated); with CUDA the same tests run the compiled kernels in bf16.
"""

import math

import pytest
import torch

from vla_ttq import kernels
from vla_ttq.config import QuantConfig
from vla_ttq.kernels import reference, triton_backend
from vla_ttq.kernels.layout import PlanarPackedWeight, planar_pack, planar_unpack, slice_widths
from vla_ttq.quant import QuantLinear, TTQLinear

pytest.importorskip("triton")

CUDA = torch.cuda.is_available()
DEV = torch.device("cuda" if CUDA else "cpu")
XDTYPE = torch.bfloat16 if CUDA else torch.float32
TOL = 1e-2 if CUDA else 1e-5  # bf16 output rounding on GPU; fp32 arithmetic in the interpreter
PAIRS_TOL = 1e-2 if CUDA else 3e-3  # the M = 1 kernel's fp16x2 path: x in fp16, sums in fp16 per group
_SEED = [1000]


def gen():
    """A fresh generator per call: every check sees new random data."""
    _SEED[0] += 1
    return torch.Generator().manual_seed(_SEED[0])


def rand(*shape, scale=1.0):
    return (torch.randn(*shape, generator=gen()) * scale).to(DEV)


def col_scale(k):
    return (torch.rand(k, generator=gen()) * 2 + 0.25).to(DEV)


def rel_err(y, ref):
    assert torch.isfinite(y).all(), "non-finite output"
    return float((y.detach().double() - ref.detach()).norm() / ref.detach().norm())


def ref_matmul(x, packed, cs=None, lowrank=None, bias=None):
    """float64 reference: y = (x / cs) Ŵᵀ + (x Aᵀ) Bᵀ + bias."""
    w = packed.dequantize().double()
    xd = x.double()
    y = (xd if cs is None else xd / cs.double()) @ w.t()
    if lowrank is not None:
        b, a = lowrank
        y = y + (xd @ a.double().t()) @ b.double().t()
    return y if bias is None else y + bias.double()


@pytest.mark.parametrize("bits", range(1, 9))
def test_planar_layout_round_trips_and_keeps_the_byte_count(bits):
    for group in (32, 64, 128):
        codes = torch.randint(0, 2**bits, (6, 256), generator=gen(), dtype=torch.uint8)
        words = planar_pack(codes, bits, group)
        assert words.dtype == torch.int32 and words.numel() * 4 == 6 * 256 * bits // 8
        assert torch.equal(planar_unpack(words, bits, group, 256), codes)
    assert sum(w for _, w in slice_widths(bits)) == bits


def test_planar_layout_puts_slab_i_of_a_group_in_bit_field_i():
    codes = torch.arange(32, dtype=torch.uint8).remainder(16).view(1, 32)  # one 4-bit group of 32
    words = planar_pack(codes, 4, 32).view(-1).to(torch.int64) & 0xFFFFFFFF
    assert words.numel() == 4  # wg = 32*4/32 words
    for j in range(4):
        for i in range(8):
            assert (int(words[j]) >> (4 * i)) & 0xF == int(codes[0, i * 4 + j])


def test_planar_layout_rejects_groups_that_are_not_multiples_of_32():
    with pytest.raises(ValueError, match="multiple of 32"):
        planar_pack(torch.zeros(2, 48, dtype=torch.uint8), 4, 16)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group", [32, 64, 128])
def test_online_quantize_kernel_equals_the_reference_quantizer(bits, group):
    w = rand(40, 256)
    cs = col_scale(256)
    ref = reference.quantize_pack(w, cs, bits, group)
    got = triton_backend.quantize_pack(w, cs, bits, group)
    assert isinstance(got, PlanarPackedWeight)
    assert torch.equal(got.scale, ref.scale) and torch.equal(got.zero, ref.zero)
    diff = (got.codes().int() - ref.codes().int()).abs()
    # Identical arithmetic; on GPU an FMA contraction may move a value sitting on a rounding tie.
    assert int(diff.max()) <= (1 if CUDA else 0) and float((diff > 0).float().mean()) <= 1e-4


@pytest.mark.parametrize("bits", range(1, 9))
def test_online_quantize_tiles_with_row_and_group_tails_equal_the_reference(bits):
    # 24 rows and 3 groups: tiles of 16 rows and 2 groups leave half-empty programs, and bits with
    # several slices (3, 5, 6, 7) pack fields of different widths from the same chunks
    w = rand(24, 96)
    cs = col_scale(96)
    ref = reference.quantize_pack(w, cs, bits, 32)
    for tile in ((8, 1, 1), (16, 2, 4), (32, 4, 2), (64, 1, 4)):  # the last: W4's GPU tile, two threads a row
        got = triton_backend.quantize_pack(w, cs, bits, 32, tile=tile)
        assert torch.equal(got.scale, ref.scale) and torch.equal(got.zero, ref.zero), tile
        diff = (got.codes().int() - ref.codes().int()).abs()
        assert int(diff.max()) <= (1 if CUDA else 0) and float((diff > 0).float().mean()) <= 1e-3, tile


@pytest.mark.parametrize("opts", [dict(symmetric=True), dict(nu=0.9), dict(scale_dtype=torch.bfloat16),
                                  dict(scale_dtype=torch.float32)])
def test_online_quantize_kernel_options_match_the_reference(opts):
    w = rand(24, 128, scale=3.0)
    w[0, :32] = 0.5  # a constant group: the scale floor path
    ref = reference.quantize_pack(w, None, 3, 32, **opts)
    got = triton_backend.quantize_pack(w, None, 3, 32, **opts)
    assert torch.equal(got.scale, ref.scale) and torch.equal(got.zero, ref.zero)
    assert int((got.codes().int() - ref.codes().int()).abs().max()) <= (1 if CUDA else 0)


def assert_same_quantization(got, ref, frac=1e-3):
    """Codes, S and Z of two packings of one weight whose inputs differ in the last bits (sums of
    B A or of the statistics taken in another order): codes off by at most one step, rarely; S and
    Z equal but for the rare group whose range moved across a rounding boundary of their dtype."""
    diff = (got.codes().int() - ref.codes().int()).abs()
    assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) <= frac
    for a, b in ((got.scale, ref.scale), (got.zero, ref.zero)):
        assert float((a != b).float().mean()) <= frac
        assert torch.allclose(a.float(), b.float(), rtol=2**-9, atol=1e-6)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("rank", [4, 16, 20])
def test_online_quantize_kernel_subtracts_the_low_rank_part_like_the_reference(bits, rank):
    # TTQ r > 0 quantizes W - B A: the kernel computes B A on tensor cores (one group a program)
    # instead of reading a float32 residual that torch wrote first
    w = rand(40, 256).to(XDTYPE)
    cs = col_scale(256)
    lowrank = (rand(40, rank, scale=0.5).to(XDTYPE), rand(rank, 256, scale=0.5).to(XDTYPE))
    ref = reference.quantize_pack(w, cs, bits, 64, lowrank=lowrank)
    got = triton_backend.quantize_pack(w, cs, bits, 64, lowrank=lowrank)
    assert_same_quantization(got, ref)
    no_lr = reference.quantize_pack(w, cs, bits, 64)
    assert float((no_lr.codes() != got.codes()).float().mean()) > 0.05  # B A really was subtracted


@pytest.mark.parametrize("bits,rank", [(2, 0), (3, 16), (4, 0), (4, 8), (8, 16)])
def test_dense_online_step_is_the_dequantized_packed_one(bits, rank):
    # qdq_weight = what quantize_pack then dequantizing gives (Ŵ / cs + B A), in one pass
    w = rand(48, 256).to(XDTYPE)
    cs = col_scale(256)
    lowrank = None if rank == 0 else (rand(48, rank, scale=0.3).to(XDTYPE), rand(rank, 256, scale=0.3).to(XDTYPE))
    packed = triton_backend.quantize_pack(w, cs, bits, 64, lowrank=lowrank)
    want = packed.dequantize().double() / cs.double()
    if lowrank is not None:
        want = want + lowrank[0].double() @ lowrank[1].double()
    for dtype in (torch.float32, XDTYPE):
        dense = triton_backend.qdq_weight(w, cs, bits, 64, lowrank=lowrank, dtype=dtype)
        assert dense.dtype == dtype and dense.shape == (48, 256)
        # fp32: the division by cs is approximate (2 ulp); bf16: one rounding of the result
        assert rel_err(dense, want) < (1e-6 if dtype == torch.float32 else 4e-3)


@pytest.mark.parametrize("bits,rank", [(2, 0), (3, 0), (4, 16), (8, 4)])
def test_online_quantize_holding_its_chunks_gives_the_same_bits_as_reloading_them(monkeypatch, bits, rank):
    # QUANTIZE_HELD: the second sweep reuses the first's (W - B A)·cs chunks instead of loading W again
    w = rand(40, 256).to(XDTYPE)
    cs = col_scale(256)
    lowrank = None if rank == 0 else (rand(40, rank, scale=0.3).to(XDTYPE), rand(rank, 256, scale=0.3).to(XDTYPE))
    out = {}
    for held in (True, False):
        monkeypatch.setattr(triton_backend, "QUANTIZE_HELD", held)
        p = triton_backend.quantize_pack(w, cs, bits, 64, lowrank=lowrank)
        dense = triton_backend.qdq_weight(w, cs, bits, 64, lowrank=lowrank, dtype=XDTYPE)
        out[held] = (p.data, p.scale, p.zero, dense)
    assert all(torch.equal(a, b) for a, b in zip(out[True], out[False]))


@pytest.mark.parametrize("p", [2.0, math.inf, 3.0, 1.0])
@pytest.mark.parametrize("held", [True, False])
def test_column_scale_kernel_matches_the_reference_definition(monkeypatch, p, held):
    # s = D^½ from the activation: one launch instead of ~15 torch ops; sums in another order. The
    # last program holds every statistic in registers, or (wide layers) a second launch spreads the
    # float64 log/exp over many programs (K = 320 > 64 here: two programs, the last one finishes)
    if not held:
        monkeypatch.setattr(triton_backend, "SCALE_HELD_MAX_K", 64)
    for M, lam, alpha in ((1, 0.4, 0.5), (300, 0.0, 1.0), (77, 1.0, 0.5), (300, 0.4, 0.5)):
        x = (rand(M, 320) * (torch.rand(320, generator=gen()) * 3).to(DEV)).to(XDTYPE)
        x[:, 5] = 0.0  # a dead channel: the relative floor
        want = reference.column_scale(x, p, lam, alpha)
        got = triton_backend.column_scale(x, p, lam, alpha)
        assert got.dtype == torch.float32 and got.shape == (320,)
        # p = 2, inf: fp32 sums of x² in another order; other p: exp2/log2 approximations on the GPU
        tol = 1e-6 if p in (2.0, math.inf) else (1e-5 if CUDA else 1e-6)
        assert float(((got - want).abs() / want).max()) < tol, (M, lam, alpha)


def test_column_scale_kernel_and_low_rank_pack_reject_bad_input():
    with pytest.raises(ValueError, match="empty activation"):
        triton_backend.column_scale(rand(0, 64))
    with pytest.raises(ValueError, match="p must be > 0"):
        triton_backend.column_scale(rand(4, 64), p=0.0)
    with pytest.raises(ValueError, match=r"do not fit a 32x128 weight"):
        triton_backend.quantize_pack(rand(32, 128), None, 4, 64, lowrank=(rand(32, 4), rand(4, 64)))


@pytest.mark.parametrize("M,rank", [(1, 0), (1, 16), (200, 0), (200, 16), (48, 0), (48, 16)])
def test_online_matmul_quantizes_for_this_call_on_the_right_path(monkeypatch, M, rank):
    # TTQ's per-call step: where quant_matmul would dequantize for cuBLAS (large M) the quantize
    # pass writes the dense weight itself, B A folded in; small M packs and runs the low-bit kernels.
    # At 48 tokens a packed weight of this narrow layer takes the GEMM, the per-call step its dense pass (run 16)
    N, K = 64, 256
    w = rand(N, K).to(XDTYPE)
    x, cs, bias = rand(M, K).to(XDTYPE), col_scale(K), rand(N)
    lowrank = None if rank == 0 else (rand(N, rank, scale=0.3).to(XDTYPE), rand(rank, K, scale=0.3).to(XDTYPE))
    packed_calls = []
    real_pack = triton_backend.quantize_pack
    monkeypatch.setattr(triton_backend, "quantize_pack", lambda *a, **k: packed_calls.append(1) or real_pack(*a, **k))
    y = triton_backend.online_matmul(x, w, cs, lowrank, bias, 4, 64)
    assert (len(packed_calls) == 1) == (triton_backend.path_for(M, N, K, 4, rank > 0, online=True) != "dequant")
    assert len(packed_calls) == (1 if M == 1 else 0)
    assert triton_backend.path_for(M, N, K, 4, rank > 0) == {1: "gemv", 48: "dot", 200: "dequant"}[M]
    want = ref_matmul(x, reference.quantize_pack(w, cs, 4, 64, lowrank=lowrank), cs, lowrank, bias)
    tol = PAIRS_TOL if M == 1 else (2e-2 if CUDA else 1e-5)  # M = 1: the GEMV's fp16x2 pairs
    assert y.shape == (M, N) and rel_err(y, want) < tol


# M = 1 and 3: one-launch GEMV (the default); 3: tensor-core GEMM (forced); 20:
# tensor-core GEMM (forced: this layer is small) and the default dequantize + dense matmul; 300:
# dequantize + dense matmul.
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group", [32, 64, 128])
def test_triton_matmul_matches_float64_reference_on_every_path(bits, group):
    N, K, R = 40, 256, 8
    packed = triton_backend.quantize_pack(rand(N, K), None, bits, group)
    lowrank = (rand(N, R, scale=0.1), rand(R, K, scale=0.1))
    bias = rand(N)
    for M, cs, lr, b, path in ((1, col_scale(K), lowrank, bias, None), (3, None, None, None, None),
                               (3, col_scale(K), lowrank, bias, "dot"),
                               (20, col_scale(K), lowrank, None, "dot"), (20, None, None, bias, None),
                               (300, col_scale(K), lowrank, bias, None)):
        x = rand(M, K).to(XDTYPE)
        y = triton_backend.quant_matmul(x, packed, cs, lr, b, path=path)
        assert y.shape == (M, N) and y.dtype == XDTYPE
        err = rel_err(y, ref_matmul(x, packed, cs, lr, b))
        gemv = (path or triton_backend.path_for(M, N, K)) == "gemv"
        assert err < (PAIRS_TOL if gemv else TOL), (M, path, err)  # the GEMV sums in fp16x2


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group, K", [(32, 256), (64, 256), (128, 256), (64, 2048), (128, 16384)])
def test_tensor_core_tiles_are_deep_enough_for_tl_dot_in_every_slice(bits, group, K):
    """tl.dot needs K >= 16 on a GPU (the CPU interpreter does not check): each slice of a tile
    must hold >= 16 word rows, also when the layer has fewer groups than the tile (found on an H100)."""
    from vla_ttq.kernels.layout import slice_widths

    wmin = min(w for _, w in slice_widths(bits))
    for M in (17, 64):
        for cfg in triton_backend._candidates(bits, group, K, 40, M, 132):
            if len(cfg) == 5:  # the weight-as-left-operand kernel's dots are a whole group deep (>= 32)
                gt = cfg[2]
                assert gt * group * wmin // 32 >= 16, (gt, group, wmin)


def test_every_tensor_core_tile_candidate_computes_the_same_function():
    N, K, M = 72, 512, 5  # N not a multiple of any tile: masked rows
    packed = triton_backend.quantize_pack(rand(N, K), None, 4, 64)
    x, cs, bias = rand(M, K).to(XDTYPE), col_scale(K), rand(N)
    lowrank = (rand(N, 8, scale=0.1), rand(8, K, scale=0.1))  # x Aᵀ in the kernels: split over K or not
    ref = ref_matmul(x, packed, cs, lowrank, bias)
    cands = triton_backend._candidates(4, 64, K, N, M, 1)
    cands += [c[:3] + (1,) + c[4:] for c in cands]  # also the fused epilogue (no split-K)
    assert any(c[3] > 1 for c in cands)
    for cfg in cands:
        out = torch.full((M, N), float("nan"), device=DEV, dtype=XDTYPE)  # poisoned: every element must be written
        triton_backend._launch(cfg, x, cs.float(), packed, lowrank, bias, out)
        assert rel_err(out, ref) < TOL, cfg


WA_DTYPES = [torch.float16] + ([torch.bfloat16] if CUDA else [])  # the interpreter has no bf16 arithmetic


@pytest.mark.parametrize("dtype", WA_DTYPES)
@pytest.mark.parametrize("bits, group, M, gt, split, rank", [(2, 64, 5, 1, 1, 0), (2, 32, 17, 1, 3, 16),
                                                             (3, 64, 9, 2, 2, 0), (4, 128, 16, 2, 1, 8),
                                                             (8, 64, 6, 1, 2, 0), (1, 64, 3, 1, 1, 0),
                                                             (4, 64, 8, 1, 2, 0), (2, 128, 12, 2, 1, 0),
                                                             (4, 32, 7, 1, 1, 0), (2, 256, 4, 1, 2, 8)])
def test_weight_as_left_operand_gemm_matches_float64(dtype, bits, group, M, gt, split, rank):
    """quant_matmul_wa_kernel: 16-bit codes made by OR-ing them into a float's mantissa (a plain
    conversion for 8-bit codes in bf16; two at a time in pair_order's order at 2 and 4 bits with
    group·bits >= 128), one dot per group and slice, S and Z applied to each
    group's sum, 2^e·Σx' taken back out; split-K partials or the fused epilogue; N not a multiple
    of the tile, M rows padded, and 3 groups for steps of 2 (the last step half past the layer)."""
    assert _wa_tile_error((16, 64, gt, split, 4, 2), dtype, bits, group, M, 3, rank) < (TOL if CUDA else 2e-3)


def _wa_tile_error(cfg, dtype, bits, group, M, groups, rank) -> float:
    """One launch of a weight-as-left-operand tile on an 80-output layer of ``groups`` groups, with
    bias, col scale and an optional low-rank term, into a NaN-poisoned output (every element must be
    written): its relative error against float64."""
    N, K = 80, groups * group
    packed = triton_backend.prepare(triton_backend.quantize_pack(rand(N, K), None, bits, group))
    x, cs, bias = rand(M, K).to(dtype), col_scale(K), rand(N).to(dtype)
    lowrank = (rand(N, rank, scale=0.1).to(dtype), rand(rank, K, scale=0.1).to(dtype)) if rank else None
    ref = ref_matmul(x, packed, cs, lowrank, bias)
    out = torch.full((M, N), float("nan"), device=DEV, dtype=dtype)
    triton_backend._launch(cfg, x, cs.float(), packed, lowrank, bias, out)
    return rel_err(out, ref)


@pytest.mark.parametrize("dtype", WA_DTYPES)
@pytest.mark.parametrize("bits, group, M, bm, split, rank", [(4, 64, 50, 64, 2, 0), (2, 64, 9, 16, 1, 8),
                                                             (4, 32, 33, 64, 1, 16), (1, 64, 20, 32, 3, 0),
                                                             (8, 64, 40, 64, 2, 0)])
def test_weight_as_left_operand_gemm_with_dequantized_codes_matches_float64(monkeypatch, dtype, bits, group, M, bm,
                                                                           split, rank):
    """SCALED: every code made S·c + Z in fp32 and rounded once to x's dtype, the groups' dots chained into one
    accumulator; pairs (2 and 4 bits, group 64) or codes one at a time (group 32, 1 and 8 bits), the atomic tail or
    split partials, padded rows. Only one-slice widths and 16-bit activations take it (wa_scaled)."""
    monkeypatch.setattr(triton_backend, "WA_SCALED_MIN_BM", 1)
    assert triton_backend.wa_scaled(bm, bits, dtype)
    assert _wa_tile_error((bm, 64, 1, split, 4, 2), dtype, bits, group, M, 4, rank) < (TOL if CUDA else 2e-3)


def test_only_wide_tiles_of_one_slice_codes_and_16_bit_activations_dequantize_every_code():
    assert triton_backend.wa_scaled(64, 4, torch.bfloat16) and triton_backend.wa_scaled(64, 2, torch.float16)
    assert not triton_backend.wa_scaled(64, 3, torch.bfloat16)  # two slices, two offsets
    assert not triton_backend.wa_scaled(64, 4, torch.float32)
    assert not triton_backend.wa_scaled(triton_backend.WA_SCALED_MIN_BM // 2, 4, torch.bfloat16)


@pytest.mark.parametrize("bits, group", [(2, 64), (2, 128), (2, 256), (4, 32), (4, 64), (4, 128)])
def test_pair_order_puts_each_operand_pair_in_one_word_16_bits_apart(bits, group):
    """pair_order: κ → channel is a permutation of the group; the channels of κ and κ+1 (κ even) are
    fields of one word 16 bits apart, the lower at the listed shift of κ's (s, h); lane q of a quad
    (κ // 2 % 4) reads only words j with j % 4 == q. Field i of word j is channel i·wg + j (layout)."""
    shifts, channels = triton_backend.pair_order(bits, group)
    wg = group * bits // 32
    assert sorted(channels) == list(range(group))
    for kappa in range(0, group, 2):
        (i0, j0), (i1, j1) = [divmod(channels[kappa + e], wg) for e in (0, 1)]
        s, h, q = kappa // 16, kappa // 8 % 2, kappa // 2 % 4
        assert j0 == j1 and j0 % 4 == q, kappa
        assert i0 * bits == shifts[2 * s + h] and i1 * bits == i0 * bits + 16, kappa
    assert triton_backend.pair_order(2, 32) is None and triton_backend.pair_order(3, 64) is None


def test_weight_as_left_operand_gemm_leads_where_runs_11_to_15_measured_it_faster():
    """The heuristic tile is the new kernel's on the large layers at W2 from 3 to 64 tokens (H200 runs
    11-12) and at W4 from 3 to 32 (run 12, with code pairs and atomic split-K) and to 64 (run 15, tiles of 64 rows
    dequantizing every code), Gemma-2B gate/up and down, from 3 to 32 tokens on layers of 4M-12M weights
    (run 12, 2048 x 2048; W2 to 64 since run 15), and from 2 to 32 on smaller ones (run 14; to 64 on those of
    at most 512 outputs since run 15); elsewhere it is only a candidate for the autotuner."""
    first = lambda bits, M, N, K: triton_backend._candidates(bits, 64, K, N, M, 132)[0]  # noqa: E731
    assert first(2, 8, 16384, 2048) == (16, 256, 1, 5, 4, 3)  # 64 column blocks, 2 programs an SM
    assert first(2, 8, 2048, 16384) == (16, 256, 1, 33, 4, 3)
    assert first(2, 16, 2048, 16384) == (16, 256, 1, 33, 4, 3)  # 2 programs an SM up to 16 tokens (run 12)
    assert first(2, 32, 2048, 16384) == (32, 256, 1, 17, 4, 3)  # 1 above
    assert first(2, 64, 16384, 2048) == (64, 256, 1, 9, 4, 3)  # 64 rows: 256 columns, 4 programs an SM from 8192
    assert first(4, 40, 2048, 16384) == (64, 256, 1, 33, 4, 3)  # columns, 2 below (run 15)
    assert first(4, 8, 16384, 2048) == (16, 256, 1, 5, 4, 3)
    assert first(4, 32, 2048, 16384) == (32, 256, 1, 17, 4, 3)
    assert first(4, 5, 2048, 2048) == (16, 256, 1, 32, 4, 3)  # a mid-size layer, up to 32 tokens (W4), 64 (W2)
    assert first(2, 40, 2048, 2048) == (64, 64, 1, 17, 4, 3)
    assert first(4, 40, 256, 2048) == (64, 64, 1, 32, 4, 3)  # at most 512 outputs: up to 64 tokens (run 15)
    assert first(4, 16, 2048, 2048) == (16, 64, 1, 17, 4, 3)  # from 8 tokens 64 columns, 4 programs an SM (run 14)
    assert first(2, 32, 2048, 2048) == (32, 64, 1, 17, 4, 3)
    assert first(4, 3, 16384, 2048) == (16, 256, 1, 5, 4, 3)  # from 3 tokens (run 12)
    assert first(2, 8, 2048, 1024) == (16, 128, 1, 16, 4, 3)  # under 4M weights, from 2 to 32 tokens (run 14)
    for bits, M, N, K in [(4, 2, 16384, 2048), (4, 65, 16384, 2048), (2, 33, 2048, 1024), (4, 40, 2048, 2048),
                          (3, 8, 16384, 2048), (3, 8, 2048, 1024)]:
        assert len(first(bits, M, N, K)) == 5, (bits, M, N, K)
        assert any(len(c) == 6 for c in triton_backend._candidates(bits, 64, K, N, M, 132))


def test_weight_as_left_operand_tile_runs_the_dequantizing_kernel_for_fp32_activations(monkeypatch):
    """fp32 activations keep their ieee fp32 dot: a 6-tuple tile launches quant_matmul_kernel, as
    deep as that kernel's tl.dot needs (one W2 group of 64 is only 4 word rows; a GPU rejects K < 16)."""
    packed = triton_backend.prepare(triton_backend.quantize_pack(rand(64, 256), None, 2, 64))
    x = rand(5, 256).float()
    launched = []
    for name in ("quant_matmul_kernel", "quant_matmul_wa_kernel"):
        kernel = getattr(triton_backend._tk(), name)
        monkeypatch.setattr(triton_backend._tk(), name, _Recording(kernel, name, launched))
    out = torch.empty(5, 64, device=DEV)
    triton_backend._launch((16, 64, 1, 1, 4, 2), x, None, packed, None, None, out)
    assert launched == [("quant_matmul_kernel", 4)]  # 4 groups of 4 W2 word rows: 16
    assert rel_err(out, ref_matmul(x, packed)) < TOL


@pytest.mark.parametrize("bits, group, M, pairs", [(2, 64, 8, True), (4, 64, 32, True), (4, 64, 40, False),
                                                   (2, 32, 8, False), (3, 64, 8, False)])
def test_weight_as_left_operand_gemm_makes_code_pairs_where_they_won(monkeypatch, bits, group, M, pairs):
    """Code pairs at 2 and 4 bits in tiles of up to PAIRS_MAX_BM tokens where pair_order has an order
    (group·bits >= 128); per-code unpacking otherwise (64-token tiles: run 12). Either way float64's result."""
    N, K = 48, 2 * group
    packed = triton_backend.prepare(triton_backend.quantize_pack(rand(N, K), None, bits, group))
    x, cs = rand(M, K).to(torch.float16), col_scale(K)
    launched = []
    kernel = triton_backend._tk().quant_matmul_wa_kernel
    monkeypatch.setattr(triton_backend._tk(), "quant_matmul_wa_kernel",
                        _Recording(kernel, "wa", launched, key="PAIRS"))
    out = torch.full((M, N), float("nan"), device=DEV, dtype=torch.float16)
    bm = triton_backend._gemm_rows(M)
    triton_backend._launch((bm, 64, 1, 2, 4, 2), x, cs.float(), packed, None, None, out)
    assert launched == [("wa", pairs)]
    assert rel_err(out, ref_matmul(x, packed, cs)) < (TOL if CUDA else 2e-3)


@pytest.mark.parametrize("dtype", WA_DTYPES)
@pytest.mark.parametrize("bits, M, cfg", [(4, 20, (32, 64, 1, 2, 4, 2)), (2, 40, (64, 64, 1, 2, 4, 2)),
                                          (4, 9, (16, 64, 1, 1, 4, 2)), (3, 20, (32, 64, 2, 2, 4, 2))])
def test_weight_as_left_operand_gemm_gives_the_same_output_with_x_prescaled(monkeypatch, dtype, bits, M, cfg):
    """x / cs made by prescale_kernel before the GEMM (WA_PRESCALE_M) is the value each program made itself (one
    division, one rounding): under the interpreter the output is bit for bit the same; compiled, the two kernels may
    sum a group's x in another order (seen once on an H100: 3 bits, fp16), so there the outputs agree to well below
    fp16's rounding (code pairs, codes dequantized per code, the atomic tail and split partials, two slices). With a
    low-rank term, which needs x itself, the kernel keeps dividing."""
    N, K = 80, 4 * 64
    packed = triton_backend.prepare(triton_backend.quantize_pack(rand(N, K), None, bits, 64))
    x, cs, bias = rand(M, K).to(dtype), col_scale(K).float(), rand(N).to(dtype)
    lowrank = (rand(N, 8, scale=0.1).to(dtype), rand(8, K, scale=0.1).to(dtype))
    launched = []
    kernel = triton_backend._tk().quant_matmul_wa_kernel
    monkeypatch.setattr(triton_backend._tk(), "quant_matmul_wa_kernel",
                        _Recording(kernel, "wa", launched, key="HAS_CS"))
    outs = {}
    for prescale in (False, True, "lowrank"):
        monkeypatch.setattr(triton_backend, "WA_PRESCALE_M", (1, 64) if prescale else (65, 64))
        monkeypatch.setattr(triton_backend, "WA_PRESCALE_MIN_NK", 0)
        lr = lowrank if prescale == "lowrank" else None
        outs[prescale] = torch.full((M, N), float("nan"), device=DEV, dtype=dtype)
        triton_backend._launch(cfg, x, cs, packed, lr, bias, outs[prescale])
        assert rel_err(outs[prescale], ref_matmul(x, packed, cs, lr, bias)) < (TOL if CUDA else 2e-3), prescale
    assert launched == [("wa", True), ("wa", False), ("wa", True)]  # the prescaled launch gets no cs
    if CUDA:
        assert rel_err(outs[True], outs[False].double()) < 2e-4
    else:
        assert torch.equal(outs[True], outs[False])


def test_backend_set_sets_rule_constants_for_a_block_and_restores_them_however_it_ends():
    """The A/B scripts' switch (kernels.bench.backend_set): run 15's script left its feature on for the column it
    called "now", which hid a slowdown (run 16)."""
    from vla_ttq.kernels.bench import backend_set

    rule = triton_backend.WA_PRESCALE_M
    with backend_set(WA_PRESCALE_M=(1, 2), WA_PRESCALE_MIN_NK=0):
        assert triton_backend.WA_PRESCALE_M == (1, 2) and triton_backend._prescaled(2, 8, 8)
    assert triton_backend.WA_PRESCALE_M == rule and not triton_backend._prescaled(2, 8, 8)
    with pytest.raises(RuntimeError), backend_set(WA_ATOMIC_TAIL=False):
        raise RuntimeError("a failed launch")
    assert triton_backend.WA_ATOMIC_TAIL is True
    with pytest.raises(AttributeError, match="WA_NO_SUCH"), backend_set(WA_NO_SUCH=1, WA_ATOMIC_TAIL=False):
        pass
    assert triton_backend.WA_ATOMIC_TAIL is True and not hasattr(triton_backend, "WA_NO_SUCH")


def test_x_is_prescaled_for_the_weight_as_left_operand_gemm_only_on_large_layers_at_17_to_48_tokens():
    """H200 run 16: 0.1-2.5 µs faster on Gemma-2B's gate/up and down at 24-48 tokens, within noise up to 16,
    slower on gate/up at 64 and on every smaller layer (the extra launch)."""
    assert triton_backend._prescaled(33, 16384, 2048) and triton_backend._prescaled(17, 2048, 16384)
    assert triton_backend._prescaled(48, 2048, 16384)
    assert not triton_backend._prescaled(16, 16384, 2048) and not triton_backend._prescaled(64, 16384, 2048)
    assert not triton_backend._prescaled(33, 2048, 2048)  # 4M weights


def test_weight_as_left_operand_split_k_by_atomics_leaves_its_workspace_zeroed():
    """With K split and one tile of rows, the programs add into a workspace and the last of each
    column block writes y (bias, low-rank term): repeated calls on other inputs stay exact, and the
    workspace, low-rank workspace and counters are back at zero after each call."""
    N, K, M, bm, rank = 80, 512, 6, 16, 8
    packed = triton_backend.prepare(triton_backend.quantize_pack(rand(N, K), None, 4, 64))
    cs, bias = col_scale(K), rand(N).to(torch.float16)
    lowrank = (rand(N, rank, scale=0.1).to(torch.float16), rand(rank, K, scale=0.1).to(torch.float16))
    cfg = (bm, 64, 1, 3, 4, 2)
    for _ in range(2):
        x = rand(M, K).to(torch.float16)
        out = torch.full((M, N), float("nan"), device=DEV, dtype=torch.float16)
        triton_backend._launch(cfg, x, cs.float(), packed, lowrank, bias, out)
        assert rel_err(out, ref_matmul(x, packed, cs, lowrank, bias)) < (TOL if CUDA else 2e-3)
        ws_key, tws_key = _gemv1_buffer_keys(x.device, N, bm, 2 * bm * 16)  # 2 column blocks, BR = 16
        (ws, lock), tws = triton_backend._GEMV1_BUFFERS[ws_key], triton_backend._GEMV1_BUFFERS[tws_key]
        assert not ws.any() and not lock.any() and not tws.any()


class _Recording:
    """A kernel stand-in that records its name and one constexpr (groups per tile, GT, unless told),
    then launches the real kernel."""

    def __init__(self, kernel, name, log, key="GT"):
        self.kernel, self.name, self.log, self.key = kernel, name, log, key

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.log.append((self.name, kwargs[self.key]))
            return self.kernel[grid](*args, **kwargs)
        return launch


def _gemv1_buffer_keys(device, N, rows, tws_numel):
    """Keys of the GEMV's cached workspaces that a launch on ``device`` used (KeyError if it did not)."""
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    keys = [(device, stream, "ws", N, rows), (device, stream, "tws", tws_numel)]
    missing = [k for k in keys if k not in triton_backend._GEMV1_BUFFERS]
    assert not missing, missing
    return keys


# every width at M = 1; two and four rows (M = 3: one padding row) on a subset, for interpreter time
@pytest.mark.parametrize("bits, M", [(2, 1), (3, 1), (4, 1), (8, 1), (2, 2), (8, 2), (3, 3), (4, 3)])
def test_one_launch_gemv_matches_float64_on_every_candidate_and_leaves_its_workspace_zeroed(bits, M):
    """M <= 4 runs gemv1_kernel: K split over programs whose partial sums the last one to arrive
    adds up; M = 3 has a padding row (the kernel runs 4). Every candidate tile, N not a multiple
    of the tile (masked columns), groups 32-128, with prescale, low-rank term and bias; the output
    is NaN-poisoned so every element must be written, and the split-K workspace and counters must
    be back at zero for the next call."""
    rows = triton_backend._next_pow2(M)
    for group, N, K in ((32, 72, 256), (64, 40, 512), (128, 136, 512)):
        packed = triton_backend.prepare(triton_backend.quantize_pack(rand(N, K), None, bits, group))
        x, cs, bias = rand(M, K).to(XDTYPE), col_scale(K), rand(N)
        lowrank = (rand(N, 8, scale=0.1), rand(8, K, scale=0.1))
        ref = ref_matmul(x, packed, cs, lowrank, bias)
        cands = triton_backend._gemv1_candidates(bits, group, K, N, 132, rows)
        assert any(math.ceil(K // group / cfg[1]) > 1 for cfg in cands)  # split-K is exercised
        # fp16x2 pairs and fp32 codes at M = 1; several rows: pairs only
        assert {cfg[4] for cfg in cands} == ({True, False} if M == 1 else {True})
        for cfg in cands:
            out = torch.full((M, N), float("nan"), device=DEV, dtype=XDTYPE)
            triton_backend._launch_gemv1(cfg, x, cs.float(), packed, lowrank, bias, out)
            assert rel_err(out, ref) < (PAIRS_TOL if cfg[4] else TOL), (group, N, cfg)
            # the buffers this launch used (x.device: cuda:0, as the launch keys them); tws holds BR
            # floats per row and column block (BR: rank 8 padded, to 16 for tensor cores with several rows)
            tws_numel = math.ceil(N / cfg[0]) * rows * (8 if rows == 1 else 16)
            ws_key, tws_key = _gemv1_buffer_keys(x.device, N, rows, tws_numel)
            (ws, lock), tws = triton_backend._GEMV1_BUFFERS[ws_key], triton_backend._GEMV1_BUFFERS[tws_key]
            assert not ws.any() and not lock.any() and not tws.any(), cfg
    with pytest.raises(ValueError, match="pairs path"):
        triton_backend._launch_gemv1((128, 1, 1, 1, False), rand(2, K).to(XDTYPE), None, packed, None, None,
                                     torch.empty(2, N, device=DEV, dtype=XDTYPE))


@pytest.mark.parametrize("bits", [2, 4, 5])
def test_fp16x2_pairs_path_survives_activations_beyond_fp16_and_zero_groups(bits):
    """The pairs path sums in fp16, whose range ends at 65504: x is divided by its group's |max|
    first (each row its own). Activations of 1e5 with a 100× outlier channel, a group of zeros
    (|max| = 0) and, beside them, a row of ordinary size must still give the float64 result."""
    group, N, K = 64, 64, 512
    packed = triton_backend.prepare(triton_backend.quantize_pack(rand(N, K), None, bits, group))
    x = rand(2, K, scale=1e5)
    x[0, 3] *= 100
    x[0, group:2 * group] = 0
    x[1] = rand(K)
    x, cs = x.to(XDTYPE), col_scale(K)
    ref = ref_matmul(x, packed, cs)
    for cfg in triton_backend._gemv1_candidates(bits, group, K, N, 132, 2):
        if cfg[4]:
            out = torch.full((2, N), float("nan"), device=DEV, dtype=XDTYPE)
            triton_backend._launch_gemv1(cfg, x, cs.float(), packed, None, None, out)
            assert rel_err(out, ref) < PAIRS_TOL and rel_err(out[1:], ref[1:]) < PAIRS_TOL, cfg


@pytest.mark.parametrize("M, bits", [(1, 4), (2, 3)])
def test_small_m_calls_take_the_one_launch_gemv_and_repeat_exactly(monkeypatch, M, bits):
    """quant_matmul routes one token (any layer) and two (any layer but a 2/4-bit one under 4M
    weights, which takes the weight-as-left-operand GEMM since run 14) to gemv1_kernel; calls that
    reuse the workspace are not polluted by the ones before (the counters and partial sums were reset)."""
    packed = triton_backend.quantize_pack(rand(96, 512), None, bits, 64)
    x1, x2, cs = rand(M, 512).to(XDTYPE), rand(M, 512).to(XDTYPE), col_scale(512)
    calls = []
    orig = triton_backend._launch_gemv1
    monkeypatch.setattr(triton_backend, "_launch_gemv1", lambda cfg, *a, **k: calls.append(cfg) or orig(cfg, *a, **k))
    y1 = triton_backend.quant_matmul(x1, packed, cs)
    y2 = triton_backend.quant_matmul(x2, packed, cs)
    y1_again = triton_backend.quant_matmul(x1, packed, cs)
    assert len(calls) == 3
    tol = PAIRS_TOL if calls[0][4] else TOL
    assert rel_err(y1_again, ref_matmul(x1, packed, cs)) < tol and rel_err(y2, ref_matmul(x2, packed, cs)) < tol
    if not CUDA:  # the interpreter runs programs in order: bit-identical; GPU atomics add in any order
        assert torch.equal(y1, y1_again)


def test_m1_low_rank_term_is_computed_inside_the_one_launch_kernel(monkeypatch):
    """At M = 1, x Aᵀ is summed by the GEMV's own programs (no matmul launched before it), and
    the next call is not polluted by the parts of t the last one left (the workspace is reset)."""
    N, K, R = 72, 512, 16
    packed = triton_backend.quantize_pack(rand(N, K), None, 4, 64)
    x1, x2, cs = rand(1, K).to(XDTYPE), rand(1, K).to(XDTYPE), col_scale(K)
    lowrank = (rand(N, R, scale=0.1).to(XDTYPE), rand(R, K, scale=0.1).to(XDTYPE))
    refs = [ref_matmul(x, packed, cs, lowrank) for x in (x1, x2, x1)]

    def no_matmul(*a, **k):
        raise AssertionError("x Aᵀ was launched as a separate matmul")

    for mod, name in ((torch.nn.functional, "linear"), (torch, "mm"), (torch, "matmul")):
        monkeypatch.setattr(mod, name, no_matmul)
    for x, ref in zip((x1, x2, x1), refs):
        assert rel_err(triton_backend.quant_matmul(x, packed, cs, lowrank), ref) < PAIRS_TOL


@pytest.mark.parametrize("fold_max", [0, 1 << 30])
def test_large_m_low_rank_term_folded_into_the_weight_or_added_after(monkeypatch, fold_max):
    """Dequantize + dense matmul (large M): B A folded into the dequantized weight on small layers,
    accumulated into y by one addmm on large ones; both give the float64 result."""
    monkeypatch.setattr(triton_backend, "LOWRANK_FOLD_MAX_NK", fold_max)
    N, K = 40, 256
    packed = triton_backend.quantize_pack(rand(N, K), None, 4, 64)
    x, cs, bias = rand(80, K).to(XDTYPE), col_scale(K), rand(N)
    lowrank = (rand(N, 8, scale=0.1), rand(8, K, scale=0.1))
    y = triton_backend.quant_matmul(x, packed, cs, lowrank, bias, path="dequant")
    assert rel_err(y, ref_matmul(x, packed, cs, lowrank, bias)) < TOL


def test_triton_accepts_the_storage_format_and_leading_batch_dims():
    packed = reference.quantize_pack(rand(32, 128), None, 4, 32)
    x = rand(2, 3, 128).to(XDTYPE)
    y = triton_backend.quant_matmul(x, packed)
    assert y.shape == (2, 3, 32)
    assert rel_err(y.reshape(6, 32), ref_matmul(x.reshape(6, 128), packed)) < TOL
    with pytest.raises(ValueError, match="expects 128"):
        triton_backend.quant_matmul(rand(1, 64).to(XDTYPE), packed)


def test_non_dense_planar_weights_are_made_dense_before_launch():
    packed = triton_backend.quantize_pack(rand(32, 128), None, 4, 32)
    odd = PlanarPackedWeight(packed.data, packed.scale.contiguous(), packed.zero.contiguous(), 4, 32, (32, 128))
    assert not odd.scale_t.is_contiguous()
    x = rand(1, 128).to(XDTYPE)
    assert rel_err(triton_backend.quant_matmul(x, odd), ref_matmul(x, packed)) < PAIRS_TOL  # M = 1


def test_dequantize_kernel_gives_the_effective_weight():
    packed = triton_backend.quantize_pack(rand(16, 128), None, 3, 64)
    cs = col_scale(128)
    w = triton_backend.dequantize_t(packed, cs, torch.float32).t()
    ref = packed.dequantize().double() / cs.double()
    assert rel_err(w, ref) < 1e-6 and w.shape == (16, 128)
    b, a = rand(16, 8, scale=0.1), rand(8, 128, scale=0.1)  # low-rank term folded in (large-M path)
    w_lr = triton_backend.dequantize_t(packed, cs, torch.float32, (b, a)).t()
    assert rel_err(w_lr, ref + b.double() @ a.double()) < (1e-3 if CUDA else 1e-6)  # tf32 tensor cores on GPU
    buf = torch.full((128, 16), float("nan"), device=DEV)  # out=: written in place, every element
    assert triton_backend.dequantize_t(packed, cs, torch.float32, out=buf) is buf and torch.equal(buf.t(), w)
    w16 = rand(16, 128)
    dense = triton_backend.qdq_weight(w16, cs, 3, 64, dtype=torch.float32)
    buf.fill_(float("nan"))
    assert torch.equal(triton_backend.qdq_weight(w16, cs, 3, 64, dtype=torch.float32, out=buf), dense)


def test_a_tile_that_does_not_fit_falls_back_to_the_next_and_is_remembered(monkeypatch):
    from triton.runtime.errors import OutOfResources

    N, K, M = 64, 256, 16
    packed = triton_backend.quantize_pack(rand(N, K), None, 4, 64)
    x = rand(M, K).to(XDTYPE)
    cands = triton_backend.tile_candidates("dot", M, N, K, 4, 64, triton_backend._num_sms(x.device))
    assert len(cands) > 1
    real, tried = triton_backend._launch, []

    def launch(cfg, **kw):  # the heuristic's tile "needs" more shared memory than the GPU has
        tried.append(cfg)
        if cfg == cands[0]:
            raise OutOfResources(300000, 232448, "shared memory")
        return real(cfg, **kw)

    monkeypatch.setattr(triton_backend, "_launch", launch)
    monkeypatch.setattr(triton_backend, "_TUNED", {})
    y = triton_backend.quant_matmul(x, packed, path="dot")
    assert tried == [cands[0], cands[1]]
    assert rel_err(y, reference.quant_matmul(x.double(), packed)) < 2e-2
    triton_backend.quant_matmul(x, packed, path="dot")
    assert tried[2:] == [cands[1]]  # remembered: the failing tile is not tried again
    def never_fits(cfg, **kw):
        raise OutOfResources(300000, 232448, "shared memory")

    monkeypatch.setattr(triton_backend, "_launch", never_fits)
    monkeypatch.setattr(triton_backend, "_TUNED", {})
    with pytest.raises(RuntimeError, match="no tile of the dot kernel fits"):
        triton_backend.quant_matmul(x, packed, path="dot")


def test_one_token_with_a_low_rank_term_takes_the_narrower_gemv_tile_on_large_layers(monkeypatch):
    """H200 run 14 (the autotuner with rotating weights): with a rank-16 term, 512 columns x 4 warps beat
    1024 x 8 on Gemma-2B's gate/up and down by 8-13 %; without one the 1024-column tile stays. Both stay
    candidates, and tuned tiles are kept apart for calls with and without a low-rank term."""
    first = lambda N, K, lr: triton_backend.tile_candidates("gemv", 1, N, K, 4, 64, 132, lr)  # noqa: E731
    assert first(16384, 2048, False)[0] == (1024, 2, 8, 1, True)
    assert first(16384, 2048, True)[0] == (512, 2, 4, 1, True) and (1024, 2, 8, 1, True) in first(16384, 2048, True)
    assert first(2048, 16384, True)[0] == (512, 2, 4, 1, True)
    assert first(2048, 2048, True) == first(2048, 2048, False)  # a layer that never took the 1024-column tile
    packed = triton_backend.quantize_pack(rand(64, 256), None, 4, 64)
    x = rand(1, 256).to(XDTYPE)
    tuned_with_lowrank = triton_backend.tune_key(DEV.type, 64, 256, 4, 64, 1, XDTYPE, True, "gemv")
    monkeypatch.setattr(triton_backend, "_TUNED", {tuned_with_lowrank: ("not", "a", "tile")})
    y = triton_backend.quant_matmul(x, packed)  # the tile tuned for low-rank calls is not used without one
    assert rel_err(y, ref_matmul(x, packed)) < PAIRS_TOL


def test_path_rule_follows_m_and_layer_size():
    assert triton_backend.path_for(1, 256, 256) == "gemv" and triton_backend.path_for(4, 2048, 2048, 3) == "gemv"
    # 3-4 tokens at 2 and 4 bits from 4M weights: the weight-as-left-operand GEMM beat the GEMV (run 12)
    assert triton_backend.path_for(3, 2048, 2048, 4) == "dot" and triton_backend.path_for(2, 16384, 2048, 2) == "gemv"
    assert triton_backend.path_for(3, 2048, 1024) == "dot"
    assert triton_backend.path_for(5, 256, 256) == "dot" and triton_backend.path_for(8, 2048, 2048) == "dot"
    assert triton_backend.path_for(16, 16384, 2048) == "dot"
    # layers under 4M weights: the weight-as-left-operand GEMM from 2 to 32 tokens (H200 run 14: it beat the
    # GEMV, the split-K GEMM and dequantize + cuBLAS on every small layer), one group a program, 64 or 128 columns
    paths = [triton_backend.path_for(M, 256, 2048) for M in (1, 2, 16, 32, 64, 65)]
    assert paths == ["gemv", "dot", "dot", "dot", "dot", "dequant"]  # k/v: to 64 tokens since run 15
    assert triton_backend.path_for(33, 2048, 1024) == "dequant"  # wider small layers: to 32
    assert triton_backend.path_for(16, 2048, 1024, 2) == "dot" and triton_backend.path_for(2, 256, 2048, 3) == "gemv"
    assert triton_backend._candidates(4, 64, 2048, 256, 3, 132)[0] == (16, 64, 1, 32, 4, 3)
    assert triton_backend._candidates(2, 64, 1024, 2048, 32, 132)[0] == (32, 128, 1, 16, 4, 3)
    assert triton_backend._candidates(4, 64, 2048, 2048, 3, 132)[0] == (16, 256, 1, 32, 4, 3)  # 4M: not small
    assert triton_backend._candidates(4, 64, 2048, 16384, 8, 132)[0] == (16, 256, 1, 5, 4, 3)  # large: unchanged
    # mid-size layers (4M-12M weights) keep the GEMM up to 32 tokens since run 12 (2048 x 2048: 6.0-8.8 µs
    # against 10.0-10.2 for dequantize + cuBLAS), and lose it above
    assert triton_backend.path_for(16, 2048, 2048) == "dot" and triton_backend.path_for(32, 2048, 2048, 2) == "dot"
    assert triton_backend.path_for(33, 2048, 2048, 4) == "dequant"
    assert triton_backend.path_for(800, 16384, 2048) == "dequant"
    # the GEMMs' reach depends on the width: W2 to 64 tokens on the large layers since the
    # weight-as-left-operand kernel (H200 run 11), W4 since its tiles of 64 rows dequantize every code (run 15),
    # and never at widths of several slices (3 bits: 3-5x slower than dequantize + cuBLAS, run 9)
    assert triton_backend.path_for(64, 16384, 2048, 2) == "dot"
    assert triton_backend.path_for(65, 16384, 2048, 2) == "dequant"
    assert [triton_backend.path_for(M, 2048, 16384, 4) for M in (48, 64, 65)] == ["dot", "dot", "dequant"]
    assert triton_backend.path_for(64, 2048, 2048, 4) == "dequant"  # mid-size layers stop at 32
    assert triton_backend.path_for(64, 2048, 2048, 2) == "dot"  # W2 on mid-size layers to 64 since run 15
    assert triton_backend.path_for(65, 2048, 2048, 2) == "dequant"
    assert triton_backend.path_for(8, 16384, 2048, 3) == "dequant" and triton_backend.path_for(5, 256, 256, 3) == "dequant"
    assert triton_backend.path_for(4, 16384, 2048, 3) == "gemv"
    # run 15's reach to 64 tokens under 12M weights is for packed weights (H100 run 16): TTQ's per-call step keeps
    # its dense pass from 33 tokens there, and so does a low-rank term on layers of more than 1024 outputs
    assert triton_backend.path_for(48, 256, 2048, 4, lowrank=True) == "dot"  # k/v keep it with a low-rank term
    assert triton_backend.path_for(48, 1024, 4096, 2, lowrank=True) == "dot"  # and Gemma-300M's down
    assert triton_backend.path_for(48, 256, 2048, 4, online=True) == "dequant"
    assert triton_backend.path_for(48, 2048, 2048, 2, lowrank=True) == "dequant"
    assert triton_backend.path_for(48, 2048, 2048, 2, online=True) == "dequant"
    assert triton_backend.path_for(32, 2048, 2048, 2, True, True) == "dot"  # up to 32 tokens as before
    assert triton_backend.path_for(64, 16384, 2048, 4, True, True) == "dot"  # large layers: unchanged
    with pytest.raises(ValueError, match="at most"):
        triton_backend.quant_matmul(rand(20, 64).to(XDTYPE), triton_backend.quantize_pack(rand(32, 64), None, 4, 32),
                                    path="gemv")
    with pytest.raises(ValueError, match="path must be one of"):  # a typo must not silently run the GEMV
        triton_backend.quant_matmul(rand(2, 64).to(XDTYPE), triton_backend.quantize_pack(rand(32, 64), None, 4, 32),
                                    path="gemm")


def test_auto_never_picks_the_interpreter_and_overrides_are_checked():
    assert kernels.select_backend("cpu", 4, 64) == "reference"
    if not CUDA:
        assert kernels.select_backend("cpu", 4, 64, "triton") == "triton"  # explicit: interpreter allowed
    with pytest.raises(ValueError, match="unknown kernel backend"):
        kernels.select_backend("cpu", 4, 64, "cutlass")
    with pytest.raises(ValueError, match="cannot run 4-bit g16"):
        kernels.select_backend(DEV, 4, 16, "triton")
    with pytest.raises(ValueError, match="cannot run 2-bit"):
        kernels.select_backend(DEV, 2, 64, "torch_int4")
    assert "triton" not in kernels.available_backends(DEV, 4, 48)
    # 96 is a multiple of 32, but the kernels' tiles need a power of two: another backend runs it
    g96 = kernels.available_backends(DEV, 4, 96)
    assert "triton" not in g96 and "reference" in g96
    with pytest.raises(ValueError, match="cannot run 4-bit g96"):
        kernels.select_backend(DEV, 4, 96, "triton")


def test_quant_linear_and_ttq_linear_run_through_the_triton_backend():
    torch.manual_seed(0)
    lin = torch.nn.Linear(128, 48).to(DEV)
    x = rand(5, 128).to(XDTYPE)
    packed = reference.quantize_pack(lin.weight, None, 4, 32)
    ql = QuantLinear(packed, None, lin.bias, backend="triton")
    y = ql(x)
    assert rel_err(y, ref_matmul(x, packed, bias=lin.bias)) < TOL
    first = ql.prepared("triton")
    assert isinstance(first, PlanarPackedWeight) and ql.prepared("triton") is first  # converted once
    ql.qscale.mul_(2.0)  # buffers changed in place: the cached copy must follow
    assert ql.prepared("triton") is not first
    cfg = QuantConfig(bits=3, group=32, rank=4, backend="triton", check_finite=False)
    ttq = TTQLinear(lin, cfg).to(DEV)
    ref_cfg = QuantConfig(bits=3, group=32, rank=4, backend="reference", check_finite=False)
    ttq_ref = TTQLinear(lin, ref_cfg).to(DEV)
    xx = rand(7, 128)
    assert rel_err(ttq(xx.to(XDTYPE)), ttq_ref(xx.to(XDTYPE).float()).double()) < (3e-2 if CUDA else 1e-5)


def test_prescaled_gemm_of_library_backends_matches_reference():
    """torch int4 and Marlin wrap a GEMM that cannot fuse x/D, the low-rank term or the bias."""
    packed = reference.quantize_pack(rand(64, 128), col_scale(128), 3, 32)
    x, cs = rand(2, 5, 128), col_scale(128)
    lowrank, bias = (rand(64, 4, scale=0.1), rand(4, 128, scale=0.1)), rand(64)
    dense = packed.dequantize()  # the library GEMM's job: y = x_scaled @ Q(W s)ᵀ
    y = reference.prescaled_gemm(x, 64, lambda xs: xs @ dense.T, cs, lowrank, bias)
    assert y.shape == (2, 5, 64)
    assert rel_err(y, reference.quant_matmul(x, packed, cs, lowrank, bias)) < 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_torch_int4_backend_matches_reference():
    packed = reference.quantize_pack(rand(256, 512), None, 4, 64)
    x, cs = rand(3, 512).to(torch.bfloat16), col_scale(512)
    lowrank = (rand(256, 16, scale=0.1), rand(16, 512, scale=0.1))
    y = kernels.quant_matmul(x, kernels.prepare(packed, "torch_int4"), cs, lowrank, None, backend="torch_int4")
    assert rel_err(y, ref_matmul(x, packed, cs, lowrank)) < 1e-2


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("M", [1, 16, 64, 800])
def test_triton_at_pi05_gate_shape(M):
    packed = triton_backend.quantize_pack(rand(16384, 2048, scale=0.02).to(torch.bfloat16), col_scale(2048), 2, 64)
    x, cs = rand(M, 2048).to(torch.bfloat16), col_scale(2048)
    assert rel_err(triton_backend.quant_matmul(x, packed, cs), ref_matmul(x, packed, cs)) < 1e-2


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("M", [1, 3, 16])
def test_autotuner_times_every_candidate_and_keeps_a_correct_tile(monkeypatch, M):
    """VLA_TTQ_AUTOTUNE: the first call of a shape times each tile candidate (CUDA-graph replays) and
    remembers one of them; that tile and every later call give the right result, and the timing runs
    only once per shape. Also a graph captured after tuning replays the tuned tile."""
    N, K = 2048, 2048  # M = 1: the GEMV; 3 and 16: the tensor-core GEMM (path_for)
    assert triton_backend.path_for(M, N, K, 4) == ("gemv" if M == 1 else "dot")
    packed = triton_backend.quantize_pack(rand(N, K, scale=0.02).to(torch.bfloat16), col_scale(K), 4, 64)
    x, cs = rand(M, K).to(torch.bfloat16), col_scale(K)
    lowrank = (rand(N, 16, scale=0.02).to(torch.bfloat16), rand(16, K, scale=0.02).to(torch.bfloat16))
    monkeypatch.setenv("VLA_TTQ_AUTOTUNE", "all")
    monkeypatch.setattr(triton_backend, "_TUNED", {})
    timed = []
    real_tune = triton_backend._tune

    def tune(key, cands, run, packed):
        timed.append((key, list(cands)))
        return real_tune(key, cands, run, packed)

    monkeypatch.setattr(triton_backend, "_tune", tune)
    ref = ref_matmul(x, packed, cs, lowrank)
    y = triton_backend.quant_matmul(x, packed, cs, lowrank)
    assert len(timed) == 1 and len(timed[0][1]) > 1
    key, cands = timed[0]
    assert triton_backend._TUNED[key] in cands
    assert rel_err(y, ref) < 1e-2
    assert rel_err(triton_backend.quant_matmul(x, packed, cs, lowrank), ref) < 1e-2 and len(timed) == 1
    out = torch.empty(M, N, device=DEV, dtype=torch.bfloat16)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out.copy_(triton_backend.quant_matmul(x, packed, cs, lowrank))
    out.zero_()
    graph.replay()
    torch.cuda.synchronize()
    assert rel_err(out, ref) < 1e-2 and len(timed) == 1


def test_marlin_is_unavailable_without_vllm_or_matches_reference():
    from vla_ttq.kernels import marlin

    if not CUDA:
        assert not marlin.is_available(torch.device("cpu"), 4, 64)
        return
    if not marlin.is_available(DEV, 4, 128):
        assert marlin.unavailable_reason()
        pytest.skip(f"marlin unavailable: {marlin.unavailable_reason()}")
    packed = reference.quantize_pack(rand(256, 512), None, 4, 128)
    x = rand(2, 512).to(torch.float16)
    assert rel_err(marlin.quant_matmul(x, packed), ref_matmul(x, packed)) < 1e-2


def test_read_ceiling_kernel_reads_every_word_and_scale_of_its_range(load_script):
    """scripts/stream_ceiling.py bounds the M = 1 kernels by a read-only kernel; its bound means
    something only if each program really loads all words and S / Z rows of its K range."""
    mod = load_script("stream_ceiling")
    N, G, WG, splits = 256, 8, 4, 2
    w = torch.randint(-2**31, 2**31 - 1, (G * WG, N), dtype=torch.int32, device=DEV)
    s, z = rand(G, N).half(), rand(G, N).half()
    out = torch.empty(splits, N, device=DEV)
    mod.read_kernel[(N // 128, splits)](w, s, z, out, N, G, G // splits, WG=WG, C=2, BN=128, STAGES=1)
    words = w.view(splits, G // splits * WG, N)
    xor = words[:, 0]
    for r in range(1, words.shape[1]):
        xor = xor ^ words[:, r]
    sz = (s.float() + z.float()).view(splits, G // splits, N).sum(1)
    assert torch.allclose(out, xor.float() + sz, rtol=1e-5, atol=1e-3)
    assert len(list(mod.tiles(16384, 32, 8, quick=False))) > len(list(mod.tiles(16384, 32, 8, quick=True))) > 0


def test_sass_diff_compiles_the_launches_production_makes(tmp_path, load_script):
    """scripts/sass_diff.py checks a kernel edit offline: it records the launches the backend makes for a layer
    (on the paths path_for picks), compiles them for sm_90 as the JIT would and reports their registers and SASS.
    It runs in its own process: compiled kernels, not the interpreter this test process may have set up."""
    import json
    import os
    import subprocess
    import sys

    from conftest import SCRIPTS

    N, K = 8192, 2048  # >= 12 M weights: at 24 tokens x / cs is made by its own kernel before the GEMM
    assert triton_backend.path_for(1, N, K, 4) == "gemv" and triton_backend.path_for(24, N, K, 4) == "dot"
    assert triton_backend._prescaled(24, N, K)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    runs = []
    for i in range(2):
        out = tmp_path / f"figures{i}.json"
        subprocess.run([sys.executable, str(SCRIPTS / "sass_diff.py"), f"--layer=big={N},{K}", "--tokens", "1,24",
                        "--bits", "4", "--json", str(out), "--quiet"], env=env, check=True, timeout=600)
        runs.append(json.loads(out.read_text()))
    assert {k for k in runs[0] if not k.startswith("TTQ step")} == {
        "quantize big W4: quantize_kernel", "big W4 M=1: gemv1_kernel", "big W4 M=24: prescale_kernel",
        "big W4 M=24: quant_matmul_wa_kernel"}
    assert "TTQ step big W4 M=1: column_scale_kernel" in runs[0]  # TTQ's per-call step: D, then the GEMV as above
    assert runs[0] == runs[1]  # the same code compiles to the same SASS: a difference means the code changed
    assert all(f["regs"] > 0 and f["instructions"] > 10 for f in runs[0].values())
    assert runs[0]["big W4 M=1: gemv1_kernel"]["sha"] != runs[0]["big W4 M=24: quant_matmul_wa_kernel"]["sha"]

    mod = load_script("sass_diff")
    base = {k: v for k, v in runs[0].items() if "prescale" not in k}
    base["big W4 M=1: gemv1_kernel"] = dict(base["big W4 M=1: gemv1_kernel"], sha="0", regs=200)
    text = mod.table(runs[0], base, "HEAD~1")
    assert "| big W4 M=1: gemv1_kernel | 200 → " in text and "| **no** |" in text
    assert "| big W4 M=24: prescale_kernel |" in text and "not there" in text
    assert text.count("| yes |") == len(runs[0]) - 2  # all but the changed GEMV and the absent prescale
    for bad in (["--layer", "big=8192"], ["--base", "no-such-revision"]):  # NAME=N,K needs two integers
        with pytest.raises(SystemExit):
            mod.main(bad)


def test_cuda_gemv_experiment_sizes_its_tiles_and_builds_for_sm90(tmp_path, load_script):
    """scripts/cuda_gemv_ab.py (run 14) builds scripts/cuda_gemv1.cu once per tile with NVRTC on the GPU.
    Its tile rules must match the kernel's assumptions, and where nvcc is installed the source must
    compile for sm_90a in both ways of feeding it (registers, bulk copies) and in its read-only form."""
    import shutil
    import subprocess
    from pathlib import Path

    mod = load_script("cuda_gemv_ab")
    for set_name, tiles in mod.TILE_SETS.items():
        for name, (N, K) in mod.LAYERS.items():
            assert all(mod.valid(N, K, t) for t in tiles[name]), (set_name, name)
    assert not mod.valid(2048, 16384, (64, 3, 8, 8, None))  # 8 groups do not split over 3 thread rows evenly
    assert not mod.valid(16384, 2048, (64, 2, 8, 8, None))  # 4 K splits cannot fill a cluster of 8
    assert not mod.valid(16384, 2048, (64, 2, 4, 8, 3))  # a thread has 2 groups: a ring of 3 is too deep
    assert mod.dynamic_smem(4, (128, 2, 4, 8, "bulk")) == 4 * (8 * 512 * 4 + 2 * 512 * 2 + 8)
    assert mod.dynamic_smem(2, (64, 2, 4, 8, 2)) == 0
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not installed: the .cu source is only built on the GPU machine")
    for defs in ("-DBITS=4 -DTX=64 -DTK=4 -DGPC=16 -DCL=2 -DPIPE=2", "-DBITS=2 -DTX=32 -DTK=4 -DGPC=8 -DCL=8 -DBULK=1",
                 "-DBITS=4 -DTX=16 -DTK=16 -DGPC=32 -DCL=8 -DREAD_ONLY=1"):
        cmd = [nvcc, "-cubin", "-arch=sm_90a", "-std=c++17", *defs.split(), "-o", str(tmp_path / "g.cubin"),
               str(Path(mod.__file__).with_name("cuda_gemv1.cu"))]
        out = subprocess.run(cmd, capture_output=True, text=True)
        assert out.returncode == 0, f"{defs}: {out.stderr[-2000:]}"
        assert (tmp_path / "g.cubin").stat().st_size > 0


def test_kernel_benchmark_names_an_unknown_shape_set(capsys):
    from vla_ttq.kernels import bench

    with pytest.raises(SystemExit):
        bench.main(["--sets", "gemma2b,gemma9b"])
    err = capsys.readouterr().err
    assert "gemma9b" in err and "gemma2b_fused" in err  # names the bad one and lists the known ones


def test_benchmark_rotates_enough_copies_to_read_past_l2():
    from vla_ttq.kernels import bench

    w = torch.arange(6.0)
    copies = bench.rotating_copies(w, nbytes=1 << 20, l2_bytes=4 << 20)  # 3 x L2 / size = 12 copies
    assert len(copies) == 12 and copies[0] is w
    assert all(torch.equal(c, w) and c.data_ptr() != w.data_ptr() for c in copies[1:])
    assert len(bench.rotating_copies(w, nbytes=1 << 30, l2_bytes=4 << 20)) == 1  # larger than L2: no copies


def test_benchmark_report_has_the_ttq_step_table():
    from vla_ttq.kernels import bench

    row = {"set": "gemma2b", "layer": "q/o", "N": 2048, "K": 2048, "M": 800, "bf16 us": 12.0, "int4 us": 5.0,
           "W4 r0 us": 17.0, "W4 r0 floor_us": 2.0, "W4 r16 us": 20.0, "W2 r0 us": 16.0, "W2 r0 floor_us": 1.9,
           "W2 r16 us": 19.0, "W4 r0 kernel": "dequant", "TTQ W4 r0 us": 30.0, "TTQ W4 r0 floor_us": 2.1,
           "TTQ W4 r16 us": 35.0, "TTQ W2 r0 us": 31.0, "TTQ W2 r16 us": 36.0}
    res = {"device": {"name": "H", "torch": "t", "triton": "3", "bandwidth_GBps": 4000, "l2_MB": 60}, "group": 64,
           "matmul": [row], "quantize": [], "targets": []}
    text = bench.markdown(res)
    assert "| gemma2b | q/o | 2048×2048 | 800 | 12.0 | 30.0 (2.1) | 35.0 | 31.0 | 36.0 | 2.50× |" in text
    del row["TTQ W4 r0 us"]  # a result file from before the step was timed: no table, no error
    assert "whole per-call step" not in bench.markdown(res)


def test_gpu_scripts_share_one_argument_parser(tmp_path, capsys):
    from vla_ttq.kernels import bench

    out = tmp_path / "a" / "b"
    args = bench.script_args("doc", check="small run", argv=["--out", str(out), "--check"])
    assert out.is_dir() and args.out == out and args.check
    assert not hasattr(bench.script_args(argv=["--out", str(out)]), "check")
    with pytest.raises(SystemExit):
        bench.script_args(argv=[])  # --out is required
    assert "--out" in capsys.readouterr().err


def test_gpu_scripts_check_each_variant_before_timing_it():
    from vla_ttq.kernels import bench

    ref = torch.arange(1.0, 5.0, dtype=torch.float64)
    copies = [torch.ones(4), torch.ones(4)]
    timed = []

    def timer(fns):  # stands in for the CUDA-graph timing: runs each call once
        timed.extend(f() for f in fns)
        return 7.0

    ok = bench.checked_time(lambda c: c * ref.float(), copies, ref, timer=timer)
    assert ok == dict(us=7.0, err=0.0) and len(timed) == 2  # every copy timed, after the check
    wrong = bench.checked_time(lambda c: c * 2 * ref.float(), copies, ref, timer=timer)
    assert wrong["us"] == float("inf") and "wrong result" in wrong["error"] and len(timed) == 2  # never timed
    nan = bench.checked_time(lambda c: c * float("nan"), copies, ref, timer=timer)
    assert nan["us"] == float("inf") and "wrong result" in nan["error"]

    def out_of_memory(c):
        raise RuntimeError("out of shared memory")
    failed = bench.checked_time(out_of_memory, copies, ref, timer=timer)
    assert failed == dict(us=float("inf"), error="RuntimeError: out of shared memory")


def test_gpu_scripts_share_one_seeded_layer_setup():
    from vla_ttq.kernels import bench

    l2 = 3 * 64 * 128 * 2  # small enough that rotating copies are needed
    rows = list(bench.script_layers({"a": (64, 128)}, (4, 2), l2, device=str(DEV)))
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [("a", 64, 128, 4), ("a", 64, 128, 2)]
    _, N, K, bits, _, w, cs, w_copies, packed, copies = rows[1]
    assert rows[0][5] is w and w.dtype == torch.bfloat16 and len(w_copies) == bench.n_copies(N * K * 2, l2) > 1
    assert isinstance(packed, PlanarPackedWeight) and packed.bits == 2 and len(copies) == bench.n_copies(N * K // 4, l2)
    assert all(torch.equal(c.data, packed.data) for c in copies) and float(cs.min()) >= 0.5
    again = next(bench.script_layers({"a": (64, 128)}, (4,), l2, device=str(DEV)))
    assert torch.equal(again[5], w)  # seeded by the shape: reruns time the same weights
    # run 9's scripts: their own seed and a column scale in [0.5, 2.0), drawn as they drew them
    other = next(bench.script_layers({"a": (64, 128)}, (4,), l2, device=str(DEV), seed=lambda N, K: N * 7 + K,
                                     cs_span=1.5))
    g = torch.Generator(device=str(DEV)).manual_seed(64 * 7 + 128)
    w_run9 = (torch.randn(64, 128, device=str(DEV), generator=g) * 0.02).to(torch.bfloat16)
    assert torch.equal(other[5], w_run9) and not torch.equal(other[5], w)
    assert torch.equal(other[6], torch.rand(128, device=str(DEV), generator=g) * 1.5 + 0.5)
