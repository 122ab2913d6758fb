"""Per-layer benchmark of the low-bit kernels against bf16 cuBLAS and torch's int4 (GPU only).

    python -m vla_ttq.kernels.bench --out results/kernels [--sets gemma2b,gemma300m,qwen3] [--sweep]

Times come from CUDA-graph replays of many calls that rotate over enough copies of the weights to
overflow L2 (so weights stream from HBM, as in a model), median of several replays. Beside each
time: the roofline floor = bytes that must move / measured copy bandwidth. Every timed variant is
first checked against a float64 reference on the same data. Writes ``kernels_bench.json`` and
``kernels_bench.md`` and prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import reference, torch_int4, triton_backend

# (set, layer, N = out features, K = in features)
SHAPES = {
    "gemma2b": [("q/o", 2048, 2048), ("k/v", 256, 2048), ("gate/up", 16384, 2048), ("down", 2048, 16384)],
    "gemma300m": [("q", 2048, 1024), ("k/v", 256, 1024), ("o", 1024, 2048), ("gate/up", 4096, 1024),
                  ("down", 1024, 4096)],
    # layers that read the same input, as one launch would run them: q+k+v, gate+up (what fusing
    # them in the model would give; FastSampler fuses them only for dense weights)
    "gemma2b_fused": [("q+k+v", 2560, 2048), ("gate+up", 32768, 2048)],
    "gemma300m_fused": [("q+k+v", 2560, 1024), ("gate+up", 8192, 1024)],
    # q_proj of the paper's Tables 4-8: heads*128 x hidden (Table 15)
    "qwen3": [("0.6B q", 2048, 1024), ("1.7B q", 2048, 2048), ("4B q", 4096, 2560), ("8B q", 4096, 4096),
              ("14B q", 5120, 5120), ("32B q", 8192, 5120)],
}
RANK = 16
DEV = "cuda"


def empty_kernel_us() -> float:
    """One launch of a kernel that writes one value, in the same graph-replay timing: the fixed
    cost every per-layer kernel pays on this machine, whatever its bytes."""
    import triton
    import triton.language as tl

    @triton.jit
    def _one(p):
        tl.store(p, 1.0)

    buf = torch.zeros(1, device="cuda")
    return graph_time_us([lambda: _one[(1,)](buf)])


def measure_bandwidth() -> float:
    """Device-to-device copy of 1 GiB: (bytes read + bytes written) / time, in bytes/s."""
    n = 1 << 29
    a = torch.empty(n, dtype=torch.int16, device="cuda").random_()
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    ts = []
    for _ in range(10):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        e.synchronize()
        ts.append(s.elapsed_time(e) * 1e-3)
    del a, b
    return 2 * n * 2 / statistics.median(ts)


def graph_time_us(fns: list, min_calls: int = 64) -> float:
    """Median time of one call: a CUDA graph of >= min_calls calls cycling through ``fns``."""
    for f in fns:  # compile, tune, allocate outside the graph
        f()
    torch.cuda.synchronize()
    reps = max(1, math.ceil(min_calls / len(fns)))
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for f in fns:
            f()
    torch.cuda.current_stream().wait_stream(stream)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            for f in fns:
                f()
    for _ in range(2):
        g.replay()
    torch.cuda.synchronize()
    ts = []
    for _ in range(7):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        g.replay()
        e.record()
        e.synchronize()
        ts.append(s.elapsed_time(e) * 1e3)
    del g
    return statistics.median(ts) / (reps * len(fns))


def n_copies(weight_bytes: int, l2_bytes: int) -> int:
    return int(min(32, max(1, math.ceil(3 * l2_bytes / max(weight_bytes, 1)))))


def rotating_copies(first, nbytes: int, l2_bytes: int) -> list:
    """``first`` and enough clones of it (``nbytes`` each) that timing calls cycling through them
    read from memory, not from L2."""
    return [first] + [first.clone() for _ in range(n_copies(nbytes, l2_bytes) - 1)]


def script_layers(layers: dict, bits_list, l2: int, device: str = DEV, group: int = 64, seed=None,
                  cs_span: float = 1.0):
    """The layer setup the GPU scripts in scripts/ share: for each (N, K) a generator seeded with
    ``seed(N, K)`` (default N + K), a bf16 weight (std 0.02), a column scale in [0.5, 0.5 + cs_span)
    and rotating bf16 copies; then for each width the weight packed by the Triton backend with its
    rotating copies. Yields (name, N, K, bits, generator, w, cs, w_copies, packed, packed_copies).
    (The seed and span let run 9's scripts reproduce the weights their recorded data used.)"""
    for name, (N, K) in layers.items():
        g = torch.Generator(device=device).manual_seed(seed(N, K) if seed else N + K)
        w = (torch.randn(N, K, device=device, generator=g) * 0.02).to(torch.bfloat16)
        cs = torch.rand(K, device=device, generator=g) * cs_span + 0.5  # x 1.0 is exact: the same values
        w_copies = rotating_copies(w, N * K * 2, l2)
        for bits in bits_list:
            packed = triton_backend.quantize_pack(w, cs, bits, group)
            yield name, N, K, bits, g, w, cs, w_copies, packed, rotating_copies(packed, N * K * bits // 8, l2)


@contextlib.contextmanager
def backend_set(**values):
    """triton_backend's module attributes (rule constants, switches) set to ``values`` inside the block and
    restored to what they were after it, however it ends: the A/B scripts' way to time a rule or a feature on
    and off without leaving either behind."""
    missing = [k for k in values if not hasattr(triton_backend, k)]
    if missing:
        raise AttributeError(f"triton_backend has no {', '.join(missing)}")
    before = {k: getattr(triton_backend, k) for k in values}
    try:
        for k, v in values.items():
            setattr(triton_backend, k, v)
        yield
    finally:
        for k, v in before.items():
            setattr(triton_backend, k, v)


def script_token_cases(layers: dict, bits_list, ms):
    """``script_layers`` for each token count in ``ms`` too: the cases the token-count sweeps in scripts/ time.
    Yields (row, x, cs, ref, out, packed_copies): row begun with the case (layer, N, K, M, bits), the path
    ``path_for`` picks and bf16 cuBLAS's time on the shape (bf16_us); x bf16 from the layer's generator, ref x
    times the packed weight in float64, out an empty bf16 output."""
    for name, N, K, bits, g, _w, cs, w_copies, packed, copies in script_layers(layers, bits_list, l2_bytes()):
        for M in ms:
            x = torch.randn(M, K, device=DEV, generator=g).to(torch.bfloat16)
            ref = x.double() @ reference.effective_weight(packed, cs).double().t()
            out = torch.empty(M, N, device=DEV, dtype=torch.bfloat16)
            row = dict(layer=name, N=N, K=K, M=M, bits=bits, path=triton_backend.path_for(M, N, K, bits),
                       bf16_us=graph_time_us([lambda c=c: F.linear(x, c) for c in w_copies]))
            yield row, x, cs, ref, out, copies


def checked_time(run, copies: list, ref: torch.Tensor, tol: float = 1e-2, timer=None) -> dict:
    """What the GPU scripts record for one variant: ``run(copies[0])`` (it returns the output)
    checked against the float64 ``ref`` first, then timed over all copies (``graph_time_us``, or
    ``timer``). A variant that fails to compile or launch, or is wrong, is a finding, not the end
    of the run: {"us": inf, "error": ...}; else {"us": ..., "err": relative error}."""
    try:
        err = rel_err(run(copies[0]), ref)
        if not err <= tol:  # NaN fails too
            raise AssertionError(f"wrong result: {err:.2e}")
        return dict(us=(timer or graph_time_us)([lambda c=c: run(c) for c in copies]), err=err)
    except Exception as e:
        return dict(us=float("inf"), error=f"{type(e).__name__}: {e}"[:300])


def script_args(doc: str | None = None, check: str | None = None, argv=None) -> argparse.Namespace:
    """Arguments of the GPU scripts in scripts/: ``--out DIR`` (created) and, with ``check`` (its
    help text), a ``--check`` flag for a small correctness-only run."""
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--out", type=Path, required=True, help="folder for the JSON results (created)")
    if check:
        ap.add_argument("--check", action="store_true", help=check)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def l2_bytes() -> int:
    return torch.cuda.get_device_properties(0).L2_cache_size


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref).norm() / ref.norm())


