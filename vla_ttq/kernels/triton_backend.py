"""Launching the Triton kernels: shape checks, the kernel chosen by M, tile/split choice and tuning.

Rule (by the number of tokens M = x.numel() / K):
* M <= GEMV_MAX_M: the one-launch GEMV (``gemv1_kernel``: x / cs computed once per program into
  a scratch, codes unpacked and multiplied two at a time in fp16x2 (PTX; emulated under the
  interpreter), for each of the M rows, split-K partial sums reduced by the last program to
  arrive, no second kernel). Every program reads its words once whatever M, but the unpacking is
  per row: on the H200 (run 8) it beat the tensor-core GEMM of then at M = 2-4 on the Gemma-2B
  layers (gate/up W4 M = 2: 12.4 vs 23.5 µs, M = 4: 16.9 vs 23.4) and lost at M = 8 (29.0 vs 23.9).
  3-4 tokens of layers under GEMV_ROWS_MIN_NK weights go to the GEMM, which was ~0.8 µs faster
  there, and since run 12 3-4 tokens at 2 and 4 bits of layers from WA_MIN_NK weights too (the
  weight-as-left-operand GEMM: gate/up W4 M = 3 15.5 vs 16.9 µs, 2048 x 2048 5.9 vs 7.1);
* 2 and 4 bits, M <= DOT_MAX_M[bits] on any layer up to M = 8, on large layers (N*K >=
  DOT_MIN_NK), and up to WA_MID_MAX_M tokens on layers from WA_MIN_NK: a split-K tensor-core GEMM.
  Two kernels: dequantized tiles fed to tl.dot as the right operand (``quant_matmul_kernel``, rows
  past M masked, partial sums added by ``reduce_kernel``), or, first for the tokens of WA_FIRST_M
  (3-64 tokens; W4 3-32 until run 15; H200 runs 11-12, 15), the weight as the left operand
  (``quant_matmul_wa_kernel``: 6-tuple tiles; fp32 activations run the first kernel): its codes
  made in registers, two per instruction in tiles of up to 32 tokens (``pair_order``), S and Z
  applied per group (in tiles of 64 tokens to every code instead, ``wa_scaled``), K splits added by
  atomics and the last program of a column block writing y; on large layers at WA_PRESCALE_M tokens
  x / cs made once before it (``prescale_kernel``). The reaches to 64 tokens under DOT_MIN_NK weights
  hold for packed weights: TTQ's per-call step and wide layers' low-rank terms keep dequantize + cuBLAS
  from 33 tokens there (run 16, ``path_for``'s lowrank and online).
  Other widths never take the path: at 3 bits it was 3-5x slower than dequantize + cuBLAS
  (H200, run 9: gemma gate/up M = 8 152.9 vs 50.9 µs) and its M = 48-64 tile did not fit in shared
  memory;
* otherwise: dequantize Ŵ/cs to x's dtype once (Triton), then cuBLAS, which wins when the matmul
  is compute bound (pi0.5's ~800-token prefix).
TTQ's per-call step (``online_matmul``) quantizes W for one call: where the rule above says
dequantize, the quantize kernel writes the dequantized weight itself (B A folded back in) for one
cuBLAS call; elsewhere it packs and the kernels above run. ``column_scale`` computes s = D^½ in one
launch. The low-rank term's t = x Aᵀ is computed inside the matmul kernels
(each K split its part), not by a matmul launched before them: that launch and a cast cost ~8 µs,
more than the whole M = 1 GEMV. Tile sizes come from a heuristic, or, with ``VLA_TTQ_AUTOTUNE=all`` (or ``=n``: only calls with
M <= n) on CUDA, from timing a few candidates once per (shape, bits, group, M bucket).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import math
import os
import warnings

import torch
import torch.nn.functional as F

from ..quant.packing import PackedWeight
from ..quant.scaling import check_scale_params
from .layout import PlanarPackedWeight, check_planar_shape, slice_widths

PATHS = ("gemv", "dot", "dequant")
GEMV_MAX_M = 4
GEMV_ROWS_MIN_NK = 4 << 20  # 3-4 tokens take the GEMV from ~4M weights (H200 run 8: below, the GEMM won by ~0.8 µs)
DOT_ANY_LAYER_MAX_M = 8
# Largest M at which a tensor-core GEMM beats dequantize + cuBLAS on the large layers. Run 9 (H200,
# scripts/path_crossover.py) set W2 16 and W4 48 for the dequantizing GEMM (gate/up M = 48: 38.1 vs
# 44.8 µs). Since run 11 the weight-as-left-operand GEMM leads at W2 from 5 tokens, and won or tied
# up to 64 (H200, scripts/wa_gemm.py: gate/up W2 M = 32 23.8 vs 43.2 µs, M = 64 36.1-39.8 vs 43.8;
# down M = 32 29.0 vs 44.5, M = 64 42.5-45.6 vs 45.6; docs/kernels.md). At W4 it leads up to 32
# tokens since run 12 (WA_FIRST_M), and W4 reached 48 with the dequantizing GEMM. Since run 15 W4 too reaches 64,
# with the weight-as-left-operand GEMM first: its tiles of 64 rows dequantize every code (WA_SCALED_MIN_BM), and
# at 40 and 64 tokens they beat both the dequantizing GEMM and dequantize + cuBLAS on every large layer timed (H200,
# scripts/wa_gemm.py: down M = 64 32.0 vs 48.2 and 47.2 µs, Qwen3-32B q 43.0 vs 56.0 and 55.9, Qwen3-8B q 22.1 vs
# 27.6 and 22.3). Earlier in run 15, W4's reach had been made to depend on the memory bandwidth: dequantize + cuBLAS
# was 1.15-1.45x slower than the dequantizing GEMM at 49-64 tokens on the H100, and up to 1.25x faster on the H200.
DOT_MAX_M = {2: 64, 4: 64}
DOT_MIN_NK = 12 << 20  # below ~12M weights, dequantize + cuBLAS beat the split-K GEMM at M = 16..64
WA_TILES = ((256, 2), (128, 2), (64, 4))  # (columns, programs per SM): the weight-as-left-operand GEMM's candidates
# Tokens (first, last) for which that kernel's heuristic tile comes first on the large layers: W2 from 5 since run 11;
# W4 since run 12, when its codes were made two at a time (PAIRS_MAX_BM) and its K splits summed by atomics
# (WA_ATOMIC_TAIL), and it beat the dequantizing GEMM from 5 to 32 tokens (H200, scripts/wa_ab.py: gate/up M = 8
# 15.7 vs 23.7 µs, down M = 32 22.0 vs 36.3); from 3 tokens since it beat the GEMV there (scripts/wa_gemm.py: down
# W2 M = 3 12.9 vs 15.5; at M = 2 the GEMV won, 11.5 vs 12.9). On layers of WA_MIN_NK to DOT_MIN_NK weights it comes
# first (and the GEMM path is taken) up to WA_MID_MAX_M tokens: on 2048 x 2048 it took 6.0-8.8 µs at 5-32 tokens
# where the GEMM or dequantize + cuBLAS took 10.0-10.2, and lost at 64 (W4 13.4 vs 10.4). Since run 15's 64-row
# tiles dequantize every code, W2 keeps it to 64 tokens there (H200, scripts/small_layer_tiles.py: 2048 x 2048 at 48
# tokens 8.4 vs 10.1 µs, 1024 x 4096 8.3 vs 12.4; W4 still lost to dequantize + cuBLAS, 2048 x 2048 at 64 12.5 vs 10.3)
WA_FIRST_M = {2: (3, 64), 4: (3, 64)}
WA_MIN_NK = 4 << 20
WA_MID_MAX_M = {2: 64, 4: 32}
# Below WA_MIN_NK weights (Gemma-2B's k/v, Gemma-300M's layers) it comes first from 2 to 32 tokens too, with every
# program on one group (split = G) and 64 columns where N <= WA_NARROW_N, else 128: the split-K GEMM's tile, the GEMV
# (2-4 tokens) and dequantize + cuBLAS (9-32) had too few programs or a launch too many, and it beat all three on every
# small layer measured (H200 run 14, scripts/small_layer_tiles.py: k/v 256 x 2048 at 3 tokens 3.5 µs against 6.4 for the
# GEMM and 5.9 for the GEMV, at 16 tokens 3.8 against 7.0 for dequantize + cuBLAS; that column rule stays within 6 % of
# the best of its tiles); at 64 tokens dequantize + cuBLAS won on 2048 x 1024 and 1024 x 2048. Layers of at most
# WA_NARROW_N outputs (k/v) keep it to 64 tokens since run 15's 64-row tiles (H200, scripts/small_layer_tiles.py: k/v
# 256 x 2048 W4 at 48 tokens 5.1 vs 7.2 µs, at 64 5.6 vs 7.2, bf16 5.7; 2048 x 1024 at 64 still lost, 7.7 vs 7.6)
WA_SMALL_M = (2, 32)
WA_NARROW_N, WA_NARROW_MAX_M = 512, 64
# Those reaches to 64 tokens (WA_NARROW_MAX_M, and WA_MID_MAX_M's at W2) are for a packed weight (``_wa_first``). TTQ's
# per-call step keeps dequantize + cuBLAS from 33 tokens on layers under DOT_MIN_NK weights (its quantize pass writes
# the dequantized weight; packing it for the GEMM cost more), and so does a low-rank term on layers of more than
# WA_LOWRANK_MAX_N outputs. H100, run 16, the kernel benchmark with run 15's reach and without it, at 33-64 tokens
# (docs/kernels/h100_run16_bench_reach_64.json, _reach_32.json): TTQ W2 r16 on Gemma-2B q/o 31.0-32.1 µs against
# 22.3-22.6, on Gemma-300M gate/up 30.2-31.5 against 20.0-20.2, TTQ W4 r16 on k/v 17.1-17.8 against 15.0-15.3; W2 r16
# on q/o 14.5-16.2 against 13.3-13.4, on Gemma-300M gate/up 14.6-16.2 against 11.8-12.1. A packed weight keeps the
# reach: W2 r0 on q/o 8.4-9.7 against 10.4-10.5; so do the low-rank terms of the narrower layers: W4 r16 on k/v
# 6.3-6.9 against 7.9, W2 r16 on Gemma-300M down (1024 outputs) at 33-48 tokens 14.1-14.3 against
# 15.4-15.5.
WA_LOWRANK_MAX_N = 1024
# Tiles of up to this many tokens make their codes two at a time (pair_order); at 64 the reordered x tile cost more
# than the pairs saved (H200 run 12: gate/up W2 M = 64 43.9 vs 40.5 µs, down 49.6 vs 46.4), while at 32 they won
# (gate/up W4 23.4 vs 32.8, W2 21.9 vs 24.2)
PAIRS_MAX_BM = 32
# That kernel's K splits add into a zeroed workspace with atomics and its last program writes y (as the GEMV's do),
# instead of writing partial sums for reduce_kernel
WA_ATOMIC_TAIL = True
# Tiles of at least this many token rows make every code S·c + Z in fp32 and round it to x's dtype for the dot (SCALED
# in quant_matmul_wa_kernel, ``wa_scaled``), instead of scaling each group's dot (2 FMAs an output per group)
WA_SCALED_MIN_BM = 64
# On layers from WA_PRESCALE_MIN_NK weights at these token counts x / cs is made once, by a small kernel before the
# weight-as-left-operand GEMM (``prescale_kernel``), instead of in every program, where each column block divided its
# x tile again. H200, run 16 (scripts/prescale_ab.py), Gemma-2B at 24-48 tokens: 0.1-2.5 µs faster (down W4 M = 33
# 29.5 -> 27.0, gate/up W2 M = 33 30.2 -> 28.6); up to 16 tokens within ±0.3, at 64 gate/up 0.5-0.9 slower. On layers
# under 12M weights the extra launch cost ~1 µs more than it saved on every tile they run, at every M. With a low-rank
# term the kernel still needs x itself (t = x Aᵀ), so there x / cs stays in it.
WA_PRESCALE_M, WA_PRESCALE_MIN_NK = (17, 48), DOT_MIN_NK
# Dequantize + cuBLAS with a low-rank term: below this many weights B A is folded into the
# dequantized tile (H200, run 7: q/o at M = 800 r16 20.5 µs against 26.6 with a separate addmm);
# above it the fold slows the dequantize pass more than the addmm costs (gate/up 125.1 vs 122.2).
LOWRANK_FOLD_MAX_NK = 12 << 20
# Rows, groups and warps of an online-quantize program; one warp of 32 rows won among run 9's tiles (H200: gate/up
# W4 32.5 µs against 32.9 at (64, 1, 2) and 33.7 at (128, 1, 4); scripts/quantize_ab.py)
QUANTIZE_TILE = (32, 1, 1)
# At 4 bits without a low-rank term, two threads a row won (H200, session 13, scripts/qdq_tiles.py,
# docs/kernels/h200_run13_qdq_tiles_pack.json: gate/up 30.7 us against 32.9 at (32, 1, 1), down 29.6 against 32.3,
# q/o 5.9 against 7.4; the same bits). It lost 0.9-1.5 us at 2 bits and 1.3-1.7 us at r = 16 on the large layers,
# which keep QUANTIZE_TILE
QUANTIZE_TILE_BY_BITS = {4: (64, 1, 4)}
# The same for the dense online step (qdq_weight), which writes 2 bytes a weight besides. Since its chunks are
# held and it divides with div.approx (session 13), (32, 1, 2) won on the large layers at r = 0 and 16 (H200:
# gate/up r0 45.6 us against 47.7 at run 10's (64, 1, 2), r16 67.0 against 72.7; down r16 73.1 against 77.8) and
# was within 0.4 us on the small ones (docs/kernels/h200_run13_qdq_tiles.json, scripts/qdq_tiles.py)
QDQ_TILE = (32, 1, 2)
QUANTIZE_HELD = True  # the online quantize's second sweep reuses the first's chunks of W (quantize_kernel's HELD)
QDQ_FAST_DIV = True  # the dense online step divides by cs with div.approx (2 instructions) instead of div.full (~6)
_TUNED: dict[tuple, tuple] = {}  # key -> chosen config, filled by autotuning
# (device, stream, kind, size) -> buffers, never freed (see _stream_buffer)
_GEMV1_BUFFERS: dict[tuple, object] = {}
MAGIC = 0x4B000000  # float 2^23: OR-ing a code into its low mantissa bits gives 2^23 + code
_PARAM_MIN = {torch.float16: torch.finfo(torch.float16).smallest_normal,
              torch.bfloat16: torch.finfo(torch.bfloat16).smallest_normal, torch.float32: 0.0}


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_MODULE: list = [None, None]  # [kernels module, interpreted?]


def _tk():
    """The kernels module, imported on first use: triton.jit reads TRITON_INTERPRET when it decorates,
    so a module imported before the variable was set is re-imported under the interpreter."""
    if _MODULE[0] is None or _MODULE[1] != interpreting():
        mod = importlib.import_module(f"{__package__}.triton_kernels")
        if _MODULE[0] is not None:
            mod = importlib.reload(mod)
        _MODULE[:] = [mod, interpreting()]
    return _MODULE[0]


@functools.cache
def triton_installed() -> bool:
    """Looked up once: "auto" asks on every layer call, and a module search costs ~30 µs."""
    return importlib.util.find_spec("triton") is not None


def is_available(device: torch.device, bits: int, group: int) -> bool:
    """CUDA, or CPU under the Triton interpreter (tests); the planar layout needs group % 32 == 0 and
    the kernels' tiles (tl.arange) a power of two: 32, 64, 128, ... (96 takes another backend)."""
    if group % 32 or group & (group - 1) or not 1 <= bits <= 8 or not triton_installed():
        return False
    return device.type == "cuda" or (device.type == "cpu" and interpreting())


