"""Triton kernels over the planar layout (``layout.py``). Only kernels here; launching is in
``triton_backend.py``.

Every matmul computes ``y = (x / cs) · Ŵᵀ`` with ``Ŵ = codes·S + Z`` groupwise, as a sum over the
power-of-two code slices (slice p contributes ``2^off_p · S · slice_codes``; Z is added once).
Codes become floats with the exponent trick ``float(c | 0x4B000000) - 2^23`` (exact for c < 2^23):
two full-rate ALU ops instead of a quarter-rate int-to-float conversion.
"""

from __future__ import annotations

import triton
import triton.language as tl

@triton.jit
def _code_float(words, shift, WBITS: tl.constexpr):
    q = ((words >> shift) & ((1 << WBITS) - 1)) | 0x4B000000
    return q.to(tl.float32, bitcast=True) - 8388608.0


@triton.jit
def _group_rows(ptr, gi, offs_n, mask_r, mask_n, N):
    """Per-group rows (scales or zero points) of the tile's word rows, (BKW, BN), as fp32."""
    return tl.load(ptr + gi[:, None] * N + offs_n[None, :], mask=mask_r[:, None] & mask_n[None, :],
                   other=0.0).to(tl.float32)


@triton.jit
def _x_slab(x_ptr, cs_ptr, offs_m, k, xmask, mask_r, K, HAS_CS: tl.constexpr):
    """x[:, k] / cs[k] (the prescale fused into the load), (BM, BKW), as fp32."""
    xi = tl.load(x_ptr + offs_m[:, None] * K + k[None, :], mask=xmask, other=0.0).to(tl.float32)
    if HAS_CS:
        xi = tl.fdiv(xi, tl.load(cs_ptr + k, mask=mask_r, other=1.0)[None, :])
    return xi


@triton.jit
def _tile_words(w_ptr, s_ptr, offs_n, mask_n, g0, G, N, row0, WBITS: tl.constexpr, GROUP: tl.constexpr,
                GT: tl.constexpr):
    """Word rows of groups [g0, g0+GT) of one slice, (BKW, BN), and each row's scale, as fp32."""
    WG: tl.constexpr = GROUP * WBITS // 32
    BKW: tl.constexpr = GT * WG
    r = tl.arange(0, BKW)
    gi = g0 + r // WG
    mask_r = gi < G
    m = mask_r[:, None] & mask_n[None, :]
    words = tl.load(w_ptr + (row0 + g0 * WG + r)[:, None] * N + offs_n[None, :], mask=m, other=0)
    scale = _group_rows(s_ptr, gi, offs_n, mask_r, mask_n, N)
    return words, scale, gi, mask_r, gi * GROUP + r % WG