def bench_shape(set_name, layer, N, K, ms, group, bw, l2, results, check=True):
    dev = DEV
    g = torch.Generator(device=dev).manual_seed(N * 7 + K)
    w = (torch.randn(N, K, device=dev, generator=g) * 0.02).to(torch.bfloat16)
    cs = torch.rand(K, device=dev, generator=g) * 1.5 + 0.5
    lr_b = (torch.randn(N, RANK, device=dev, generator=g) * 0.02).to(torch.bfloat16)
    lr_a = (torch.randn(RANK, K, device=dev, generator=g) * 0.02).to(torch.bfloat16)
    G = K // group
    nbytes = {"bf16": 2 * N * K, "int4": N * K // 2 + 4 * N * G, "W4": N * K // 2 + 4 * N * G + 4 * K,
              "W2": N * K // 4 + 4 * N * G + 4 * K}
    packed = {b: triton_backend.quantize_pack(w, cs, b, group) for b in (4, 2)}
    w_copies = rotating_copies(w, nbytes["bf16"], l2)
    pk_copies = {b: rotating_copies(packed[b], nbytes[f"W{b}"], l2)
                 for b in (4, 2)}
    i4 = torch_int4.prepare(reference.quantize_pack(w, None, 4, group))
    i4_copies = [i4] + [torch_int4.Int4PackedWeight(i4.data, i4.scale, i4.zero, 4, group, i4.shape, i4.int4pack.clone(),
                                                    i4.scales_and_zeros.clone())
                        for _ in range(n_copies(nbytes["int4"], l2) - 1)]
    row = dict(set=set_name, layer=layer, N=N, K=K, group=group)
    # online quantize: M-independent, read bf16 W once, write codes + S, Z
    for b in (4, 2):
        t = graph_time_us([lambda wc=wc: triton_backend.quantize_pack(wc, cs, b, group) for wc in w_copies], 16)
        qbytes = 2 * N * K + N * K * b // 8 + 4 * N * G + 4 * K
        results["quantize"].append(dict(row, bits=b, us=t, floor_us=qbytes / bw * 1e6,
                                        target_us=2 * (2 * N * K) / bw * 1e6))
    for M in ms:
        x = (torch.randn(M, K, device=dev, generator=g)).to(torch.bfloat16)
        io = 2 * M * K + 2 * M * N
        entry = dict(row, M=M)
        variants = {
            "bf16": ([lambda wc=wc: F.linear(x, wc) for wc in w_copies], nbytes["bf16"] + io, None),
            "int4": ([lambda p=p: torch.ops.aten._weight_int4pack_mm(x, p.int4pack, group, p.scales_and_zeros)
                      for p in i4_copies], nbytes["int4"] + io,
                     lambda: (torch_int4.quant_matmul(x, i4), reference.quant_matmul(x.double(), i4))),
        }
        for b in (4, 2):
            for r in (0, RANK):
                lr = (lr_b, lr_a) if r else None
                extra = 2 * RANK * (N + K) if r else 0
                variants[f"W{b} r{r}"] = (
                    [lambda p=p, lr=lr: triton_backend.quant_matmul(x, p, cs, lr) for p in pk_copies[b]],
                    nbytes[f"W{b}"] + io + extra,
                    lambda b=b, lr=lr: (triton_backend.quant_matmul(x, packed[b], cs, lr),
                                        reference.quant_matmul(x.double(), packed[b], cs.double(),
                                                               None if lr is None else (lr[0].double(), lr[1].double()))))
        # TTQ's whole per-call step (s from x, quantize W, multiply), as TTQLinear runs it per call
        s_x = triton_backend.column_scale(x)
        for b in (4, 2):
            for r in (0, RANK):
                lr = (lr_b, lr_a) if r else None
                extra = 2 * RANK * (N + K) if r else 0
                variants[f"TTQ W{b} r{r}"] = (
                    [lambda wc=wc, b=b, lr=lr: triton_backend.online_matmul(
                        x, wc, triton_backend.column_scale(x), lr, None, b, group) for wc in w_copies],
                    nbytes["bf16"] + io + extra,
                    lambda b=b, lr=lr: (triton_backend.online_matmul(x, w, s_x, lr, None, b, group), ttq_reference(
                        x, w, s_x, lr, b, group)))
        other = None
        if M > 1:  # also time the other route for this M, to place the thresholds
            mine = triton_backend.path_for(M, N, K, 4)
            other = {"gemv": "dot", "dot": "gemv" if M <= triton_backend.GEMV_MAX_M else "dequant",
                     "dequant": "dot"}[mine]
            if other == "dot" and M > 256:
                other = None
        if other:
            variants[f"W4 r0 {other}"] = ([lambda p=p: triton_backend.quant_matmul(x, p, cs, None, path=other)
                                           for p in pk_copies[4]], nbytes["W4"] + io, None)
        for name, (fns, nb, chk) in variants.items():
            if check and chk is not None:
                y, ref = chk()
                entry[f"{name} err"] = rel_err(y, ref)
            entry[f"{name} us"] = graph_time_us(fns)
            entry[f"{name} floor_us"] = nb / bw * 1e6
            if name.startswith("W") and name.count(" ") == 1:
                lowrank = name.endswith("r16")
                path = triton_backend.path_for(M, N, K, int(name[1]), lowrank)
                key = triton_backend.tune_key("cuda", N, K, int(name[1]), group, M, torch.bfloat16, lowrank, path)
                entry[f"{name} kernel"] = path
                cfg = triton_backend._TUNED.get(key)
                entry[f"{name} tuned"] = cfg is not None
                if cfg is None and path != "dequant":
                    cfg = triton_backend.tile_candidates(path, M, N, K, int(name[1]), group,
                                                         triton_backend._num_sms(torch.device("cuda")), lowrank)[0]
                    if path == "gemv" and M == 1:
                        cfg = ("gemv1",) + cfg
                entry[f"{name} cfg"] = cfg
        results["matmul"].append(entry)
        print(f"{set_name:9s} {layer:8s} M={M:<4d} " + " ".join(
            f"{v}={entry[f'{v} us']:.1f}" for v in variants) + " err " + " ".join(
            f"{entry[k]:.1e}" for k in entry if k.endswith(" err")), flush=True)
    del w_copies, pk_copies, i4_copies
    torch.cuda.empty_cache()


def ttq_reference(x, w, s, lowrank, bits, group) -> torch.Tensor:
    """float64 product of TTQ's per-call step with the reference quantization of (W - B A)·s."""
    packed = reference.quantize_pack(w, s, bits, group, lowrank=lowrank)
    lr = None if lowrank is None else (lowrank[0].double(), lowrank[1].double())
    return reference.quant_matmul(x.double(), packed, s.double(), lr)


def sweep(N, K, M, bits, group, bw, l2):
    """Time every tile candidate of one case (for choosing the heuristic). At M <= GEMV_MAX_M the
    one-launch GEMV's (BN, GPS, warps, stages, pairs) grid (several rows: pairs only), plus the
    tensor-core kernel's heuristic tile for comparison; else the tensor-core kernel's candidates."""
    dev = DEV
    w = (torch.randn(N, K, device=dev) * 0.02).to(torch.bfloat16)
    cs = torch.rand(K, device=dev) + 0.5
    packed = triton_backend.quantize_pack(w, cs, bits, group)
    copies = rotating_copies(packed, N * K * bits // 8, l2)
    x = torch.randn(M, K, device=dev).to(torch.bfloat16)
    out = torch.empty(M, N, device=dev, dtype=torch.bfloat16)
    sms = triton_backend._num_sms(torch.device(dev))
    cands = triton_backend._candidates(bits, group, K, N, M, sms)
    runs = []
    if M <= triton_backend.GEMV_MAX_M:
        G = K // group
        shapes = [(256, 2), (512, 4), (1024, 4), (1024, 8)]  # (BN, warps)
        grid = [(bn, gps, wp, st, pairs) for bn, wp in shapes for gps in (1, 2, 4, 8, 16) for st in (1, 2, 3)
                for pairs in ((True, False) if M == 1 else (True,)) if gps <= G
                and bn <= max(128, triton_backend._next_pow2(N))
                and math.ceil(N / bn) * math.ceil(G / gps) >= sms // 2]
        ref = reference.quant_matmul(x.double(), packed, cs.double())
        for cfg in grid:
            triton_backend._launch_gemv1(cfg, x, cs, packed, None, None, out)
            if rel_err(out, ref) > 1e-2:
                raise AssertionError(f"gemv1 {cfg} is wrong on N={N} K={K} W{bits}: {rel_err(out, ref):.2e}")
            runs.append((("gemv1",) + cfg, [lambda p=p, c=cfg: triton_backend._launch_gemv1(c, x, cs, p, None,
                                                                                          None, out)
                                             for p in copies]))
        cands = cands[:1]
    for cfg in cands:
        runs.append((cfg, [lambda p=p, c=cfg: triton_backend._launch(c, x, cs, p, None, None, out) for p in copies]))
    rows = []
    for cfg, fns in runs:
        rows.append(dict(N=N, K=K, M=M, bits=bits, group=group, cfg=cfg, us=graph_time_us(fns)))
    best = min(rows, key=lambda r: r["us"])
    print(f"sweep N={N} K={K} M={M} W{bits}: " + ", ".join(f"{r['cfg']}:{r['us']:.1f}" for r in rows)
          + f"  best {best['cfg']} {best['us']:.1f}", flush=True)
    return rows


def fmt(v, nd=1):
    return "—" if v is None else f"{v:.{nd}f}"


def markdown(res) -> str:
    d = res["device"]
    lines = [f"# Kernel benchmark ({d['name']}, torch {d['torch']}, triton {d['triton']})", "",
             f"Measured copy bandwidth {d['bandwidth_GBps']:.0f} GB/s (read+write); L2 {d['l2_MB']:.0f} MB; "
             f"an empty kernel costs {d.get('empty_kernel_us', float('nan')):.1f} µs in the same timing; "
             f"group {res['group']}, prescale x/s always on for ours; r16 adds the rank-16 low-rank term. "
             "Times in µs (CUDA-graph replay, weights rotating past L2); floor = bytes / bandwidth. "
             "int4 = torch `_weight_int4pack_mm` alone (no prescale).", "",
             "| set | layer | N×K | M | bf16 | int4 | W4 r0 (floor) | W4 r16 | W2 r0 (floor) | W2 r16 | "
             "W4 vs bf16 | W2 vs bf16 | W4 r0 k tok/s | path | W4 r0 other path |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in res["matmul"]:
        b = e["bf16 us"]
        lines.append(
            f"| {e['set']} | {e['layer']} | {e['N']}×{e['K']} | {e['M']} | {fmt(b)} | {fmt(e['int4 us'])} | "
            f"{fmt(e['W4 r0 us'])} ({fmt(e['W4 r0 floor_us'])}) | {fmt(e['W4 r16 us'])} | "
            f"{fmt(e['W2 r0 us'])} ({fmt(e['W2 r0 floor_us'])}) | {fmt(e['W2 r16 us'])} | "
            f"{b / e['W4 r0 us']:.2f}× | {b / e['W2 r0 us']:.2f}× | {e['M'] / e['W4 r0 us'] * 1e3:.0f} | "
            f"{e['W4 r0 kernel']} | " + " ".join(f"{k.split()[2]} {e[k]:.1f}" for k in e
                                                 if k.startswith("W4 r0 ") and k.endswith(" us") and k.count(" ") == 3)
            + " |")
    ttq = [e for e in res["matmul"] if "TTQ W4 r0 us" in e]
    if ttq:
        lines += ["", "TTQ's whole per-call step (`column_scale` + `online_matmul`: s from x, W quantized for "
                  "this call, then multiplied; what `TTQLinear` runs with recompute=\"call\"), µs; floor = reading "
                  "W in bf16 once:", "",
                  "| set | layer | N×K | M | bf16 | TTQ W4 r0 (floor) | W4 r16 | W2 r0 | W2 r16 | W4 r0 / bf16 |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for e in ttq:
            lines.append(f"| {e['set']} | {e['layer']} | {e['N']}×{e['K']} | {e['M']} | {fmt(e['bf16 us'])} | "
                         f"{fmt(e['TTQ W4 r0 us'])} ({fmt(e['TTQ W4 r0 floor_us'])}) | {fmt(e['TTQ W4 r16 us'])} | "
                         f"{fmt(e['TTQ W2 r0 us'])} | {fmt(e['TTQ W2 r16 us'])} | "
                         f"{e['TTQ W4 r0 us'] / e['bf16 us']:.2f}× |")
    lines += ["", "Online quantize alone (the packing pass of TTQ's step: W·s, group min/max, round, pack), µs:", "",
              "| set | layer | N×K | bits | time | floor | target (2 bf16 reads) | met |", "|---|---|---|---|---|---|---|---|"]
    for q in res["quantize"]:
        lines.append(f"| {q['set']} | {q['layer']} | {q['N']}×{q['K']} | {q['bits']} | {q['us']:.1f} | "
                     f"{q['floor_us']:.1f} | {q['target_us']:.1f} | {'yes' if q['us'] <= q['target_us'] else 'no'} |")
    lines += ["", "Targets (M=1, Gemma-2B gate/up and down):", ""] + [f"- {t}" for t in res["targets"]]
    if res.get("sweep"):
        lines += ["", "Tile sweep, µs: split-K kernel (BM, BN, GT, split, warps); one-launch M = 1 kernel "
                  "(gemv1, BN, groups per split, warps, pipeline stages, fp16x2 pairs)", ""]
        for r in res["sweep"]:
            lines.append(f"- N={r['N']} K={r['K']} M={r['M']} W{r['bits']}: {r['cfg']} {r['us']:.1f}")
    return "\n".join(lines) + "\n"


def targets(res) -> list[str]:
    out = []
    for e in res["matmul"]:
        if e["set"] != "gemma2b" or e["M"] != 1 or e["layer"] not in ("gate/up", "down"):
            continue
        for b, want in ((4, 3.0), (2, 5.0)):
            t, fl = e[f"W{b} r0 us"], e[f"W{b} r0 floor_us"]
            sp = e["bf16 us"] / t
            out.append(f"{e['layer']} W{b}: {sp:.2f}× faster than bf16 (target {want}×: "
                       f"{'met' if sp >= want else 'NOT met'}); {t / fl:.2f}× the floor (target 1.5×: "
                       f"{'met' if t <= 1.5 * fl else 'NOT met'})")
    for q in res["quantize"]:
        if q["set"] == "gemma2b" and q["layer"] in ("gate/up", "down"):
            out.append(f"quantize {q['layer']} W{q['bits']}: {q['us']:.1f} µs vs target {q['target_us']:.1f} µs "
                       f"({'met' if q['us'] <= q['target_us'] else 'NOT met'})")
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/kernels")
    ap.add_argument("--sets", default="gemma2b,gemma300m,qwen3", help=f"comma-separated, of {', '.join(SHAPES)}")
    ap.add_argument("--ms", default="1,16,64,800")
    ap.add_argument("--group", type=int, default=64)
    ap.add_argument("--sweep", default="", help='time every tile candidate of cases "N,K,M,bits;..." first')
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--budget-s", type=float, default=420.0, help="stop adding shapes after this many seconds")
    args = ap.parse_args(argv)
    unknown = [s for s in args.sets.split(",") if s not in SHAPES]
    if unknown:
        ap.error(f"unknown shape set(s) {', '.join(unknown)}; known: {', '.join(SHAPES)}")
    if not torch.cuda.is_available():
        raise SystemExit("the kernel benchmark needs a CUDA GPU")
    import triton

    t0 = time.time()
    props = torch.cuda.get_device_properties(0)
    bw = measure_bandwidth()
    l2 = getattr(props, "L2_cache_size", 50 << 20)
    res = dict(device=dict(name=props.name, sms=props.multi_processor_count, l2_MB=l2 / 2**20,
                           bandwidth_GBps=bw / 1e9, empty_kernel_us=empty_kernel_us(), torch=torch.__version__, triton=triton.__version__,
                           python=platform.python_version()),
               group=args.group, matmul=[], quantize=[], sweep=[], skipped=[])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ms = [int(m) for m in args.ms.split(",")]

    def save():
        res["targets"] = targets(res)
        res["elapsed_s"] = time.time() - t0
        (out / "kernels_bench.json").write_text(json.dumps(res, separators=(",", ":")) + "\n")
        (out / "kernels_bench.md").write_text(markdown(res))

    if args.sweep:
        for spec in args.sweep.split(";"):  # "N,K,M,bits;..."
            N, K, M, b = (int(v) for v in spec.split(","))
            res["sweep"] += sweep(N, K, M, b, args.group, bw, l2)
            save()
    for s in args.sets.split(","):
        for layer, N, K in SHAPES[s]:
            if time.time() - t0 > args.budget_s:
                res["skipped"].append(f"{s} {layer}")
                continue
            try:
                bench_shape(s, layer, N, K, ms, args.group, bw, l2, res, check=not args.no_check)
            except Exception as exc:  # keep what was measured; say what failed
                res["skipped"].append(f"{s} {layer}: {type(exc).__name__}: {exc}")
                print("FAILED", s, layer, repr(exc), flush=True)
            save()
    save()
    print(markdown(res))


if __name__ == "__main__":
    main()