def _tl_dtype(dtype: torch.dtype):
    tk = _tk()
    return {torch.float16: tk.tl.float16, torch.bfloat16: tk.tl.bfloat16, torch.float32: tk.tl.float32}[dtype]


def _slices(bits: int, K: int) -> dict:
    """Constexprs W0..W2 / OFF1, OFF2 and first word rows row1, row2 of the slices."""
    sl = slice_widths(bits) + [(0, 0)] * (3 - len(slice_widths(bits)))
    rows, c = [], 0
    for _, w in sl:
        rows.append(c)
        c += K * w // 32
    return dict(W0=sl[0][1], W1=sl[1][1], W2=sl[2][1], OFF1=sl[1][0], OFF2=sl[2][0], row1=rows[1], row2=rows[2])


def prepare(packed: PackedWeight) -> PlanarPackedWeight:
    check_planar_shape(packed.shape, packed.group)
    p = PlanarPackedWeight.from_packed(packed)
    if not (p.data.is_contiguous() and p.scale_t.is_contiguous() and p.zero_t.is_contiguous()):
        # the kernels index raw memory: (KW, N) words and (K/g, N) S, Z must be dense
        p = PlanarPackedWeight(p.data.contiguous(), p.scale_t.contiguous().t(), p.zero_t.contiguous().t(),
                               p.bits, p.group, p.shape)
    return p


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _gemm_rows(M: int) -> int:
    """Rows of a tensor-core GEMM tile for M tokens: a power of two from 16 (tl.dot's least) to 64."""
    return min(64, max(16, _next_pow2(M)))