@triton.jit
def _dot_slice(acc, x_ptr, cs_ptr, w_ptr, s_ptr, z_ptr, offs_m, mask_m, offs_n, mask_n, g0, G, N, K,
               row0, SLICE_SCALE: tl.constexpr, WBITS: tl.constexpr, GROUP: tl.constexpr, GT: tl.constexpr,
               HAS_CS: tl.constexpr, WITH_ZERO: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """acc (BM, BN) += x_slab · Ŵ_slab for each slab of one code slice: tensor cores."""
    WG: tl.constexpr = GROUP * WBITS // 32
    CPW: tl.constexpr = 32 // WBITS
    words, scale, gi, mask_r, kbase = _tile_words(w_ptr, s_ptr, offs_n, mask_n, g0, G, N, row0, WBITS, GROUP, GT)
    scale = scale * SLICE_SCALE
    if WITH_ZERO:
        zero = _group_rows(z_ptr, gi, offs_n, mask_r, mask_n, N)
    xmask = mask_m[:, None] & mask_r[None, :]
    for i in tl.static_range(CPW):
        k = kbase + i * WG
        xi = _x_slab(x_ptr, cs_ptr, offs_m, k, xmask, mask_r, K, HAS_CS)
        w = _code_float(words, i * WBITS, WBITS) * scale
        if WITH_ZERO:
            w += zero
        if DOT_DTYPE == tl.float32:
            acc = tl.dot(xi, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(xi.to(DOT_DTYPE), w.to(DOT_DTYPE), acc)
    return acc


@triton.jit
def _lowrank_t(x_ptr, a_ptr, offs_m, mask_m, k0, k1, K, R, BM: tl.constexpr, BR: tl.constexpr,
               DOT_DTYPE: tl.constexpr):
    """t (BM, BR) fp32 = x[:, k0:k1] · A[:, k0:k1]ᵀ: the low-rank term's first product over a K
    range, computed in the matmul's own programs instead of by a matmul launched before them.
    Chunks are pipelined (their loads issued ahead): unpipelined, the programs that compute t
    wait on one load latency per chunk and finish last."""
    CH: tl.constexpr = 128
    r = tl.arange(0, BR)
    c = tl.arange(0, CH)
    t = tl.zeros((BM, BR), tl.float32)
    for k in tl.range(k0, k1, CH, num_stages=3):
        kk = k + c
        km = kk < k1
        xv = tl.load(x_ptr + offs_m[:, None] * K + kk[None, :], mask=mask_m[:, None] & km[None, :], other=0.0)
        av = tl.load(a_ptr + r[:, None] * K + kk[None, :], mask=(r[:, None] < R) & km[None, :], other=0.0)
        if DOT_DTYPE == tl.float32:  # tensor cores (BM, BR >= 16)
            t = tl.dot(xv.to(tl.float32), tl.trans(av.to(tl.float32)), t, input_precision="ieee")
        else:
            t = tl.dot(xv.to(DOT_DTYPE), tl.trans(av.to(DOT_DTYPE)), t)
    return t


@triton.jit
def _epilogue(acc, offs_n, mask_n, bias_ptr, t, b_ptr, R, HAS_BIAS: tl.constexpr, HAS_LR: tl.constexpr,
              BR: tl.constexpr):
    """acc + bias + t Bᵀ, with t = x Aᵀ (BM, BR) fp32 from ``_lowrank_t``."""
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    if HAS_LR:
        r = tl.arange(0, BR)
        b = tl.load(b_ptr + offs_n[:, None] * R + r[None, :], mask=mask_n[:, None] & (r[None, :] < R), other=0.0)
        if t.shape[0] >= 16 and BR >= 16:  # tensor cores: the (BM, BN, BR) products below would spill registers
            acc = tl.dot(t.to(b.dtype), tl.trans(b), acc)
        else:
            acc += tl.sum(t[:, None, :] * b.to(tl.float32)[None, :, :], axis=2)
    return acc


@triton.jit
def _gemm_program(M, N, G, tiles_per_split, BM: tl.constexpr, BN: tl.constexpr, GT: tl.constexpr):
    """This program's place in a split-K GEMM's (N tiles, K splits, M tiles) grid: its column and
    row indices with their masks, and its range [t0, t1) of K tiles of GT groups."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_m = tl.program_id(2) * BM + tl.arange(0, BM)
    t0 = pid_k * tiles_per_split
    t1 = tl.minimum(t0 + tiles_per_split, tl.cdiv(G, GT))
    return pid_n, pid_k, offs_n, offs_n < N, offs_m, offs_m < M, t0, t1


@triton.jit
def quant_matmul_kernel(
    x_ptr, cs_ptr, w_ptr, s_ptr, z_ptr, out_ptr, bias_ptr, a_ptr, b_ptr, tpart_ptr,
    M, N, K, G, row1, row2, tiles_per_split, R,
    W0: tl.constexpr, W1: tl.constexpr, W2: tl.constexpr, OFF1: tl.constexpr, OFF2: tl.constexpr,
    GROUP: tl.constexpr, GT: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BR: tl.constexpr,
    DOT_DTYPE: tl.constexpr, HAS_CS: tl.constexpr, PARTIAL: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_LR: tl.constexpr,
):
    """Split-K low-bit matmul on tensor cores (dequantized tiles fed to tl.dot). Grid (N tiles,
    K splits, M tiles); each program sums its share of K tiles of GT groups. PARTIAL: write fp32
    partial sums (SPLIT, M, N) for ``reduce_kernel``, and (HAS_LR) the first column of programs
    writes its K range's part of t = x Aᵀ (SPLIT, M, BR) to ``tpart``; else compute t over all of
    K, apply the epilogue and write y in out's dtype."""
    pid_n, pid_k, offs_n, mask_n, offs_m, mask_m, t0, t1 = _gemm_program(M, N, G, tiles_per_split, BM, BN, GT)
    acc = tl.zeros((BM, BN), tl.float32)
    for t in range(t0, t1):
        g0 = t * GT
        acc = _dot_slice(acc, x_ptr, cs_ptr, w_ptr, s_ptr, z_ptr, offs_m, mask_m, offs_n, mask_n, g0, G, N, K,
                         0, 1, W0, GROUP, GT, HAS_CS, True, DOT_DTYPE)
        if W1 > 0:
            acc = _dot_slice(acc, x_ptr, cs_ptr, w_ptr, s_ptr, z_ptr, offs_m, mask_m, offs_n, mask_n, g0, G, N, K,
                             row1, 1 << OFF1, W1, GROUP, GT, HAS_CS, False, DOT_DTYPE)
        if W2 > 0:
            acc = _dot_slice(acc, x_ptr, cs_ptr, w_ptr, s_ptr, z_ptr, offs_m, mask_m, offs_n, mask_n, g0, G, N, K,
                             row2, 1 << OFF2, W2, GROUP, GT, HAS_CS, False, DOT_DTYPE)
    _matmul_tail(acc, x_ptr, out_ptr, bias_ptr, a_ptr, b_ptr, tpart_ptr, offs_m, mask_m, offs_n, mask_n, pid_n, pid_k,
                 M, N, K, R, t0 * GT * GROUP, tl.minimum(t1 * GT * GROUP, K), BM, BR, DOT_DTYPE, PARTIAL, HAS_BIAS,
                 HAS_LR)


@triton.jit
def _matmul_tail(acc, x_ptr, out_ptr, bias_ptr, a_ptr, b_ptr, tpart_ptr, offs_m, mask_m, offs_n, mask_n, pid_n, pid_k,
                 M, N, K, R, k0, k1, BM: tl.constexpr, BR: tl.constexpr, DOT_DTYPE: tl.constexpr,
                 PARTIAL: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_LR: tl.constexpr):
    """What a GEMM program does with its (BM, BN) sum over input channels [k0, k1): PARTIAL: store
    it to the fp32 partials for ``reduce_kernel`` (and, in the first column of programs, this K
    range's part of t = x Aᵀ); else add bias and the low-rank term and store y."""
    omask = mask_m[:, None] & mask_n[None, :]
    if PARTIAL:
        tl.store(out_ptr + pid_k * M * N + offs_m[:, None] * N + offs_n[None, :], acc, mask=omask)
        if HAS_LR:
            if pid_n == 0:
                lr_t = _lowrank_t(x_ptr, a_ptr, offs_m, mask_m, k0, k1, K, R, BM, BR, DOT_DTYPE)
                r = tl.arange(0, BR)
                tl.store(tpart_ptr + (pid_k * M + offs_m[:, None]) * BR + r[None, :], lr_t, mask=mask_m[:, None])
    else:
        lr_t = tl.zeros((BM, BR), tl.float32)
        if HAS_LR:
            lr_t = _lowrank_t(x_ptr, a_ptr, offs_m, mask_m, 0, K, K, R, BM, BR, DOT_DTYPE)
        acc = _epilogue(acc, offs_n, mask_n, bias_ptr, lr_t, b_ptr, R, HAS_BIAS, HAS_LR, BR)
        tl.store(out_ptr + offs_m[:, None] * N + offs_n[None, :], acc.to(out_ptr.dtype.element_ty), mask=omask)


@triton.jit
def _group_codes(w_ptr, shift_ptr, offs_n, mask_n, g, N, row0, WBITS: tl.constexpr, GROUP: tl.constexpr,
                 BN: tl.constexpr, DOT_DTYPE: tl.constexpr, MAGIC: tl.constexpr):
    """(BN, GROUP) codes of one slice of group g as 16-bit floats, for the left operand of tl.dot.
    The (BN, WG) words are expanded to (BN, CPW, WG) by shifting and reshaped: position i·WG + j
    is field i of word row j, which is channel i·WG + j (layout.py), so x is read in order. The
    shifts come from a table in memory (i·WBITS = shift_ptr[i]·WBITS) rather than tl.arange: then
    every op from the words' load to the dot is elementwise or a view, and Triton makes the codes
    in the tensor cores' register layout, moving only the words between threads. MAGIC: codes
    become floats by OR-ing them into the mantissa of 2^e (0x4300 = 128 in bf16, 0x6400 = 1024 in
    fp16), giving 2^e + c; 0: a plain int-to-float conversion, giving c."""
    WG: tl.constexpr = GROUP * WBITS // 32
    CPW: tl.constexpr = 32 // WBITS
    j = tl.arange(0, WG)
    words = tl.load(w_ptr + (row0 + g * WG + j)[None, :] * N + offs_n[:, None], mask=mask_n[:, None], other=0)
    shift = tl.load(shift_ptr + tl.arange(0, CPW)) * WBITS
    codes = tl.reshape((words[:, None, :] >> shift[None, :, None]) & ((1 << WBITS) - 1), (BN, GROUP))
    if MAGIC != 0:
        return (codes | MAGIC).to(tl.int16).to(DOT_DTYPE, bitcast=True)
    return codes.to(DOT_DTYPE)


@triton.jit
def _pair_codes(w_ptr, shift_ptr, offs_n, mask_n, g, N, WBITS: tl.constexpr, GROUP: tl.constexpr,
                BN: tl.constexpr, DOT_DTYPE: tl.constexpr, MAGIC: tl.constexpr, ASM: tl.constexpr,
                PAIR_ASM: tl.constexpr):
    """(BN, GROUP) codes of group g (one 2- or 4-bit slice) as 16-bit floats 2^e + c, in the dot's
    order κ of the group's channels (the channel of κ is ``pair_order``'s, in triton_backend; x is read
    in the same order). The order is chosen so that each pair (κ, κ+1) a thread holds in the
    tensor cores' operand sits in one word, 16 bits apart: one LOP3 ((w >> shift) & mask | magic)
    makes both halves of the operand's 32-bit register. κ = 16s + 8h + 2q + e: q picks the lane's
    words, (s, h) the field f (shift f·WBITS, read from the table 0..31 at ``shift_ptr``), e the half."""
    WG: tl.constexpr = GROUP * WBITS // 32
    S: tl.constexpr = GROUP // 16
    words = tl.load(w_ptr + (g * WG + tl.arange(0, WG))[None, :] * N + offs_n[:, None], mask=mask_n[:, None],
                    other=0)
    sh = tl.arange(0, 2 * S)  # 2s + h
    if WG == 4:
        f = (sh % 2) * S + sh // 2
    else:
        f = (sh // 2) % (16 // WBITS)
    shift = tl.load(shift_ptr + f) * WBITS  # from a table, not arithmetic: see _group_codes
    if WG == 4:  # a lane's 8 pairs of a row are one word
        src = tl.reshape(words, (BN, 1, 1, 4, 1)) >> tl.reshape(shift, (1, S, 2, 1, 1))
        src = tl.broadcast_to(src, (BN, S, 2, 4, 2))
    else:  # word (s // PPW)·2 + h of the lane's
        PPW: tl.constexpr = 16 // WBITS
        src = tl.reshape(words, (BN, S // PPW, 1, 2, 4, 1)) >> tl.reshape(shift, (1, S // PPW, PPW, 2, 1, 1))
        src = tl.broadcast_to(src, (BN, S // PPW, PPW, 2, 4, 2))
    src = tl.reshape(src, (BN, GROUP))
    if ASM:  # PAIR_ASM: lop3 (src & mask | magic), both halves at once; its 32-bit output holds two 16-bit results
        pair = tl.inline_asm_elementwise(PAIR_ASM, "=r,r,r", [src], dtype=tl.int16, is_pure=True, pack=2)
        return pair.to(DOT_DTYPE, bitcast=True)
    # the interpreter runs no PTX: the same halves, one element at a time
    half = (tl.arange(0, GROUP) % 2) * 16
    codes = ((src >> half[None, :]) & ((1 << WBITS) - 1)) | MAGIC
    return codes.to(tl.int16).to(DOT_DTYPE, bitcast=True)


@triton.jit
def _pair_x(xr, WBITS: tl.constexpr, GROUP: tl.constexpr, BM: tl.constexpr):
    """x' rows (channels in order) put in ``_pair_codes``' order κ = 16s + 8h + 2q + e: the channel
    of κ is e·GROUP/2 + h·GROUP/4 + 4s + q (4 words a group) or e·GROUP/2 + (s % PPW)·WG + 8·(s // PPW)
    + 4h + q, a transpose of the group's channels seen as a small array (``pair_order``)."""
    S: tl.constexpr = GROUP // 16
    if GROUP * WBITS == 128:
        xr = tl.permute(tl.reshape(xr, (2, 2, S, 4, BM)), (2, 1, 3, 0, 4))
    else:
        PPW: tl.constexpr = 16 // WBITS
        xr = tl.permute(tl.reshape(xr, (2, PPW, S // PPW, 2, 4, BM)), (2, 1, 3, 4, 0, 5))
    return tl.reshape(xr, (GROUP, BM))


@triton.jit
def _column_scale(cs_ptr, k, K):
    """cs of channels k (1 past K), the divisor ``_group_x`` and ``prescale_kernel`` both take, each with
    tl.fdiv: x / cs made in either place must be the same bits (the prescaled GEMM's test checks it)."""
    return tl.load(cs_ptr + k, mask=k < K, other=1.0)


@triton.jit
def _group_x(x_ptr, cs_ptr, offs_m, mask_m, g, K, GROUP: tl.constexpr, HAS_CS: tl.constexpr,
             DOT_DTYPE: tl.constexpr):
    """(GROUP, BM) x' = x/cs of group g's channels, rounded to the dot's dtype, and (BM,) Σx' of
    the rounded values (those the dot multiplies: 2^e·Σx' then cancels exactly)."""
    k = g * GROUP + tl.arange(0, GROUP)
    xv = tl.load(x_ptr + offs_m[None, :] * K + k[:, None], mask=mask_m[None, :], other=0.0).to(tl.float32)
    if HAS_CS:
        xv = tl.fdiv(xv, _column_scale(cs_ptr, k, K)[:, None])
    xr = xv.to(DOT_DTYPE)
    return xr, tl.sum(xr.to(tl.float32), axis=0)


@triton.jit
def _wa_scale_zero(s_ptr, z_ptr, g, N, offs_n, mask_g, MAGIC: tl.constexpr, MAGIC_SHARE: tl.constexpr):
    """Group g's S and Z of columns offs_n in fp32, Z less the magic offset's share (2^e·S per slice) when
    the codes are 2^e + c."""
    scale = tl.load(s_ptr + g * N + offs_n, mask=mask_g, other=0.0).to(tl.float32)
    zero = tl.load(z_ptr + g * N + offs_n, mask=mask_g, other=0.0).to(tl.float32)
    if MAGIC != 0:
        zero -= scale * MAGIC_SHARE
    return scale, zero


@triton.jit
def quant_matmul_wa_kernel(
    x_ptr, cs_ptr, w_ptr, s_ptr, z_ptr, out_ptr, bias_ptr, a_ptr, b_ptr, tpart_ptr, shift_ptr, ws_ptr, lock_ptr,
    M, N, K, G, row1, row2, tiles_per_split, R,
    W0: tl.constexpr, W1: tl.constexpr, W2: tl.constexpr, OFF1: tl.constexpr, OFF2: tl.constexpr,
    GROUP: tl.constexpr, GT: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BR: tl.constexpr,
    DOT_DTYPE: tl.constexpr, HAS_CS: tl.constexpr, PARTIAL: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_LR: tl.constexpr, MAGIC: tl.constexpr, MAGIC_VALUE: tl.constexpr, STAGES: tl.constexpr,
    PAIRS: tl.constexpr, ASM: tl.constexpr, ATOMIC: tl.constexpr, PAIR_ASM: tl.constexpr, SCALED: tl.constexpr,
):
    """The split-K GEMM with the weight as the left operand ("swap AB"): each program sums a
    (BN, BM) block of yᵀ, so the output features fill the tensor cores' 64-row side and the few
    tokens their narrow side, and the dequantized codes can stay in registers. Scales are applied
    once per group to the group's dot (acc += S·(codes·x') + Z·Σx'), not to every code. SCALED (one
    slice): instead every code becomes S·c + Z in fp32, rounded once to the dot's dtype as
    dequantize + cuBLAS rounds its weight, and the dots chain into one accumulator: no per-group
    step, whose cost grows with the tokens, and no wait on each group's dot. Grid and
    partials as ``quant_matmul_kernel``; GT groups per loop step. ATOMIC (one tile of rows): no
    partials and no reduce kernel; K splits add into a zeroed workspace, as in the GEMV, and the
    last program of each column block writes y (``_gemv1_split_k_tail``)."""
    pid_n, pid_k, offs_n, mask_n, offs_m, mask_m, t0, t1 = _gemm_program(M, N, G, tiles_per_split, BM, BN, GT)
    # Σ over slices of 2^offset: the magic offset's share of every code, taken out with Σx'
    OFFSETS: tl.constexpr = 1 + (1 << OFF1 if W1 > 0 else 0) + (1 << OFF2 if W2 > 0 else 0)
    acc = tl.zeros((BN, BM), tl.float32)
    for t in tl.range(t0, t1, num_stages=STAGES):
        for u in tl.static_range(GT):
            g = t * GT + u
            # a last step of GT groups may run past the layer: those groups read as zero (compared
            # as tensors: the interpreter rejects a mask made with a scalar comparison)
            mask_g = mask_n & (offs_n * 0 + g < G)
            if PAIRS:
                a = _pair_codes(w_ptr, shift_ptr, offs_n, mask_g, g, N, W0, GROUP, BN, DOT_DTYPE, MAGIC, ASM,
                                PAIR_ASM)
            else:
                a = _group_codes(w_ptr, shift_ptr, offs_n, mask_g, g, N, 0, W0, GROUP, BN, DOT_DTYPE, MAGIC)
            xr, xsum = _group_x(x_ptr, cs_ptr, offs_m, mask_m & (offs_m * 0 + g < G), g, K, GROUP, HAS_CS,
                                DOT_DTYPE)
            if PAIRS:
                xr = _pair_x(xr, W0, GROUP, BM)
            if SCALED:  # codes 2^e + c are exact in fp32, Z - 2^e·S is to ~2^-17 S: one rounding, to DOT_DTYPE
                scale, zero = _wa_scale_zero(s_ptr, z_ptr, g, N, offs_n, mask_g, MAGIC, MAGIC_VALUE * OFFSETS)
                acc = tl.dot((a.to(tl.float32) * scale[:, None] + zero[:, None]).to(DOT_DTYPE), xr, acc)
            else:
                d = tl.dot(a, xr)
                if W1 > 0:
                    a1 = _group_codes(w_ptr, shift_ptr, offs_n, mask_g, g, N, row1, W1, GROUP, BN, DOT_DTYPE, MAGIC)
                    d += tl.dot(a1, xr) * (1 << OFF1)
                if W2 > 0:
                    a2 = _group_codes(w_ptr, shift_ptr, offs_n, mask_g, g, N, row2, W2, GROUP, BN, DOT_DTYPE, MAGIC)
                    d += tl.dot(a2, xr) * (1 << OFF2)
                # S and Z read after the dot is issued: read before it (run 15's order) they were loaded from shared
                # memory while the dot ran, which took 193 registers instead of 168 and made gate/up W4 at 3-16
                # tokens 21 µs instead of 15.5 (H200, run 16)
                scale, zero = _wa_scale_zero(s_ptr, z_ptr, g, N, offs_n, mask_g, MAGIC, MAGIC_VALUE * OFFSETS)
                acc += scale[:, None] * d + zero[:, None] * xsum[None, :]
    k0, k1 = t0 * GT * GROUP, tl.minimum(t1 * GT * GROUP, K)
    if ATOMIC:  # split-K summed by atomics, the last program of a column block writes y (tpart_ptr: tws)
        lr_t = tl.zeros((BM, BR), tl.float32)
        if HAS_LR:
            lr_t = _lowrank_t(x_ptr, a_ptr, offs_m, mask_m, k0, k1, K, R, BM, BR, DOT_DTYPE)
        _gemv1_split_k_tail(tl.trans(acc), lr_t, ws_ptr, lock_ptr, tpart_ptr, out_ptr, offs_n, mask_n, M, N, bias_ptr,
                            b_ptr, R, HAS_BIAS, HAS_LR, BR, BM, BM, True)
    else:
        _matmul_tail(tl.trans(acc), x_ptr, out_ptr, bias_ptr, a_ptr, b_ptr, tpart_ptr, offs_m, mask_m, offs_n, mask_n,
                     pid_n, pid_k, M, N, K, R, k0, k1, BM, BR, DOT_DTYPE, PARTIAL, HAS_BIAS, HAS_LR)


@triton.jit
def prescale_kernel(x_ptr, cs_ptr, out_ptr, K, BK: tl.constexpr):
    """x / cs for rows of x (grid: rows × K / BK), rounded to the output's dtype as ``_group_x``
    rounds it: made once for the weight-as-left-operand GEMM instead of in each of its column blocks."""
    k = tl.program_id(1) * BK + tl.arange(0, BK)
    mask = k < K
    row = tl.program_id(0).to(tl.int64) * K
    xv = tl.fdiv(tl.load(x_ptr + row + k, mask=mask, other=0.0).to(tl.float32), _column_scale(cs_ptr, k, K))
    tl.store(out_ptr + row + k, xv.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def reduce_kernel(part_ptr, out_ptr, bias_ptr, tpart_ptr, b_ptr, M, N, SPLIT, R,
                  BM: tl.constexpr, BN: tl.constexpr, BR: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_LR: tl.constexpr):
    """Second pass of split-K: sum the partials (and the parts of t = x Aᵀ), add the epilogue,
    cast to the output dtype."""
    offs_n = tl.program_id(0) * BN + tl.arange(0, BN)
    offs_m = tl.program_id(1) * BM + tl.arange(0, BM)
    mask_n = offs_n < N
    mask_m = offs_m < M
    omask = mask_m[:, None] & mask_n[None, :]
    off = offs_m[:, None] * N + offs_n[None, :]
    acc = tl.zeros((BM, BN), tl.float32)
    r = tl.arange(0, BR)
    t = tl.zeros((BM, BR), tl.float32)
    for s in range(SPLIT):
        acc += tl.load(part_ptr + s * M * N + off, mask=omask, other=0.0)
        if HAS_LR:
            t += tl.load(tpart_ptr + (s * M + offs_m[:, None]) * BR + r[None, :], mask=mask_m[:, None], other=0.0)
    acc = _epilogue(acc, offs_n, mask_n, bias_ptr, t, b_ptr, R, HAS_BIAS, HAS_LR, BR)
    tl.store(out_ptr + off, acc.to(out_ptr.dtype.element_ty), mask=omask)


@triton.jit
def _slice_codes(w_ptr, offs_n, mask_n, kk, mask_k, N, row0, WBITS: tl.constexpr, GROUP: tl.constexpr):
    """Codes (BK, BN) of one slice at input channels kk: word rows gathered, columns coalesced."""
    WG: tl.constexpr = GROUP * WBITS // 32
    pos = kk % GROUP
    wrow = row0 + (kk // GROUP) * WG + pos % WG
    m = mask_k[:, None] & mask_n[None, :]
    words = tl.load(w_ptr + wrow[:, None] * N + offs_n[None, :], mask=m, other=0)
    return (words >> ((pos // WG) * WBITS)[:, None]) & ((1 << WBITS) - 1)


@triton.jit
def dequant_kernel(w_ptr, s_ptr, z_ptr, cs_ptr, a_ptr, b_ptr, out_ptr, N, K, G, row1, row2, R,
                   W0: tl.constexpr, W1: tl.constexpr, W2: tl.constexpr, OFF1: tl.constexpr, OFF2: tl.constexpr,
                   GROUP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, HAS_CS: tl.constexpr,
                   HAS_LR: tl.constexpr, BR: tl.constexpr):
    """out (K, N) = (Ŵ / cs + B A)ᵀ in out's dtype: for large M, where cuBLAS then does x @ out.

    HAS_LR folds the low-rank term into the tile (Aᵀ Bᵀ on tensor cores, BR >= 16): x @ out then
    applies it with no launch of its own and without reading and writing y a second time."""
    offs_n = tl.program_id(0) * BN + tl.arange(0, BN)
    kk = tl.program_id(1) * BK + tl.arange(0, BK)
    mask_n = offs_n < N
    mask_k = kk < K
    codes = _slice_codes(w_ptr, offs_n, mask_n, kk, mask_k, N, 0, W0, GROUP)
    if W1 > 0:
        codes |= _slice_codes(w_ptr, offs_n, mask_n, kk, mask_k, N, row1, W1, GROUP) << OFF1
    if W2 > 0:
        codes |= _slice_codes(w_ptr, offs_n, mask_n, kk, mask_k, N, row2, W2, GROUP) << OFF2
    m = mask_k[:, None] & mask_n[None, :]
    sz_off = (kk // GROUP)[:, None] * N + offs_n[None, :]
    scale = tl.load(s_ptr + sz_off, mask=m, other=0.0).to(tl.float32)
    zero = tl.load(z_ptr + sz_off, mask=m, other=0.0).to(tl.float32)
    w = _code_float(codes, 0, 8) * scale + zero
    if HAS_CS:
        w = w * (1.0 / tl.load(cs_ptr + kk, mask=mask_k, other=1.0))[:, None]
    if HAS_LR:
        r = tl.arange(0, BR)
        at = tl.load(a_ptr + r[None, :] * K + kk[:, None], mask=mask_k[:, None] & (r[None, :] < R), other=0.0)
        bt = tl.load(b_ptr + offs_n[None, :] * R + r[:, None], mask=(r[:, None] < R) & mask_n[None, :], other=0.0)
        w = tl.dot(at, bt, w)
    tl.store(out_ptr + kk[:, None] * N + offs_n[None, :], w.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _round_to(x, DTYPE: tl.constexpr):
    """fp32 -> DTYPE -> fp32, rounding to nearest even. bf16 by hand: the interpreter truncates."""
    if DTYPE == tl.bfloat16:
        u = x.to(tl.uint32, bitcast=True)
        u = (u + (((u >> 16) & 1) + 0x7FFF)) & 0xFFFF0000
        return u.to(tl.float32, bitcast=True)
    else:
        return x.to(DTYPE).to(tl.float32)


@triton.jit
def _or(a, b):
    return a | b


@triton.jit
def _lowrank_rows(b_ptr, offs_n, R, BRK: tl.constexpr):
    """This program's rows of B (BR, BRK), ranks past R read as zero (tl.dot needs BRK >= 16)."""
    j = tl.arange(0, BRK)
    return tl.load(b_ptr + offs_n[:, None] * R + j[None, :], mask=j[None, :] < R, other=0.0)


@triton.jit
def _w_chunk(w_ptr, cs_ptr, b_rows, a_ptr, n3, g3, g0, c, mask, K, R, GROUP: tl.constexpr, CH: tl.constexpr,
             HAS_CS: tl.constexpr, HAS_LR: tl.constexpr, BRK: tl.constexpr, IEEE: tl.constexpr):
    """(W - B A)·cs at channels [c·CH, (c+1)·CH) of the groups g3 of rows n3 (3-D index tensors),
    fp32, CH last, and the chunk's B A (0 without HAS_LR). CH is one 16-byte load of bf16 (or one
    field, if wider): Triton gives each thread whole chunks, so the min/max over a group and the
    packing of its words stay in registers. B A comes from the tensor cores (one group a program:
    g0 is its first channel; CH >= 16), exact products of the stored B and A summed in fp32, like
    the reference's float32 B @ A but in another order."""
    kk = g3 * GROUP + c * CH + tl.arange(0, CH)[None, None, :]
    w = tl.load(w_ptr + n3 * K + kk, mask=mask, other=0.0).to(tl.float32)
    ba = 0.0
    if HAS_LR:
        j = tl.arange(0, BRK)
        ka = g0 + c * CH + tl.arange(0, CH)
        a = tl.load(a_ptr + j[:, None] * K + ka[None, :], mask=(j[:, None] < R) & (ka[None, :] < K), other=0.0)
        if IEEE:
            ba = tl.dot(b_rows, a, input_precision="ieee")[None, :, :]
        else:
            ba = tl.dot(b_rows, a)[None, :, :]
        w = w - ba
    if HAS_CS:
        w = w * tl.load(cs_ptr + kk, mask=(kk < K), other=1.0)
    return w, ba


@triton.jit
def _field_words(words, bits, c, OFF: tl.constexpr, WBITS: tl.constexpr, GROUP: tl.constexpr,
                 CH: tl.constexpr):
    """OR one chunk's fields of a slice into ``words``: chunk element e is word e % WG of field
    c·FPC + e // WG, FPC = CH / WG fields a chunk; ``_store_words`` folds the FPC copies of each
    word. ``bits`` holds each code in its low 8 bits (above them only constant bits)."""
    WG: tl.constexpr = GROUP * WBITS // 32
    FPC: tl.constexpr = CH // WG
    e = tl.arange(0, CH)
    shift = ((c * FPC + e // WG) * WBITS)[None, None, :]
    return words | (((bits >> OFF) & ((1 << WBITS) - 1)) << shift)


@triton.jit
def _store_words(words, out_ptr, n3, g3, mask, N, row0, WBITS: tl.constexpr, GROUP: tl.constexpr,
                 CH: tl.constexpr, GT: tl.constexpr, BR: tl.constexpr):
    WG: tl.constexpr = GROUP * WBITS // 32
    FPC: tl.constexpr = CH // WG
    if FPC > 1:
        words = tl.reduce(tl.reshape(words, (GT, BR, FPC, WG)), 2, _or)
    tl.store(out_ptr + (row0 + g3 * WG + tl.arange(0, WG)[None, None, :]) * N + n3, words, mask=mask)


@triton.jit
def _group_params(wmax, wmin, nu_a, nu_b, QMAX: tl.constexpr, SYMMETRIC: tl.constexpr, HAS_NU: tl.constexpr,
                  PARAM_DTYPE: tl.constexpr, PARAM_MIN: tl.constexpr):
    """(S, Z) of groups from their max and min, as ``quantize_groupwise`` forms them (symmetric or
    ν-expanded range, a floor for flat groups, rounding to the storage dtype)."""
    if SYMMETRIC:
        wmax = tl.maximum(tl.abs(wmax), tl.abs(wmin))
        wmin = -wmax
    if HAS_NU:
        wmax, wmin = nu_a * wmax + nu_b * wmin, nu_b * wmax + nu_a * wmin  # nu_a = (1+nu)/2, nu_b = (1-nu)/2
    scale = (wmax - wmin) / QMAX
    floor = tl.maximum(tl.maximum(tl.abs(wmax), tl.abs(wmin)) * 9.5367431640625e-07, 1.1754943508222875e-38)
    scale = tl.where(scale > 0, scale, floor)
    if PARAM_DTYPE != tl.float32:
        scale = _round_to(scale, PARAM_DTYPE)
        scale = tl.where(scale > 0, scale, PARAM_MIN)
        wmin = _round_to(wmin, PARAM_DTYPE)
    return scale, wmin


@triton.jit
def quantize_kernel(w_ptr, cs_ptr, b_ptr, a_ptr, out_ptr, s_ptr, z_ptr, N, K, G, R, row1, row2, nu_a, nu_b,
                    BITS: tl.constexpr, W0: tl.constexpr, W1: tl.constexpr, W2: tl.constexpr,
                    OFF1: tl.constexpr, OFF2: tl.constexpr, GROUP: tl.constexpr, GT: tl.constexpr,
                    BR: tl.constexpr, CH: tl.constexpr, HAS_CS: tl.constexpr, HAS_LR: tl.constexpr,
                    BRK: tl.constexpr, IEEE: tl.constexpr, SYMMETRIC: tl.constexpr, HAS_NU: tl.constexpr,
                    PARAM_DTYPE: tl.constexpr, PARAM_MIN: tl.constexpr, DENSE: tl.constexpr, HELD: tl.constexpr,
                    ASM: tl.constexpr):
    """TTQ's online step in one pass over W: (W - B A)·cs, group min/max, S and Z rounded to their
    storage dtype, codes rounded half-to-even, and then either packed into the planar layout, or
    (DENSE) written back dequantized as (Ŵ / cs + B A)ᵀ in out's dtype (K, N), the weight cuBLAS
    multiplies when M is large, without packed codes written and read back in between. Same
    arithmetic, in the same order, as ``vla_ttq.quant.groupwise.quantize_groupwise`` (B A aside:
    see ``_w_chunk``).

    A program quantizes GT groups of BR rows, tensors (GT, BR, CH), in chunks of CH channels that
    each thread holds whole (``_w_chunk``; neighbouring lanes take neighbouring rows): a first
    sweep finds each group's min/max, a second rounds and packs. HELD: the second sweep takes the
    first's chunks (a tuple) instead of loading and scaling them again. For the packed output ptxas
    already kept them in registers (the same SASS); the dense output's stores in between made it
    reload, and there HELD took the gate/up pass from 63.3 to 48.1 µs, the same bits (H200, session
    13, docs/kernels/h200_run13_quantize_held_ab.json; ASM's division on in both). Run 9
    (H200): the (BR, GT·GROUP) tile it replaced spread a group over 8 threads, and its min/max and
    the OR that packs a word went through warp shuffles: 28 SASS instructions a weight against 16.
    Lanes on neighbouring groups of a row instead (longer runs of W a load) lost on every layer.
    With HAS_LR a program holds one group (GT = 1) and B A is recomputed in each sweep."""
    QMAX: tl.constexpr = (1 << BITS) - 1
    offs_n = tl.program_id(0) * BR + tl.arange(0, BR)
    g0 = tl.program_id(1) * GT
    gi = g0 + tl.arange(0, GT)
    g0 = g0 * GROUP
    n2 = offs_n[None, :]
    g2 = gi[:, None]
    n3 = n2[:, :, None]
    g3 = g2[:, :, None]
    mask2 = (g2 < G) & (n2 < N)
    mask = mask2[:, :, None]
    b_rows = 0.0
    if HAS_LR:
        b_rows = _lowrank_rows(b_ptr, offs_n, R, BRK)
    wmax = tl.full((GT, BR, CH), float("-inf"), tl.float32)
    wmin = tl.full((GT, BR, CH), float("inf"), tl.float32)
    held = ()
    for c in tl.static_range(GROUP // CH):
        w, ba = _w_chunk(w_ptr, cs_ptr, b_rows, a_ptr, n3, g3, g0, c, mask, K, R, GROUP, CH, HAS_CS, HAS_LR, BRK, IEEE)
        wmax = tl.maximum(wmax, w)
        wmin = tl.minimum(wmin, w)
        if HELD:
            held = held + ((w, ba),)
    scale, wmin = _group_params(tl.max(wmax, axis=2), tl.min(wmin, axis=2), nu_a, nu_b, QMAX, SYMMETRIC, HAS_NU,
                                PARAM_DTYPE, PARAM_MIN)
    words0 = tl.zeros((GT, BR, CH), tl.int32)
    words1 = tl.zeros((GT, BR, CH), tl.int32)
    words2 = tl.zeros((GT, BR, CH), tl.int32)
    for c in tl.static_range(GROUP // CH):
        if HELD:
            w, ba = held[c]
        else:
            w, ba = _w_chunk(w_ptr, cs_ptr, b_rows, a_ptr, n3, g3, g0, c, mask, K, R, GROUP, CH, HAS_CS, HAS_LR, BRK,
                             IEEE)
        v = (w - wmin[:, :, None]) / scale[:, :, None]
        # Round half to even (like torch.round) by adding 1.5·2^23 and clamp there: the float's
        # low mantissa bits are then the code (round-then-clamp, without a float-to-int conversion)
        q = tl.minimum(tl.maximum(v + 12582912.0, 12582912.0), 12582912.0 + QMAX)
        if DENSE:
            _store_dense(out_ptr, q - 12582912.0, scale, wmin, ba, cs_ptr, n3, g3, c, mask, N, K, GROUP, CH,
                         HAS_CS, HAS_LR, ASM)
        else:
            bits = q.to(tl.int32, bitcast=True)
            words0 = _field_words(words0, bits, c, 0, W0, GROUP, CH)
            if W1 > 0:
                words1 = _field_words(words1, bits, c, OFF1, W1, GROUP, CH)
            if W2 > 0:
                words2 = _field_words(words2, bits, c, OFF2, W2, GROUP, CH)
    if not DENSE:
        _store_words(words0, out_ptr, n3, g3, mask, N, 0, W0, GROUP, CH, GT, BR)
        if W1 > 0:
            _store_words(words1, out_ptr, n3, g3, mask, N, row1, W1, GROUP, CH, GT, BR)
        if W2 > 0:
            _store_words(words2, out_ptr, n3, g3, mask, N, row2, W2, GROUP, CH, GT, BR)
        sz_off = g2 * N + n2  # S, Z stored transposed (K/g, N)
        tl.store(s_ptr + sz_off, scale.to(s_ptr.dtype.element_ty), mask=mask2)
        tl.store(z_ptr + sz_off, wmin.to(z_ptr.dtype.element_ty), mask=mask2)


@triton.jit
def _store_dense(out_ptr, code, scale, zero, ba, cs_ptr, n3, g3, c, mask, N, K, GROUP: tl.constexpr,
                 CH: tl.constexpr, HAS_CS: tl.constexpr, HAS_LR: tl.constexpr, ASM: tl.constexpr):
    """One chunk of Ŵ / cs + B A into out (K, N): the reference's dequantize (codes·S + Z in fp32),
    its division by cs, the low-rank term added back, one rounding to out's dtype. Transposed, so
    that the lanes (neighbouring rows of W) write neighbouring addresses: stored (N, K), each lane
    wrote a row of its own and the whole TTQ step of gate/up at 800 tokens took 240.6 µs instead of
    152.9 (H200, docs/kernels/h200_run10_ttq_call_ab_rowmajor_store.json)."""
    kk = g3 * GROUP + c * CH + tl.arange(0, CH)[None, None, :]
    w = code * scale[:, :, None] + zero[:, :, None]
    if HAS_CS:  # approximate division, 2 ulp of fp32 either way (out is 16-bit); the IEEE one doubled the
        # instructions. ASM: div.approx (MUFU.RCP + FMUL), where Triton's div.full adds ~4 range checks;
        # .ftz flushes subnormal quotients (below 1.2e-38) to zero
        c_s = tl.broadcast_to(tl.load(cs_ptr + kk, mask=(kk < K), other=1.0), w.shape)
        if ASM:
            w = tl.inline_asm_elementwise("div.approx.ftz.f32 $0, $1, $2;", "=r,r,r", [w, c_s], dtype=tl.float32,
                                          is_pure=True, pack=1)
        else:
            w = tl.fdiv(w, c_s, ieee_rounding=False)
    if HAS_LR:
        w = w + ba
    tl.store(out_ptr + kk * N + n3, w.to(out_ptr.dtype.element_ty), mask=mask)


# ---- the column scale s = D^½ of an activation (quant.scaling, fused) --------------------------


@triton.jit
def _channel_stat(stat_ptr, kk, mk, M, two_over_p, MODE: tl.constexpr):
    """c_i (float64) from the per-channel sums, as ``quant.scaling.channel_stat`` forms it in fp32."""
    raw = tl.load(stat_ptr + kk, mask=mk, other=0.0)
    if MODE == 0:
        c = raw / M
    elif MODE == 1:
        c = raw * raw
    else:
        c = tl.exp2(two_over_p * tl.log2(tl.maximum(raw / M, 1.1754943508222875e-38)))
        c = tl.where(raw > 0, c, 0.0)
    return c.to(tl.float64)


@triton.jit
def column_scale_kernel(x_ptr, stat_ptr, glob_ptr, s_ptr, prm_ptr, lock_ptr, M, K, p, two_over_p,
                        MODE: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr, FK: tl.constexpr,
                        HELD: tl.constexpr):
    """s = D^½ of activation x (M, K): ``quant.scaling.column_scale(channel_stat(x, p), λ, α)``. Each
    program sums Σ x² (MODE 0), max |x| (1) or Σ |x|^p (2) over all rows for its BK channels (fp32,
    fixed order, no atomics on the data); the last program to arrive (a counter in lock_ptr, which
    it resets) then forms, in float64 as the reference does, c_λ = (1-λ)c + λ·mean(c),
    log_s = ½α·log(max(c_λ, 1e-12·max c_λ)) and s = exp(log_s - mean(log_s)), holding all K (<= FK)
    statistics in registers (HELD). For wider layers one program's float64 log and exp of every
    channel took ~40 µs at K = 16384 (H200), so there it only stores mean(c) and max c_λ in glob_ptr
    and ``column_scale_finish_kernel`` spreads the rest over K / BK programs.
    prm = float64 [1-λ, λ, ½α, 1e-12] (scalar arguments would be float32)."""
    kk = tl.program_id(0) * BK + tl.arange(0, BK)
    mk = kk < K
    acc = tl.zeros((BM, BK), tl.float32)
    for m0 in range(0, M, BM):
        rows = m0 + tl.arange(0, BM)
        v = tl.load(x_ptr + rows[:, None] * K + kk[None, :], mask=(rows[:, None] < M) & mk[None, :],
                    other=0.0).to(tl.float32)
        if MODE == 0:
            acc += v * v
        elif MODE == 1:
            acc = tl.maximum(acc, tl.abs(v))
        else:
            av = tl.abs(v)
            acc += tl.where(av > 0, tl.exp2(p * tl.log2(tl.maximum(av, 1.1754943508222875e-38))), 0.0)
    if MODE == 1:
        tl.store(stat_ptr + kk, tl.max(acc, axis=0), mask=mk)
    else:
        tl.store(stat_ptr + kk, tl.sum(acc, axis=0), mask=mk)
    # release this program's sums; the last one to count itself sees everyone's (acquire)
    if tl.atomic_add(lock_ptr, 1, sem="acq_rel") == tl.num_programs(0) - 1:
        one_m_lam = tl.load(prm_ptr)
        lam = tl.load(prm_ptr + 1)
        half_alpha = tl.load(prm_ptr + 2)
        floor = tl.load(prm_ptr + 3)
        offs = tl.arange(0, FK)
        if HELD:  # all K statistics in registers: one load, no sweeps (the latency is the cost)
            _column_scale_held(stat_ptr, s_ptr, offs, M, K, two_over_p, one_m_lam, lam, half_alpha, floor, MODE)
        else:
            tot = tl.zeros((FK,), tl.float64)
            top = tl.zeros((FK,), tl.float64)  # c >= 0
            for k0 in range(0, K, FK):
                c = _channel_stat(stat_ptr, k0 + offs, k0 + offs < K, M, two_over_p, MODE)
                tot += c
                top = tl.maximum(top, c)
            mean_c = tl.sum(tot, axis=0) / K
            tl.store(glob_ptr, mean_c)
            # max of c_λ without a sweep: (1-λ)c + λ·mean(c) rounds monotonically in c, so its largest
            # value is the one of the largest c, bit for bit
            tl.store(glob_ptr + 1, one_m_lam * tl.max(top, axis=0) + lam * mean_c)
        tl.atomic_xchg(lock_ptr, 0)  # ready for the next call (and for a CUDA graph's replays)


@triton.jit
def _column_scale_held(stat_ptr, s_ptr, offs, M, K, two_over_p, one_m_lam, lam, half_alpha, floor,
                       MODE: tl.constexpr):
    m = offs < K
    c = _channel_stat(stat_ptr, offs, m, M, two_over_p, MODE)
    c_lam = one_m_lam * c + lam * (tl.sum(c, axis=0) / K)
    peak = tl.max(tl.where(m, c_lam, float("-inf")), axis=0)
    c_lam = tl.where(peak > 0, tl.maximum(c_lam, peak * floor), 1.0)
    log_s = tl.where(m, half_alpha * tl.log(c_lam), 0.0)
    tl.store(s_ptr + offs, tl.exp(log_s - tl.sum(log_s, axis=0) / K).to(tl.float32), mask=m)


@triton.jit
def column_scale_finish_kernel(stat_ptr, glob_ptr, prm_ptr, u_ptr, part_ptr, lock_ptr, s_ptr, M, K, two_over_p,
                               MODE: tl.constexpr, BK: tl.constexpr, FK: tl.constexpr, TK: tl.constexpr):
    """The wide-layer half of ``column_scale_kernel``: each program forms log_s and u = exp(log_s)
    (float64) for its BK channels and stores its Σ log_s; the last to arrive adds those sums in
    program order and writes s = u · exp(-mean(log_s)), a multiply a channel instead of a float64
    exp. exp(a)·exp(-b) and exp(a - b) differ in the last float64 bits only, far below float32's."""
    one_m_lam = tl.load(prm_ptr)
    lam = tl.load(prm_ptr + 1)
    half_alpha = tl.load(prm_ptr + 2)
    floor = tl.load(prm_ptr + 3)
    mean_c = tl.load(glob_ptr)
    peak = tl.load(glob_ptr + 1)
    kk = tl.program_id(0) * BK + tl.arange(0, BK)
    mk = kk < K
    c_lam = one_m_lam * _channel_stat(stat_ptr, kk, mk, M, two_over_p, MODE) + lam * mean_c
    c_lam = tl.where(peak > 0, tl.maximum(c_lam, peak * floor), 1.0)
    log_s = tl.where(mk, half_alpha * tl.log(c_lam), 0.0)
    tl.store(u_ptr + kk, tl.exp(log_s), mask=mk)
    tl.store(part_ptr + tl.program_id(0), tl.sum(log_s, axis=0))
    n = tl.num_programs(0)
    if tl.atomic_add(lock_ptr, 1, sem="acq_rel") == n - 1:
        offs = tl.arange(0, FK)
        tot = tl.zeros((FK,), tl.float64)
        for i0 in range(0, n, FK):
            tot += tl.load(part_ptr + i0 + offs, mask=i0 + offs < n, other=0.0)
        g = tl.exp(-(tl.sum(tot, axis=0) / K))
        for k0 in range(0, K, TK):  # TK channels a step: this one program's loop is the launch's tail
            fk = k0 + tl.arange(0, TK)
            u = tl.load(u_ptr + fk, mask=fk < K, other=0.0)
            tl.store(s_ptr + fk, (u * g).to(tl.float32), mask=fk < K)
        tl.atomic_xchg(lock_ptr, 0)


# ---- M = 1: one launch, split-K reduced in the kernel ------------------------------------------


@triton.jit
def _slab_factor(kk, WBITS: tl.constexpr, GROUP: tl.constexpr):
    """2^-pos for input channel kk of a slice of width WBITS, pos = where ``_gemv1_slice`` reads
    the channel's field (in place, or 12 bits lower for fields that end above bit 23): the x
    multiplier that turns the field's float value c·2^pos into c."""
    WG: tl.constexpr = GROUP * WBITS // 32
    sh = ((kk % GROUP) // WG) * WBITS
    sh = tl.where(sh + WBITS <= 23, sh, sh - 12)
    return ((127 - sh) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _gemv1_words(w_ptr, g, offs_n, mask_n, N, row0, WBITS: tl.constexpr, GROUP: tl.constexpr, EVEN_N: tl.constexpr):
    """The (WG, BN) words of group g of one slice (WG = GROUP·WBITS/32 word rows)."""
    WG: tl.constexpr = GROUP * WBITS // 32
    ptrs = w_ptr + (row0 + g * WG + tl.arange(0, WG))[:, None] * N + offs_n[None, :]
    if EVEN_N:
        return tl.load(ptrs)
    else:
        return tl.load(ptrs, mask=mask_n[None, :], other=0)


@triton.jit
def _gemv1_group_rows(ptr, g, offs_n, mask_n, N, EVEN_N: tl.constexpr):
    """Scale or zero point of group g for the BN columns, as fp32."""
    if EVEN_N:
        return tl.load(ptr + g * N + offs_n).to(tl.float32)
    else:
        return tl.load(ptr + g * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)


@triton.jit
def _gemv1_load(w_ptr, s_ptr, z_ptr, g, offs_n, mask_n, N, row1, row2, W0: tl.constexpr, W1: tl.constexpr,
                W2: tl.constexpr, GROUP: tl.constexpr, EVEN_N: tl.constexpr):
    """Everything group g needs from memory: words of each slice (absent slices repeat slice 0's,
    unused), S and Z."""
    w0 = _gemv1_words(w_ptr, g, offs_n, mask_n, N, 0, W0, GROUP, EVEN_N)
    w1 = w0
    w2 = w0
    if W1 > 0:
        w1 = _gemv1_words(w_ptr, g, offs_n, mask_n, N, row1, W1, GROUP, EVEN_N)
    if W2 > 0:
        w2 = _gemv1_words(w_ptr, g, offs_n, mask_n, N, row2, W2, GROUP, EVEN_N)
    s = _gemv1_group_rows(s_ptr, g, offs_n, mask_n, N, EVEN_N)
    z = _gemv1_group_rows(z_ptr, g, offs_n, mask_n, N, EVEN_N)
    return w0, w1, w2, s, z


@triton.jit
def _gemv1_slice(xg_ptr, words, magic, WBITS: tl.constexpr, GROUP: tl.constexpr):
    """Σ_k x'_k · c_k (BN,) over one group of one slice, x' = (x / cs)·2^-pos read from the
    group's place in the scratch (``xg_ptr``).

    Every word row of a group shares one scale, so rows are summed before the caller applies it.
    ``magic`` = 0x4B000000 arrives as a runtime value so it stays in a register: a code then costs
    one LOP3 (field | magic), one FADD (- 2^23) and one FFMA."""
    WG: tl.constexpr = GROUP * WBITS // 32
    CPW: tl.constexpr = 32 // WBITS
    r = tl.arange(0, WG)
    high = words >> 12
    part = tl.zeros(words.shape, tl.float32)
    for i in tl.static_range(CPW):
        xi = tl.load(xg_ptr + i * WG + r)  # L1: this program wrote it (and so evicted stale lines)
        if i * WBITS + WBITS <= 23:  # the field ends inside the mantissa: read it in place
            q = (words & (((1 << WBITS) - 1) << (i * WBITS))) | magic
        else:  # one shift of the word by 12 serves every high field
            q = (high & (((1 << WBITS) - 1) << (i * WBITS - 12))) | magic
        part += xi[:, None] * (q.to(tl.float32, bitcast=True) - 8388608.0)
    return tl.sum(part, axis=0)


# fp16x2 pairs (PAIRS): two codes per 32-bit op, as Marlin does. OR-ing two w-bit fields that sit
# at bit b of each 16-bit half into 0x6400 (fp16 1024, one unit per mantissa bit) gives the pair
# (1024 + c·2^b) with one LOP3; subtracting 1024 + mid·2^b leaves (c − mid)·2^b exactly, and one
# HFMA2 multiplies both by x. Per code that is ~1.6 instructions instead of 3 (LOP3, FADD, FFMA).
# Codes are centred on mid = 2^(w−1) and x is divided by its group's |max| so the fp16 sums stay
# small and exact-ish; both come back in fp32 per group. The three primitives below run as PTX on
# the GPU (ASM) and are emulated with integer/float ops under the Triton CPU interpreter, which
# cannot run PTX: the same layout, pairing and scaling, the fp16 rounding done per step by casts.


@triton.jit
def _f16_lo(v):
    return (v & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _f16_hi(v):
    return ((v >> 16) & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _f16x2(lo, hi):
    """Pack two fp32 values, rounded to fp16, into one int32 (lo in bits 0-15)."""
    lo16 = lo.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    hi16 = hi.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    return lo16 | (hi16 << 16)


@triton.jit
def _field_fma(src, mask, off, xp, acc, ASM: tl.constexpr):
    """acc + xp·((src & mask | 0x6400_6400) − off) on both fp16 halves of int32 lanes."""
    if ASM:
        return tl.inline_asm_elementwise(
            "{.reg .b32 t; lop3.b32 t, $1, $2, 0x64006400, 0xEA; sub.f16x2 t, t, $3; fma.rn.f16x2 $0, t, $4, $5;}",
            "=r,r,r,r,r,r", [src, mask, off, xp, acc], dtype=tl.int32, is_pure=True, pack=1)
    else:
        t = (src & mask) | 0x64006400
        lo = _f16_lo(acc) + _f16_lo(xp) * (_f16_lo(t) - _f16_lo(off))
        hi = _f16_hi(acc) + _f16_hi(xp) * (_f16_hi(t) - _f16_hi(off))
        return _f16x2(lo, hi)


@triton.jit
def _hadd2(a, b):
    return tl.inline_asm_elementwise("add.f16x2 $0, $1, $2;", "=r,r,r", [a, b], dtype=tl.int32, is_pure=True,
                                     pack=1)


@triton.jit
def _f16x2_total(v):
    """lo + hi of fp16x2 lanes, in fp32."""
    bits = tl.inline_asm_elementwise(
        "{.reg .f16 l, h; .reg .f32 a, b; mov.b32 {l, h}, $1; cvt.f32.f16 a, l; cvt.f32.f16 b, h; "
        "add.f32 a, a, b; mov.b32 $0, a;}", "=r,r", [v], dtype=tl.int32, is_pure=True, pack=1)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _pair_shift(p, WBITS: tl.constexpr):
    """Where pair p (field p of each 16-bit half) is read: in place when it ends inside the fp16
    mantissa (bit 10), else from the word shifted right by 8."""
    b = p * WBITS
    return tl.where(b + WBITS <= 10, b, b - 8)


@triton.jit
def _store_pairs(xh_ptr, xn, pos, km, m, WBITS: tl.constexpr, GROUP: tl.constexpr, BM: tl.constexpr):
    """Write x'' = x / (cs·|max|) of each channel, times 2^-shift of its field, as fp16 into its
    place in the pair scratch: per group, pair p, word row j: (field p, field p + 16/w) as the
    (lo, hi) halves of one int32 that ``_gemv1_pairs`` multiplies with one word's two fields.
    ``xh_ptr``: each group's place (in halves), ``pos``: the channel's position in its group.
    With BM rows the BM pairs of one (field, word row) sit side by side, row m at m."""
    WG: tl.constexpr = GROUP * WBITS // 32
    HALF: tl.constexpr = 16 // WBITS
    i = pos // WG
    p = i % HALF
    factor = ((127 - _pair_shift(p, WBITS)) << 23).to(tl.float32, bitcast=True)
    tl.store(xh_ptr + (((p * WG + pos % WG) * BM + m) * 2 + i // HALF), (xn * factor).to(tl.float16), mask=km)


@triton.jit
def _gemv1_pairs(xw_ptr, words, WBITS: tl.constexpr, GROUP: tl.constexpr, BM: tl.constexpr, ASM: tl.constexpr):
    """Σ_k x''_k·(c_k − mid) (BN,) in fp32 over one group of one slice, summed in fp16x2 lanes;
    ``xw_ptr``: the group's x'' pairs of one row in the scratch (BM rows interleaved)."""
    WG: tl.constexpr = GROUP * WBITS // 32
    HALF: tl.constexpr = 16 // WBITS
    r = tl.arange(0, WG)
    high = words >> 8
    acc = tl.zeros(words.shape, tl.int32)
    for p in tl.static_range(HALF):
        xp = tl.broadcast_to(tl.load(xw_ptr + (p * WG + r) * BM)[:, None], words.shape)
        if p * WBITS + WBITS <= 10:
            src = words
            sh = p * WBITS
        else:
            src = high
            sh = p * WBITS - 8
        field = ((1 << WBITS) - 1) << sh
        mask = tl.full(words.shape, field | (field << 16), tl.int32)
        off = 0x6400 | ((1 << (WBITS - 1)) << sh)
        acc = _field_fma(src, mask, tl.full(words.shape, off | (off << 16), tl.int32), xp, acc, ASM)
    if ASM:  # word rows summed in fp16x2 too, one conversion per group
        return _f16x2_total(tl.reduce(acc, 0, _hadd2))
    else:  # rows summed in fp32: tl.reduce with a Python combine is very slow in the interpreter
        return tl.sum(_f16_lo(acc), axis=0) + tl.sum(_f16_hi(acc), axis=0)


@triton.jit
def _gemv1_lowrank_part(x_ptr, a_ptr, g0, K, R, GROUP: tl.constexpr, GPS: tl.constexpr, BR: tl.constexpr):
    """t_part (BR,) fp32 = x Aᵀ over this program's input channels (groups [g0, g0 + GPS)) for one
    token, on CUDA cores: the low-rank term is linear in x, so the K splits' parts add up to
    t = x Aᵀ. Computed here instead of by a matmul launched before the kernel (x Aᵀ, then a cast:
    two more launches, which cost more than the whole W4 GEMV at M = 1)."""
    kk = (g0 + tl.arange(0, GPS))[:, None] * GROUP + tl.arange(0, GROUP)[None, :]
    km = kk < K
    r = tl.arange(0, BR)[:, None, None]
    xv = tl.load(x_ptr + kk, mask=km, other=0.0).to(tl.float32)
    a = tl.load(a_ptr + r * K + kk[None, :, :], mask=(r < R) & km[None, :, :], other=0.0).to(tl.float32)
    return tl.sum(tl.sum(a * xv[None, :, :], axis=2), axis=1)


@triton.jit
def _gemv1_store(acc, t, out_ptr, offs_n, mask_n, M, N, bias_ptr, b_ptr, R, HAS_BIAS: tl.constexpr,
                 HAS_LR: tl.constexpr, BR: tl.constexpr, TILE_STORE: tl.constexpr = False):
    """y = acc + bias + t Bᵀ for a (TM, BN) tile of rows (t = x Aᵀ, (TM, BR) fp32), rows < M
    written in out's dtype: the matmul kernels' epilogue. With the low-rank term several tokens
    come as 16 rows (padding rows past M), so that t Bᵀ runs on tensor cores. TILE_STORE: the
    whole tile at once also without it (the GEMM's tiles, whatever their layout)."""
    TM: tl.constexpr = acc.shape[0]
    if TM == 1 or HAS_LR or TILE_STORE:
        y = _epilogue(acc, offs_n, mask_n, bias_ptr, t, b_ptr, R, HAS_BIAS, HAS_LR, BR)
        rows = tl.arange(0, TM)[:, None]
        ymask = (rows < M) & mask_n[None, :]
        tl.store(out_ptr + rows * N + offs_n[None, :], y.to(out_ptr.dtype.element_ty), mask=ymask)
    else:  # one row at a time: a (TM, BN) store spread the main loop's accumulator rows over
        # threads, and the W2 GEMV at M = 4 took 34 instead of 16 µs (H200, run 8)
        for m in tl.static_range(TM):
            if m < M:
                row = tl.sum(tl.where(tl.arange(0, TM)[:, None] == m, acc, 0.0), axis=0)
                y = _epilogue(row[None, :], offs_n, mask_n, bias_ptr, t, b_ptr, R, HAS_BIAS, False, BR)
                tl.store(out_ptr + m * N + offs_n[None, :], y.to(out_ptr.dtype.element_ty), mask=mask_n[None, :])


@triton.jit
def _gemv1_split_k_tail(acc, t, ws_ptr, lock_ptr, tws_ptr, out_ptr, offs_n, mask_n, M, N, bias_ptr, b_ptr, R,
                        HAS_BIAS: tl.constexpr, HAS_LR: tl.constexpr, BR: tl.constexpr, BM: tl.constexpr,
                        TM: tl.constexpr, TILE_STORE: tl.constexpr = False):
    """Add this program's partial sums (BM, BN) into ws (and its part of t = x Aᵀ, (TM, BR), into
    its column block's BM·BR floats of tws) and count it in lock[column block]; the last program
    of the column block reads the totals as a (TM, BN) tile, writes y and leaves ws, tws and lock
    at zero. Grid: (column blocks, K splits), one tile of rows."""
    pid_n = tl.program_id(0)
    rows = tl.arange(0, BM)[:, None]
    tl.atomic_add(ws_ptr + rows * N + offs_n[None, :], acc, mask=(rows < M) & mask_n[None, :], sem="relaxed")
    trows = tl.arange(0, TM)[:, None]
    toff = (pid_n * BM + trows) * BR + tl.arange(0, BR)[None, :]
    if HAS_LR:
        tl.atomic_add(tws_ptr + toff, t, mask=trows < BM, sem="relaxed")
    tl.debug_barrier()  # every thread's partial sums are issued before the count goes up
    arrived = tl.atomic_add(lock_ptr + pid_n, 1, sem="acq_rel")
    if arrived == tl.num_programs(1) - 1:
        # read the totals where the atomics left them (L2), then zero them for the next call
        off = trows * N + offs_n[None, :]
        om = (trows < M) & mask_n[None, :]
        zeros = tl.zeros((TM, acc.shape[1]), tl.float32)
        total = tl.where(om, tl.atomic_add(ws_ptr + off, zeros, mask=om, sem="relaxed"), 0.0)
        tl.store(ws_ptr + off, zeros, mask=om)
        if HAS_LR:
            tm = trows < BM
            t = tl.where(tm, tl.atomic_add(tws_ptr + toff, tl.zeros(t.shape, tl.float32), mask=tm, sem="relaxed"), 0.0)
            tl.store(tws_ptr + toff, tl.zeros(t.shape, tl.float32), mask=tm)
        _gemv1_store(total, t, out_ptr, offs_n, mask_n, M, N, bias_ptr, b_ptr, R, HAS_BIAS, HAS_LR, BR, TILE_STORE)
        tl.store(lock_ptr + pid_n, 0)


@triton.jit
def _sum_max(s1, m1, s2, m2):
    return s1 + s2, tl.maximum(m1, m2)


@triton.jit
def _gemv1_scratch(x_ptr, cs_ptr, xs_ptr, g0, K, k_end, G, m, W0: tl.constexpr, W1: tl.constexpr,
                   W2: tl.constexpr, GROUP: tl.constexpr, GPS: tl.constexpr, BM: tl.constexpr, HAS_CS: tl.constexpr,
                   PAIRS: tl.constexpr):
    """Phase 1 of gemv1_kernel for row m of x (``x_ptr`` at that row; ``k_end``: K, or 0 for a
    padding row m >= M, whose x reads as zeros): x / cs of groups [g0, g0 + GPS) into the scratch,
    group-major: group g's place is the (3·GROUP + 4)·BM fp32 at g·(3·GROUP + 4)·BM (one GROUP·BM
    run per code slice, then Σx of the BM rows and, with PAIRS, their |max|; 16-byte aligned for
    the readers' vector loads). BM > 1 needs PAIRS."""
    tl.static_assert(BM == 1 or PAIRS, "several rows need the pairs path")
    GS: tl.constexpr = 3 * GROUP + 4
    gs = g0 + tl.arange(0, GPS)
    pos = tl.arange(0, GROUP)[None, :]
    kk = gs[:, None] * GROUP + pos
    km = kk < K
    gm = gs < G
    xv = tl.load(x_ptr + kk, mask=kk < k_end, other=0.0).to(tl.float32)
    if HAS_CS:
        xv = tl.fdiv(xv, tl.load(cs_ptr + kk, mask=km, other=1.0))
    base = gs * (GS * BM)
    if PAIRS:  # one cross-thread reduction for both: each costs shared memory and barriers
        xsum, amax = tl.reduce((xv, tl.abs(xv)), 1, _sum_max)
        tl.store(xs_ptr + base + 3 * GROUP * BM + m, xsum, mask=gm)  # group sums, for the zero points
        amax = tl.where(amax > 0, amax, 1.0)
        tl.store(xs_ptr + base + 3 * GROUP * BM + BM + m, amax, mask=gm)
        xn = xv / amax[:, None]
        xh_ptr = xs_ptr.to(tl.pointer_type(tl.float16)) + 2 * base[:, None]  # slice s at 2s·GROUP·BM halves
        _store_pairs(xh_ptr, xn, pos, km, m, W0, GROUP, BM)
        if W1 > 0:
            _store_pairs(xh_ptr + 2 * GROUP * BM, xn, pos, km, m, W1, GROUP, BM)
        if W2 > 0:
            _store_pairs(xh_ptr + 4 * GROUP * BM, xn, pos, km, m, W2, GROUP, BM)
    else:
        tl.store(xs_ptr + base + 3 * GROUP, tl.sum(xv, axis=1), mask=gm)
        xp_ptr = xs_ptr + base[:, None] + pos
        tl.store(xp_ptr, xv * _slab_factor(kk, W0, GROUP), mask=km)
        if W1 > 0:
            tl.store(xp_ptr + GROUP, xv * _slab_factor(kk, W1, GROUP), mask=km)
        if W2 > 0:
            tl.store(xp_ptr + 2 * GROUP, xv * _slab_factor(kk, W2, GROUP), mask=km)


@triton.jit
def _gemv1_group(xs_ptr, w0, w1, w2, g, m, magic, W0: tl.constexpr, W1: tl.constexpr, W2: tl.constexpr,
                 OFF1: tl.constexpr, OFF2: tl.constexpr, MID: tl.constexpr, GROUP: tl.constexpr, BM: tl.constexpr,
                 PAIRS: tl.constexpr, ASM: tl.constexpr):
    """(Σ_k (x_k / cs_k)·c_k, Σ_k x_k / cs_k) for row m over group g, (BN,) and scalar, in fp32."""
    xg_ptr = xs_ptr + g * ((3 * GROUP + 4) * BM)
    xsum = tl.load(xg_ptr + 3 * GROUP * BM + m)
    if PAIRS:  # centred codes of x / |max|: scale back and add the centre
        xw_ptr = xg_ptr.to(tl.pointer_type(tl.int32)) + m
        d = _gemv1_pairs(xw_ptr, w0, W0, GROUP, BM, ASM)
        if W1 > 0:
            d += _gemv1_pairs(xw_ptr + GROUP * BM, w1, W1, GROUP, BM, ASM) * (1 << OFF1)
        if W2 > 0:
            d += _gemv1_pairs(xw_ptr + 2 * GROUP * BM, w2, W2, GROUP, BM, ASM) * (1 << OFF2)
        d = d * tl.load(xg_ptr + 3 * GROUP * BM + BM + m) + MID * xsum
    else:
        d = _gemv1_slice(xg_ptr, w0, magic, W0, GROUP)
        if W1 > 0:
            d += _gemv1_slice(xg_ptr + GROUP, w1, magic, W1, GROUP) * (1 << OFF1)
        if W2 > 0:
            d += _gemv1_slice(xg_ptr + 2 * GROUP, w2, magic, W2, GROUP) * (1 << OFF2)
    return d, xsum


@triton.jit
def _gemv1_program(xs_ptr, xs_per_block, N, G, BN: tl.constexpr, GPS: tl.constexpr):
    """This program's columns (offsets, mask), its groups [g0, g_end) and its column block's copy
    of the scratch. A copy per block (xs_per_block > 0): when the blocks of one K range all wrote
    the same values to one place, the stores to the shared lines cost ~1 µs on gate/up (H100)."""
    pid_n = tl.program_id(0)
    offs_n = pid_n * BN + tl.arange(0, BN)
    g0 = tl.program_id(1) * GPS
    return offs_n, offs_n < N, g0, tl.minimum(g0 + GPS, G), xs_ptr + pid_n * xs_per_block


@triton.jit
def gemv1_kernel(x_ptr, cs_ptr, w_ptr, s_ptr, z_ptr, out_ptr, ws_ptr, lock_ptr, xs_ptr, bias_ptr, a_ptr, b_ptr, tws_ptr,
                 M, N, K, G, row1, row2, R, magic, xs_per_block,
                 W0: tl.constexpr, W1: tl.constexpr, W2: tl.constexpr, OFF1: tl.constexpr, OFF2: tl.constexpr,
                 MID: tl.constexpr, GROUP: tl.constexpr, GPS: tl.constexpr, BN: tl.constexpr, BR: tl.constexpr,
                 BM: tl.constexpr, HAS_CS: tl.constexpr, EVEN_N: tl.constexpr, SPLIT_K: tl.constexpr,
                 HAS_BIAS: tl.constexpr, HAS_LR: tl.constexpr, STAGES: tl.constexpr, PAIRS: tl.constexpr,
                 ASM: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """y (M, N) = (x / cs) Ŵᵀ + epilogue for M <= BM tokens (BM = 1, 2 or 4), in one launch. Grid
    (N / BN, G / GPS): every program reads its words once, whatever M.

    1. Each program writes its GPS groups of x / cs, one value per thread, to the scratch ``xs``
       (group-major, ``_gemv1_scratch``), in its column block's own copy (``xs_per_block`` fp32
       apart; 0: one copy, which programs of the same K range write with the same values). Fp32
       path: x' = (x / cs)·2^-pos per channel. PAIRS: fp16 pairs matched to the word's two fp16
       halves (``_store_pairs``), the BM rows side by side. Every thread then
       reads them with 16-byte loads instead of dividing again: x work per thread is per input
       channel, and each channel meets only BN/threads columns.
    2. Words of one group are reduced over their rows, then scaled once (S) and given Z·Σx, for
       each row of x in turn (unpacking again per row: sharing the unpacked pairs between rows
       measured the same on the H200, run 8).
    3. With several K splits each program adds its partial sums into the fp32 workspace ``ws``
       (BM·N) and counts itself in ``lock[n]``; the last to arrive reads the total back (leaving
       ws at 0), applies the bias and low-rank epilogue, writes y and resets the lock: split-K
       with no second kernel, and ws/lock are zero again for the next call.
    Low-rank term (HAS_LR): each program also computes x Aᵀ over its own input channels; the
    parts meet in ``tws`` (BM·BR fp32 per column block, zeroed like ws) and the last program adds
    t Bᵀ, so the rank-r term costs no launch of its own."""
    offs_n, mask_n, g0, g_end, xs_ptr = _gemv1_program(xs_ptr, xs_per_block, N, G, BN, GPS)
    rows = tl.arange(0, BM)[:, None]
    # PREFETCH: each group's words are loaded one step ahead, the first before phase 1 (whose x
    # loads and reductions then overlap them). Timed on the H100 (scripts/gemv1_anatomy.py): it
    # helps the pairs path, whose arithmetic is short, and slows the fp32 path, so only there;
    # with one group per program there is nothing ahead (and the reload below would double the
    # loads: Qwen3-4B q_proj W4 went from 6.6 to 8.9 µs).
    PREFETCH: tl.constexpr = PAIRS and GPS > 1
    if PREFETCH:
        w0, w1, w2, s, z = _gemv1_load(w_ptr, s_ptr, z_ptr, g0, offs_n, mask_n, N, row1, row2, W0, W1, W2, GROUP,
                                       EVEN_N)
    for m in tl.static_range(BM):
        k_end = K * (m < M)  # a padding row reads nothing
        _gemv1_scratch(x_ptr + m * K, cs_ptr, xs_ptr, g0, K, k_end, G, m, W0, W1, W2, GROUP, GPS, BM, HAS_CS, PAIRS)
    # x Aᵀ over this program's channels: one token on CUDA cores; several as a 16-row tensor-core
    # product, and the tail then applies t Bᵀ to a 16-row tile on tensor cores too (per row on CUDA
    # cores, the low-rank term cost ~1.5 µs per row, H200 run 8). Without it the tail keeps BM rows
    # (16-row tiles there doubled the registers of the whole kernel).
    TM: tl.constexpr = 16 if BM > 1 and HAS_LR else BM
    t = tl.zeros((TM, BR), tl.float32)
    if HAS_LR:
        if BM == 1:
            t = _gemv1_lowrank_part(x_ptr, a_ptr, g0, K, R, GROUP, GPS, BR)[None, :]
        else:
            offs_m = tl.arange(0, TM)
            t = _lowrank_t(x_ptr, a_ptr, offs_m, offs_m < M, g0 * GROUP, tl.minimum(g_end * GROUP, K), K, R, TM, BR,
                           DOT_DTYPE)
    tl.debug_barrier()  # the scratch is written before any thread of this program reads it
    acc = tl.zeros((BM, BN), tl.float32)
    # STAGES > 1: Triton software-pipelines the loop, copying the next groups' words into shared
    # memory (cp.async) while this group is computed; without it every program loads, then
    # computes, and the SMs wait on memory and then on arithmetic instead of both at once.
    for g in tl.range(g0, g_end, num_stages=STAGES):
        if PREFETCH:  # the last step reloads its own group (cache hits) rather than branch
            n0, n1, n2, ns, nz = _gemv1_load(w_ptr, s_ptr, z_ptr, tl.minimum(g + 1, g_end - 1), offs_n, mask_n, N,
                                             row1, row2, W0, W1, W2, GROUP, EVEN_N)
        else:
            w0, w1, w2, s, z = _gemv1_load(w_ptr, s_ptr, z_ptr, g, offs_n, mask_n, N, row1, row2, W0, W1, W2, GROUP,
                                           EVEN_N)
        for m in tl.static_range(BM):
            d, xsum = _gemv1_group(xs_ptr, w0, w1, w2, g, m, magic, W0, W1, W2, OFF1, OFF2, MID, GROUP, BM, PAIRS, ASM)
            acc = tl.where(rows == m, acc + (s * d + z * xsum)[None, :], acc)
        if PREFETCH:
            w0, w1, w2, s, z = n0, n1, n2, ns, nz
    if SPLIT_K or TM != BM:  # the tail reads the sums back as a TM-row tile
        _gemv1_split_k_tail(acc, t, ws_ptr, lock_ptr, tws_ptr, out_ptr, offs_n, mask_n, M, N, bias_ptr, b_ptr, R,
                            HAS_BIAS, HAS_LR, BR, BM, TM)
    else:
        _gemv1_store(acc, t, out_ptr, offs_n, mask_n, M, N, bias_ptr, b_ptr, R, HAS_BIAS, HAS_LR, BR)