def _candidates(bits: int, group: int, K: int, N: int, M: int, sms: int) -> list[tuple]:
    """(BM, BN, GT, split, num_warps) candidates of the tensor-core GEMM; the first one is the
    heuristic's choice."""
    G = K // group
    out = []
    bm = _gemm_rows(M)
    gt_min = _gt_min(bits, group)
    shapes = [(bm, 128, gt_min, 4, (2, 4)), (bm, 64, gt_min, 4, (2, 1)), (bm, 128, gt_min, 8, (2,)),
              (bm, 64, 2 * gt_min, 4, (2,))]
    if bits == 2 and bm == 16:
        # H200 sweep (run 8, docs/kernels.md): 8 warps won every Gemma-2B layer at W2, M = 2-16
        # (gate/up M = 16: 24.4 vs 33.0 µs with 4 warps); at W4, and from M = 32, 4 warps won
        shapes.insert(0, shapes.pop(2))
    for bm_, bn, gt, warps, waves_list in shapes:
        bn = min(bn, max(16, _next_pow2(N)))
        # no deeper than the layer, except where tl.dot needs the depth (rows past G are masked)
        gt = max(min(gt, _next_pow2(G)), gt_min)
        for waves in waves_list:  # aim at this many programs per SM (split-K fills the rest)
            cfg = (bm_, bn, gt, _split(G, gt, N, bn, M, bm_, waves, sms), warps)
            if cfg not in out:
                out.append(cfg)
    # the weight-as-left-operand kernel: 6-tuples (+ pipeline stages), one group a loop step
    wa = [(bm, bn, 1, _split(G, 1, N, bn, M, bm, waves, sms), 4, 3) for bn, waves in WA_TILES if bn <= max(64, N)]
    if _wa_first(bits, M, N, K):
        return list(dict.fromkeys([wa_layer_heuristic(M, N, K, sms, group)] + out + wa))
    return out + wa


def _wa_first(bits: int, M: int, N: int, K: int, lowrank: bool = False, online: bool = False) -> bool:
    """Whether the weight-as-left-operand GEMM's tile comes first for M tokens (WA_FIRST_M, WA_SMALL_M). Run 15's
    reach to 64 tokens on layers under DOT_MIN_NK weights (WA_NARROW_MAX_M, WA_MID_MAX_M) is for a packed weight
    without a low-rank term, and with one up to WA_LOWRANK_MAX_N outputs: TTQ's per-call step (``online``) and the
    wider layers' low-rank term stop at WA_SMALL_M's 32 tokens there (run 16)."""
    if bits not in WA_FIRST_M:
        return False
    extended = not online and (not lowrank or N <= WA_LOWRANK_MAX_N)
    if N * K < WA_MIN_NK:
        narrow = N <= WA_NARROW_N and extended
        return WA_SMALL_M[0] <= M <= (WA_NARROW_MAX_M if narrow else WA_SMALL_M[1])
    first, last = WA_FIRST_M[bits]
    if N * K < DOT_MIN_NK:
        last = min(last, WA_MID_MAX_M[bits] if extended else WA_SMALL_M[1])
    return first <= M <= last


def wa_layer_heuristic(M: int, N: int, K: int, sms: int, group: int = 64) -> tuple:
    """The weight-as-left-operand kernel's heuristic tile for M tokens of this layer, by its size: small (under
    WA_MIN_NK weights), mid-size (under DOT_MIN_NK) or large."""
    G = K // group
    return _wa_small_heuristic(M, N, G) if N * K < WA_MIN_NK else _wa_heuristic(M, N, G, sms, N * K < DOT_MIN_NK)


def _wa_small_heuristic(M: int, N: int, G: int) -> tuple:
    """The weight-as-left-operand kernel's tile on a layer of fewer than WA_MIN_NK weights (WA_SMALL_M)."""
    return _gemm_rows(M), 64 if N <= WA_NARROW_N else 128, 1, G, 4, 3


def _wa_heuristic(M: int, N: int, G: int, sms: int, mid: bool = False) -> tuple:
    """The weight-as-left-operand kernel's tile (H200 runs 11-12, scripts/wa_gemm.py and wa_ab.py,
    Gemma-2B gate/up and down: the best tile or within 1 µs of it; 2048 x 2048 within 1 µs up to 8
    tokens, 1 µs at 16-32): 256 columns up to 32 tokens, with split-K for 2 programs an SM up to
    16 tokens (since the atomic split-K tail of run 12: down W4 M = 16 15.4 µs, where 1 an SM took
    18.1) and 1 above; at 33-64 tokens (tiles that dequantize every code since run 15) 256 columns and
    2 programs an SM, 4 from 8192 columns (H200 run 15, scripts/wa_gemm.py at 40 and 64 tokens: the best
    of 10 tiles on Gemma-2B's gate/up and down and Qwen3's 8B, 14B and 32B q; down W4 M = 64 32.0 µs
    against 38.2 with 4 an SM, gate/up 38.4 against 42.5 with 2). On a ``mid``-size layer (WA_MIN_NK to
    DOT_MIN_NK weights) from 8 tokens: 64 columns, split for 4 programs an SM (H200 run 14,
    scripts/small_layer_tiles.py, 2048 x 2048: M = 16 W4 6.49 µs against 7.31 with 256 columns, M = 32
    8.06 against 8.57; at 3-5 tokens 256 columns stayed best)."""
    bm = _gemm_rows(M)
    if mid and M >= 8:
        return bm, 64, 1, _split(G, 1, N, 64, M, bm, 4, sms), 4, 3
    if bm == 64:
        return bm, 256, 1, _split(G, 1, N, 256, M, bm, 4 if N >= 8192 else 2, sms), 4, 3
    return bm, 256, 1, _split(G, 1, N, 256, M, bm, 2 if M <= 16 else 1, sms), 4, 3


def wa_scaled(bm: int, bits: int, dtype: torch.dtype) -> bool:
    """Whether the weight-as-left-operand kernel makes every code S·c + Z (WA_SCALED_MIN_BM): codes of one slice
    (one 2^e offset for all) and 16-bit activations, whose dtype the dequantized codes take (S·c + Z lies
    between the group's Z and Z + S·qmax, which are stored in fp16 themselves)."""
    return bm >= WA_SCALED_MIN_BM and len(slice_widths(bits)) == 1 and dtype in (torch.float16, torch.bfloat16)


def _gt_min(bits: int, group: int) -> int:
    """Fewest groups in a tile of the dequantizing GEMM: every slice needs >= 16 word rows (tl.dot's K)."""
    return max(1, 512 // (group * min(w for _, w in slice_widths(bits))))


def _split(G: int, gt: int, N: int, bn: int, M: int, bm: int, waves: int, sms: int) -> int:
    """K splits that bring the grid to ``waves`` programs per SM (at most one per K tile)."""
    programs = math.ceil(N / bn) * math.ceil(M / bm)
    return max(1, min(math.ceil(G / gt), math.ceil(waves * sms / programs)))


def _epilogue_args(x2, cs, bias, lr_a, lr_b, use_dot: bool = False) -> tuple[list, int, dict]:
    """The optional inputs every matmul kernel takes (cs, bias, A (R, K), B (N, R); x itself
    stands in for absent ones, never read), the rank R and the constexprs that switch them on;
    BR: R padded to a power of two (>= 16 where tl.dot computes x Aᵀ)."""
    cs_bias_a_b = [v if v is not None else x2 for v in (cs, bias, lr_a, lr_b)]
    R = 0 if lr_a is None else lr_a.shape[0]
    br = max(16 if use_dot else 2, _next_pow2(R))
    return cs_bias_a_b, R, dict(HAS_BIAS=bias is not None, HAS_LR=lr_a is not None, BR=br)


def _lowrank_args(lowrank) -> tuple:
    """(B, A) as the kernels index them (dense), or (None, None)."""
    return (None, None) if lowrank is None else (lowrank[0].contiguous(), lowrank[1].contiguous())


def _gemv1_candidates(bits: int, group: int, K: int, N: int, sms: int, rows: int = 1,
                      lowrank: bool = False) -> list[tuple]:
    """(BN, GPS, num_warps, stages, pairs) for the one-launch GEMV of ``rows`` tokens (padded to a
    power of two); the first one is the heuristic's choice. ``pairs``: unpack and multiply two
    codes per fp16x2 instruction (else fp32, one code; one row only);
    on the H100 it tied the fp32 path on gate/up and won on down at W4 (10.2 vs 11.5 µs, run 4 in
    docs/kernels.md), at 1.8e-3 relative error against float64 (fp32 path 1.7e-3, torch int4 2.9e-3).

    A thread holds BN / (32·warps) columns (16-byte loads, 4 per load); GPS = groups per program
    (K split); stages > 1 software-pipelines the group loop. From the H100 sweeps
    (docs/kernels.md): 1024 columns × 8 warps × 2 groups, unpipelined, won on both large Gemma-2B
    layers at W2 and tied at W4; layers too small to give every SM a program take 512 columns ×
    4 warps, one group each, two stages. Several rows (H200 sweep, run 8): two rows did best with
    512 columns × 4 warps × 4 groups in 3 stages (1 group where that leaves SMs idle), four rows
    with 256 columns × 2 warps × 2 groups, on every Gemma-2B layer measured. One row with a low-rank
    term (``lowrank``) on a layer that takes the 1024-column tile takes 512 × 4 warps instead (H200 run
    14, the autotuner with rotating weights: gate/up W4 r16 12.97 -> 11.94 µs, W2 11.04 -> 9.59; down
    W4 12.21 -> 11.11, W2 11.01 -> 9.69)."""
    G = K // group
    cap_n, cap_g = max(16, _next_pow2(N)), _next_pow2(G)

    def programs(bn, gps):
        return math.ceil(N / bn) * math.ceil(G / gps)

    w512, w256 = max(1, min(4, cap_n // 128)), max(1, min(2, cap_n // 128))
    if rows == 1:
        first = (min(1024, cap_n), min(2, cap_g), 8 if cap_n >= 1024 else w512, 1)
        if programs(first[0], first[1]) < sms:
            first = (min(1024, cap_n), 1, first[2], 1)
        if programs(first[0], first[1]) < sms:
            first = (min(512, cap_n), 1, max(1, min(4, min(512, cap_n) // 128)), 2)
        elif lowrank and first == (1024, 2, 8, 1):
            first = (512, 2, 4, 1)
    elif rows == 2:
        first = (min(512, cap_n), min(4, cap_g), w512, 3)
        if programs(first[0], first[1]) < sms:
            first = (min(512, cap_n), 1, w512, 1)
    else:
        first = (min(256, cap_n), min(2, cap_g), w256, 1)
    others = [(min(512, cap_n), min(4, cap_g), w512, 3), (min(512, cap_n), min(2, cap_g), w512, 1),
              (min(1024, cap_n), 1, w512, 1), (min(256, cap_n), min(2, cap_g), w256, 1),
              (min(1024, cap_n), min(2, cap_g), 8 if cap_n >= 1024 else w512, 1)]
    cands = [first] + others
    fp32 = [c + (False,) for c in cands] if rows == 1 else []
    return list(dict.fromkeys([c + (True,) for c in cands] + fp32))  # no repeats


def _code_centre(bits: int) -> int:
    """Σ over slices of 2^offset · 2^(width−1): the value the pairs path centres codes on."""
    return sum((1 << (w - 1)) << off for off, w in slice_widths(bits))


def _stream_buffer(device: torch.device, key: tuple, make):
    """``make()``'s result kept per (device, current stream) and ``key``, never freed: a CUDA graph
    that captured a launch holds its addresses, and two streams running at once must not share
    counters or workspaces that the kernels' last programs reset."""
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    full = (device, stream) + key
    if full not in _GEMV1_BUFFERS:
        _GEMV1_BUFFERS[full] = make()
    return _GEMV1_BUFFERS[full]


def _split_k_buffers(device: torch.device, N: int, tws_numel: int, rows: int) -> tuple:
    """Split-K workspace ws (rows·N,) fp32, lock counters (N,) int32 and the low-rank workspace tws
    (``tws_numel`` fp32: rows·BR per column block), all zero between calls: the kernels' last
    programs reset them (``_gemv1_split_k_tail``, shared by the GEMV and the weight-as-left-operand
    GEMM; ``_stream_buffer``)."""
    ws, lock = _stream_buffer(device, ("ws", N, rows), lambda: (
        torch.zeros(rows * N, device=device, dtype=torch.float32), torch.zeros(N, device=device, dtype=torch.int32)))
    tws = _stream_buffer(device, ("tws", tws_numel),
                         lambda: torch.zeros(tws_numel, device=device, dtype=torch.float32))
    return ws, lock, tws


def _gemv1_buffers(device: torch.device, N: int, xs_numel: int, tws_numel: int = 2, rows: int = 1) -> tuple:
    """``_split_k_buffers`` and the GEMV's x / cs scratch of ``xs_numel`` fp32: (ws, lock, xs, tws)."""
    ws, lock, tws = _split_k_buffers(device, N, tws_numel, rows)
    xs = _stream_buffer(device, ("xs", xs_numel), lambda: torch.empty(xs_numel, device=device, dtype=torch.float32))
    return ws, lock, xs, tws


def _gemv1_scratch_size(K: int, group: int, blocks: int, rows: int = 1) -> tuple[int, int]:
    """(fp32 per column block, total) of gemv1's x scratch: (3·group + 4)·rows per group (one run
    per code slice, Σx, |max|; ``_gemv1_scratch``), one copy per column block."""
    per_block = (K // group) * (3 * group + 4) * rows
    return per_block, per_block * blocks


def _launch_gemv1(cfg, x2, cs, packed, lowrank, bias, out):
    """gemv1_kernel for M <= GEMV_MAX_M tokens; ``lowrank`` = (B, A) or None: x Aᵀ is computed in
    the kernel."""
    tk = _tk()
    bn, gps, warps, stages, pairs = cfg
    M, K = x2.shape
    bm = _next_pow2(M)
    if bm > 1 and not pairs:
        raise ValueError(f"the fp32 GEMV path runs one token; {M} need the pairs path")
    N = packed.shape[0]
    G = K // packed.group
    grid = (math.ceil(N / bn), math.ceil(G / gps))
    sl = _slices(packed.bits, K)
    lr_b, lr_a = _lowrank_args(lowrank)
    (cs_, bias_, a_, b_), R, common = _epilogue_args(x2, cs, bias, lr_a, lr_b, use_dot=bm > 1)
    per_block, numel = _gemv1_scratch_size(K, packed.group, grid[0], bm)
    ws, lock, xs, tws = _gemv1_buffers(x2.device, N, numel, grid[0] * bm * common["BR"], bm)
    tk.gemv1_kernel[grid](
        x2, cs_, packed.data, packed.scale_t, packed.zero_t, out, ws, lock, xs, bias_, a_, b_, tws,
        M, N, K, G, sl["row1"], sl["row2"], R, MAGIC, per_block,
        W0=sl["W0"], W1=sl["W1"], W2=sl["W2"], OFF1=sl["OFF1"], OFF2=sl["OFF2"], MID=_code_centre(packed.bits),
        GROUP=packed.group, GPS=gps, BN=bn, BM=bm, HAS_CS=cs is not None, EVEN_N=N % bn == 0, SPLIT_K=grid[1] > 1,
        STAGES=stages, PAIRS=pairs, ASM=not interpreting(), DOT_DTYPE=_tl_dtype(x2.dtype), num_warps=warps, **common)
    return out


def _shift_table(device: torch.device) -> torch.Tensor:
    """0, 1, ..., 31 as int32: field i of a word sits at bit i·w (see ``_group_codes``)."""
    return _stream_buffer(device, ("shift_table",), lambda: torch.arange(32, device=device, dtype=torch.int32))


@functools.cache  # asked on every launch of the GEMM
def pair_order(bits: int, group: int) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """The weight-as-left-operand GEMM's order of a group's channels for one 2- or 4-bit slice
    (``_pair_codes``): (shifts, channels). Dot index κ = 16s + 8h + 2q + e (the tensor cores' operand
    gives lane q of a quad the pairs κ, κ+1 at 16s + 8h + 2q) is field f + (16/bits)·e of word
    4·l + q, so both codes of a pair sit 16 bits apart in one word, made by one shift (shifts[2s + h]
    = bits·f) and one LOP3. A lane's pairs of a row fill its words: l = 0 and f = h·(group/16) + s
    when a group holds 4 words a row (group·bits = 128), else l = 2·(s // (16/bits)) + h and
    f = s % (16/bits).
    The channel of field i of word j is i·(words a group) + j (layout.py). None where no such order
    exists (other widths, group·bits < 128)."""
    if bits not in (2, 4) or group % 16 or group * bits < 128:
        return None
    steps, ppw, wg = group // 16, 16 // bits, group * bits // 32
    shifts, channels = [0] * (2 * steps), [0] * group
    for s in range(steps):
        for h in range(2):
            word, f = (0, h * steps + s) if wg == 4 else (2 * (s // ppw) + h, s % ppw)
            shifts[2 * s + h] = bits * f
            for q in range(4):
                for e in range(2):
                    channels[16 * s + 8 * h + 2 * q + e] = (f + ppw * e) * wg + 4 * word + q
    return tuple(shifts), tuple(channels)


def _pair_asm(bits: int, magic: int) -> str:
    """The PTX of ``_pair_codes``: one lop3 ``(src & mask) | magic`` whose 32-bit result is two
    16-bit floats 2^e + c, one per half (mask and magic repeated in both halves; 0xEA = a & b | c)."""
    both = lambda v: v | v << 16  # noqa: E731
    return f"lop3.b32 $0, $1, {both((1 << bits) - 1)}, {both(magic)}, 0xea;"


def _magic(bits: int, dtype: torch.dtype) -> tuple[int, float]:
    """(bit pattern, value) of the float whose low mantissa bits take a code exactly: 1024 in fp16
    (codes < 2^10), 128 in bf16 (codes < 2^7; 8-bit slices get a plain conversion)."""
    widest = max(w for _, w in slice_widths(bits))
    if dtype == torch.float16:
        return 0x6400, 1024.0
    return (0x4300, 128.0) if widest < 8 else (0, 0.0)


def _launch(cfg, x2, cs, packed, lowrank, bias, out):
    """The split-K tensor-core kernel (+ reduce_kernel when K is split); ``lowrank`` = (B, A) or None.
    A 6-tuple cfg (..., stages) runs the weight-as-left-operand kernel."""
    tk = _tk()
    bm, bn, gt, split, warps = cfg[:5]
    wa = len(cfg) == 6 and x2.dtype != torch.float32  # fp32 activations keep the dequantizing kernel's ieee dot
    gt = gt if wa else max(gt, _gt_min(packed.bits, packed.group))
    M, K = x2.shape
    N = packed.shape[0]
    G = K // packed.group
    k_tiles = math.ceil(G / gt)
    per = math.ceil(k_tiles / split)
    split = math.ceil(k_tiles / per)  # no empty programs
    sl = _slices(packed.bits, K)
    x_in = x2
    if wa and cs is not None and lowrank is None and _prescaled(M, N, K):
        x_in, cs = _prescale(x2, cs), None
    lr_b, lr_a = _lowrank_args(lowrank)
    (cs_, bias_, a_, b_), R, common = _epilogue_args(x2, cs, bias, lr_a, lr_b, use_dot=True)
    grid = (math.ceil(N / bn), split, math.ceil(M / bm))
    atomic = wa and WA_ATOMIC_TAIL and split > 1 and grid[2] == 1
    partial = split > 1 and not atomic
    dst = torch.empty((split, M, N), device=x2.device, dtype=torch.float32) if partial else out
    tpart = torch.empty((split, M, common["BR"]), device=x2.device, dtype=torch.float32) if partial and R else x2
    kernel, args, extra = tk.quant_matmul_kernel, (), {}
    if wa:
        magic, magic_value = _magic(packed.bits, x2.dtype)
        pairs = magic != 0 and bm <= PAIRS_MAX_BM and pair_order(packed.bits, packed.group) is not None
        ws, lock = x2, x2
        if atomic:
            ws, lock, tpart = _split_k_buffers(x2.device, N, grid[0] * bm * common["BR"], rows=bm)
        kernel, args = tk.quant_matmul_wa_kernel, (_shift_table(x2.device), ws, lock)
        scaled = wa_scaled(bm, packed.bits, x2.dtype)
        extra = dict(MAGIC=magic, MAGIC_VALUE=magic_value, STAGES=cfg[5], PAIRS=pairs, ASM=not interpreting(),
                     ATOMIC=atomic, PAIR_ASM=_pair_asm(packed.bits, magic) if pairs else "", SCALED=scaled)
    kernel[grid](
        x_in, cs_, packed.data, packed.scale_t, packed.zero_t, dst, bias_, a_, b_, tpart, *args,
        M, N, K, G, sl["row1"], sl["row2"], per, R,
        W0=sl["W0"], W1=sl["W1"], W2=sl["W2"], OFF1=sl["OFF1"], OFF2=sl["OFF2"], GROUP=packed.group, GT=gt,
        BM=bm, BN=bn, DOT_DTYPE=_tl_dtype(x2.dtype), HAS_CS=cs is not None, PARTIAL=partial,
        num_warps=warps, **common, **extra,
    )
    if partial:
        rbm, rbn = min(16, _next_pow2(M)), 128
        tk.reduce_kernel[(math.ceil(N / rbn), math.ceil(M / rbm))](
            dst, out, bias_, tpart, b_, M, N, split, R, BM=rbm, BN=rbn, num_warps=4, **common)
    return out


def _prescaled(M: int, N: int, K: int) -> bool:
    """Whether the weight-as-left-operand GEMM gets x / cs made before it (WA_PRESCALE_M) rather than making it."""
    return N * K >= WA_PRESCALE_MIN_NK and WA_PRESCALE_M[0] <= M <= WA_PRESCALE_M[1]


def _prescale(x2: torch.Tensor, cs: torch.Tensor) -> torch.Tensor:
    """x / cs in x's dtype, the values the weight-as-left-operand kernel would make from x and cs."""
    out = torch.empty_like(x2)
    bk = min(1024, _next_pow2(x2.shape[1]))
    _tk().prescale_kernel[(x2.shape[0], math.ceil(x2.shape[1] / bk))](x2, cs, out, x2.shape[1], BK=bk, num_warps=4)
    return out


def tune_key(device_type: str, N: int, K: int, bits: int, group: int, M: int, dtype: torch.dtype, lowrank: bool,
             path: str) -> tuple:
    """The key under which ``quant_matmul`` keeps a tuned (or fallen-back) tile in ``_TUNED``: the
    call's shape with M rounded up to a power of two, whether it has a low-rank term, and the path
    last (``_launch_first_that_fits`` names it)."""
    return device_type, N, K, bits, group, _next_pow2(M), dtype, lowrank, path


def _tune(key, cands, run, packed: PlanarPackedWeight) -> tuple:
    """Time each candidate and keep the fastest for this key: CUDA-graph replays (µs kernels would
    otherwise time the Python launch) cycling through clones of the packed weight, ~3x the L2 in all
    (freed afterwards), as the kernel benchmark times a layer. With one weight every Gemma-2B layer
    was timed from the H200's L2, and on q/o at 3 tokens the tuner chose a tile slower from memory
    (5.9 -> 7.1 µs, run 14). ``run(cfg, packed=...)`` launches one candidate on one clone of ``packed``."""
    from .bench import graph_time_us, rotating_copies

    copies = rotating_copies(packed, packed.nbytes, torch.cuda.get_device_properties(packed.data.device).L2_cache_size)
    best, best_t = cands[0], float("inf")
    for cfg in cands:
        try:
            t = graph_time_us([functools.partial(run, cfg, packed=p) for p in copies])
        except Exception as exc:  # a candidate that fails to compile or launch is skipped, not fatal
            warnings.warn(f"kernel tile candidate {cfg} failed while autotuning: {exc}", stacklevel=2)
            continue
        if t < best_t:
            best, best_t = cfg, t
    _TUNED[key] = best
    return best


def dequantize_t(packed: PlanarPackedWeight, col_scale: torch.Tensor | None, dtype: torch.dtype,
                 lowrank: tuple[torch.Tensor, torch.Tensor] | None = None, out: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """(Ŵ / cs + B A)ᵀ as a dense (K, N) tensor in ``dtype`` (one Triton pass, coalesced along N;
    the low-rank term B A only when ``lowrank`` = (B, A) is given), into ``out`` if given."""
    tk = _tk()
    N, K = packed.shape
    if out is None:
        out = torch.empty((K, N), device=packed.data.device, dtype=dtype)
    sl = _slices(packed.bits, K)
    bn, bk = 128, 32
    lr_b, lr_a = _lowrank_args(lowrank)
    if lr_a is not None and lr_a.dtype != lr_b.dtype:
        lr_a = lr_a.to(lr_b.dtype)  # tl.dot multiplies one dtype
    (cs_, _, a_, b_), R, common = _epilogue_args(out, col_scale, None, lr_a, lr_b, use_dot=True)
    tk.dequant_kernel[(math.ceil(N / bn), math.ceil(K / bk))](
        packed.data, packed.scale_t, packed.zero_t, cs_, a_, b_, out,
        N, K, K // packed.group, sl["row1"], sl["row2"], R,
        W0=sl["W0"], W1=sl["W1"], W2=sl["W2"], OFF1=sl["OFF1"], OFF2=sl["OFF2"], GROUP=packed.group,
        BN=bn, BK=bk, HAS_CS=col_scale is not None, HAS_LR=common["HAS_LR"], BR=common["BR"], num_warps=4)
    return out


@functools.cache
def tile_candidates(path: str, M: int, N: int, K: int, bits: int, group: int, sms: int,
                    lowrank: bool = False) -> tuple:
    """The tiles ``quant_matmul`` chooses among for this call (first = the heuristic's choice):
    the one-launch GEMV's on the GEMV path, else the tensor-core kernel's. Cached: every layer
    call of an untuned shape asks again."""
    if path == "gemv":
        return tuple(_gemv1_candidates(bits, group, K, N, sms, _next_pow2(M), lowrank))
    return tuple(_candidates(bits, group, K, N, M, sms))


def path_for(M: int, N: int = 1 << 30, K: int = 1, bits: int = 4, lowrank: bool = False,
             online: bool = False) -> str:
    """Which kernel runs M tokens of an N x K layer of ``bits``-bit codes (module docstring;
    thresholds from the H100 runs, the H200's runs 7-8 for M <= DOT_ANY_LAYER_MAX_M, run 9 for
    the widths and DOT_MAX_M, run 12 for mid-size layers, WA_MID_MAX_M); ``lowrank``: with a low-rank
    term; ``online``: for TTQ's per-call step, whose dequantize path is its own dense pass (run 16)."""
    wa = _wa_first(bits, M, N, K, lowrank, online)
    if M == 1 or (0 < M <= GEMV_MAX_M and (M <= 2 or N * K >= GEMV_ROWS_MIN_NK) and not wa):
        return "gemv"
    if 0 < M <= DOT_MAX_M.get(bits, 0) and (M <= DOT_ANY_LAYER_MAX_M or N * K >= DOT_MIN_NK or wa):
        return "dot"
    return "dequant"


def _autotune_max_m() -> int:
    """VLA_TTQ_AUTOTUNE: unset/0 = heuristic tiles; n = tune calls with M <= n; "all" = tune every M."""
    v = os.environ.get("VLA_TTQ_AUTOTUNE", "0").strip().lower()
    return 1 << 30 if v == "all" else int(v or 0)


def quant_matmul(x: torch.Tensor, packed: PackedWeight, col_scale=None, lowrank=None, bias=None,
                 path: str | None = None) -> torch.Tensor:
    """y = (x / cs) Ŵᵀ + (x Aᵀ) Bᵀ + bias; ``path`` forces gemv | dot | dequant (benchmarks)."""
    N, K = packed.shape
    if x.shape[-1] != K:
        raise ValueError(f"input has {x.shape[-1]} features, the quantized weight expects {K}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"triton backend takes float16/bfloat16/float32 inputs, got {x.dtype}")
    packed = prepare(packed)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, K).contiguous()
    M = x2.shape[0]
    cs = None if col_scale is None else col_scale.to(torch.float32).contiguous()
    path = path or path_for(M, N, K, packed.bits, lowrank is not None)
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if path == "dequant":
        fold = lowrank is not None and N * K <= LOWRANK_FOLD_MAX_NK
        wt = dequantize_t(packed, cs, x.dtype, lowrank if fold else None)
        y = x2 @ wt if bias is None else torch.addmm(bias.to(x.dtype), x2, wt)
        if lowrank is not None and not fold:  # (x Aᵀ) Bᵀ accumulated into y: one launch fewer than adding it
            b, a = lowrank
            y.addmm_(F.linear(x2, a.to(x.dtype)), b.to(x.dtype).t())
        return y.reshape(*lead, N)
    out = torch.empty((M, N), device=x.device, dtype=x.dtype)
    if path == "gemv" and M > GEMV_MAX_M:
        raise ValueError(f"the GEMV kernel takes at most {GEMV_MAX_M} rows, got {M}")
    if path == "gemv":  # both kernels compute x Aᵀ themselves
        launch = functools.partial(_launch_gemv1, x2=x2, cs=cs, packed=packed, lowrank=lowrank, bias=bias, out=out)
    else:
        launch = functools.partial(_launch, x2=x2, cs=cs, packed=packed, lowrank=lowrank, bias=bias, out=out)
    key = tune_key(x.device.type, N, K, packed.bits, packed.group, M, x.dtype, lowrank is not None, path)
    cfg = _TUNED.get(key)
    if cfg is None:
        cands = tile_candidates(path, M, N, K, packed.bits, packed.group, _num_sms(x.device), lowrank is not None)
        if x.device.type == "cuda" and M <= _autotune_max_m() and not torch.cuda.is_current_stream_capturing():
            cfg = _tune(key, cands, launch, packed)
        else:
            cfg = cands[0]
        try:
            launch(cfg)
        except _out_of_resources():  # the except expression is evaluated only when something was raised
            _launch_first_that_fits(key, cfg, [c for c in cands if c != cfg], launch)
    else:
        launch(cfg)
    return out.reshape(*lead, N)


@functools.cache
def _out_of_resources() -> type:
    from triton.runtime.errors import OutOfResources

    return OutOfResources


def _launch_first_that_fits(key, failed, cands, launch) -> None:
    """After tile ``failed`` did not fit in the GPU's shared memory, launch the first of ``cands``
    that does and remember it for ``key``. A tile's shared memory depends on the Triton version's
    pipelining; one that does not fit fails before it runs, so the next one may be tried (H200,
    run 9: a 3-bit GEMM tile at M = 48-64 asked 360 KB)."""
    for cfg in cands:
        try:
            launch(cfg)
        except _out_of_resources():
            continue
        _TUNED[key] = cfg
        return
    raise RuntimeError(f"no tile of the {key[-1]} kernel fits in this GPU's shared memory for N={key[1]}, "
                       f"K={key[2]}, bits={key[3]}, group={key[4]}, M<={key[5]}: tried {[failed] + list(cands)}")


def _launch_quantize(w, col_scale, bits, group, symmetric, nu, scale_dtype, lowrank, tile, dense_dtype=None,
                     dense_out=None):
    """quantize_kernel over W (N, K): into the planar layout, or (``dense_dtype``) dequantized into
    a dense (K, N) tensor (``dense_out`` if given). Returns (out, S, Z) (S, Z: None when dense)."""
    tk = _tk()
    if w.dim() != 2:
        raise ValueError(f"weight must be 2-D, got shape {tuple(w.shape)}")
    N, K = w.shape
    check_planar_shape((N, K), group)
    if nu <= 0:
        raise ValueError(f"expansion factor nu must be > 0, got {nu}")
    w = w.contiguous()
    G = K // group
    sl = _slices(bits, K)
    default = (QDQ_TILE if dense_dtype is not None else QUANTIZE_TILE if lowrank is not None
               else QUANTIZE_TILE_BY_BITS.get(bits, QUANTIZE_TILE))
    br, gt, warps = tile or (default if w.device.type == "cuda" else (8, 1, 1))
    gt = min(gt, _next_pow2(G))
    lr_b, lr_a = _lowrank_args(lowrank)
    if lr_b is not None:
        if lr_b.shape != (N, lr_a.shape[0]) or lr_a.shape[1] != K:
            raise ValueError(f"low-rank factors B {tuple(lr_b.shape)} and A {tuple(lr_a.shape)} do not fit a "
                             f"{N}x{K} weight")
        lr_a = lr_a.to(lr_b.dtype)  # tl.dot multiplies one dtype
        br, gt = max(br, 16), 1  # B A on tensor cores: one group a program, >= 16 rows
    ch = max(16 if lr_b is not None else 8, group * sl["W0"] // 32)  # W0 is the widest slice
    cs = None if col_scale is None else col_scale.to(torch.float32).contiguous()
    if dense_dtype is None:
        out = torch.empty((K * bits // 32, N), device=w.device, dtype=torch.int32)  # transposed: see layout.py
        scale = torch.empty((G, N), device=w.device, dtype=scale_dtype)
        zero = torch.empty((G, N), device=w.device, dtype=scale_dtype)
    else:
        # transposed: see _store_dense
        out = torch.empty((K, N), device=w.device, dtype=dense_dtype) if dense_out is None else dense_out
        scale = zero = None
    tk.quantize_kernel[(math.ceil(N / br), math.ceil(G / gt))](
        w, w if cs is None else cs, w if lr_b is None else lr_b, w if lr_a is None else lr_a, out,
        out if scale is None else scale, out if zero is None else zero,
        N, K, G, 0 if lr_a is None else lr_a.shape[0], sl["row1"], sl["row2"], (1 + nu) / 2, (1 - nu) / 2,
        BITS=bits, W0=sl["W0"], W1=sl["W1"], W2=sl["W2"], OFF1=sl["OFF1"], OFF2=sl["OFF2"], GROUP=group, GT=gt,
        BR=br, CH=ch, HAS_CS=cs is not None, HAS_LR=lr_b is not None,
        BRK=max(16, _next_pow2(0 if lr_a is None else lr_a.shape[0])),
        IEEE=lr_b is not None and lr_b.dtype == torch.float32, SYMMETRIC=symmetric, HAS_NU=nu != 1.0,
        PARAM_DTYPE=_tl_dtype(scale_dtype), PARAM_MIN=_PARAM_MIN[scale_dtype], DENSE=dense_dtype is not None,
        HELD=QUANTIZE_HELD, ASM=QDQ_FAST_DIV and not interpreting(), num_warps=warps)
    return out, scale, zero


def quantize_pack(w, col_scale, bits, group, symmetric=False, nu=1.0, scale_dtype=torch.float16,
                  lowrank=None, tile: tuple[int, int, int] | None = None) -> PlanarPackedWeight:
    """TTQ's online step, one Triton pass: Q[(w - B A) * col_scale] straight into the planar layout
    (``lowrank`` = (B, A), or None). ``tile`` = (rows, groups, warps) of a program overrides
    QUANTIZE_TILE / QUANTIZE_TILE_BY_BITS (sweeps)."""
    data, scale, zero = _launch_quantize(w, col_scale, bits, group, symmetric, nu, scale_dtype, lowrank, tile)
    return PlanarPackedWeight(data, scale.t(), zero.t(), bits, group, tuple(w.shape))


def qdq_weight(w, col_scale, bits, group, symmetric=False, nu=1.0, scale_dtype=torch.float16, lowrank=None,
               dtype: torch.dtype = torch.bfloat16, tile: tuple[int, int, int] | None = None,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """Q[(w - B A)·cs] / cs + B A as a dense (N, K) ``dtype`` tensor, in one pass over w: what
    quantize_pack then dequantizing gives, without the packed codes in between. It is the
    transposed view of a (K, N) tensor (written so for speed; into ``out`` (K, N) if given); F.linear
    takes it without a copy."""
    return _launch_quantize(w, col_scale, bits, group, symmetric, nu, scale_dtype, lowrank, tile, dtype, out)[0].t()


def online_matmul(x, w, col_scale, lowrank, bias, bits, group, symmetric=False, nu=1.0,
                  scale_dtype=torch.float16) -> torch.Tensor:
    """y = (x / cs) Q[(W - B A) cs]ᵀ + (x Aᵀ) Bᵀ + bias, quantizing W for this call only.

    Where ``quant_matmul`` would dequantize for cuBLAS anyway (``path_for`` = dequant: large M),
    the quantize pass writes the dequantized weight itself (``qdq_weight``, B A folded in) and one
    cuBLAS call does the rest: no packed codes written and read back, no separate low-rank
    products. Elsewhere the codes are packed and the low-bit kernels run."""
    N, K = w.shape
    if x.shape[-1] != K:
        raise ValueError(f"input has {x.shape[-1]} features, the weight expects {K}")
    if path_for(x.numel() // max(K, 1), N, K, bits, lowrank is not None, online=True) == "dequant":
        w_eff = qdq_weight(w, col_scale, bits, group, symmetric, nu, scale_dtype, lowrank, dtype=x.dtype)
        return F.linear(x, w_eff, None if bias is None else bias.to(x.dtype))
    packed = quantize_pack(w, col_scale, bits, group, symmetric, nu, scale_dtype, lowrank)
    return quant_matmul(x, packed, col_scale, lowrank, bias)


_STAT_MODE = {2.0: 0, math.inf: 1}
# Up to here column_scale's last program keeps every channel's statistic in registers and finishes alone;
# beyond it a second launch spreads the float64 log/exp over many programs (K = 16384: ~40 µs alone, H200)
SCALE_HELD_MAX_K = 4096
# Channels a step of the finish kernel's last program, which writes s = u·g for all K alone: 8192 against 1024
# took K = 16384 from 17.0 to 14.9 µs at 1 token and 21.4 to 19.2 at 800, the same bits (H200, session 13,
# scripts/column_scale_tiles.py, docs/kernels/h200_run13_column_scale_tiles.json)
SCALE_TAIL_CHUNK = 8192
# (device, λ, α) -> float64 [1-λ, λ, ½α, 1e-12], never freed: graphs keep its address
_SCALE_PARAMS: dict[tuple, torch.Tensor] = {}


def column_scale(x: torch.Tensor, p: float = 2.0, lam: float = 0.4, alpha: float = 0.5) -> torch.Tensor:
    """s = D^½ of activation x (..., K), fp32: ``quant.scaling.column_scale(channel_stat(x, p), lam, alpha)``
    in one launch (``column_scale_kernel``; two above SCALE_HELD_MAX_K channels) instead of ~15 small
    torch ops. The sums run in another order than torch's, so s can differ from the reference in the
    last bits."""
    tk = _tk()
    check_scale_params(lam, alpha)
    if not p > 0:
        raise ValueError(f"the statistic's p must be > 0, got {p}")
    K = x.shape[-1]
    x2 = x.detach().reshape(-1, K).contiguous()
    M = x2.shape[0]
    if M == 0:
        raise ValueError("cannot compute a column scale from an empty activation")
    mode = _STAT_MODE.get(float(p), 2)
    dev = x.device
    key = (dev, float(lam), float(alpha))
    if key not in _SCALE_PARAMS:
        _SCALE_PARAMS[key] = torch.tensor([1.0 - lam, lam, 0.5 * alpha, 1e-12], dtype=torch.float64, device=dev)
    held = K <= SCALE_HELD_MAX_K
    stat = torch.empty(K, device=dev, dtype=torch.float32)
    # mean(c), max c_λ for the second launch (wide layers only; a held launch never reads it)
    glob = stat if held else torch.empty(2, device=dev, dtype=torch.float64)
    s = torch.empty(K, device=dev, dtype=torch.float32)
    bk = 64 if K >= 64 * _num_sms(dev) else 32
    args = (float(p) if mode == 2 else 2.0, 2.0 / p if mode == 2 else 1.0)
    tk.column_scale_kernel[(math.ceil(K / bk),)](
        x2, stat, glob, s, _SCALE_PARAMS[key], _counter(dev, "column_scale"), M, K, *args,
        MODE=mode, BM=64, BK=bk, FK=_next_pow2(K) if held else 1024, HELD=held, num_warps=8)
    if not held:  # log and exp of every channel spread over many programs (see column_scale_kernel)
        fbk = 256
        u = torch.empty(K, device=dev, dtype=torch.float64)
        parts = torch.empty(math.ceil(K / fbk), device=dev, dtype=torch.float64)
        tk.column_scale_finish_kernel[(parts.numel(),)](
            stat, glob, _SCALE_PARAMS[key], u, parts, _counter(dev, "column_scale_finish"), s, M, K, args[1],
            MODE=mode, BK=fbk, FK=1024, TK=SCALE_TAIL_CHUNK, num_warps=4)
    return s


def _counter(device: torch.device, name: str) -> torch.Tensor:
    """A zeroed int32 counter for kernels whose last program resets it (``_stream_buffer``)."""
    return _stream_buffer(device, (name,), lambda: torch.zeros(1, device=device, dtype=torch.int32))
