"""Did a kernel edit change the machine code? Records the launches the Triton backend makes for Gemma-2B's
layers at 1-64 tokens (its own dispatch and tiles, on an H100's SM count), compiles each as Triton's JIT would
for sm_90 (no GPU needed: Triton's bundled ptxas), here and at another git revision, and prints per launch the
registers, the SASS instruction count and whether the SASS is identical.

Why: a small edit of the weight-as-left-operand kernel (run 15's reordered S/Z loads) moved Triton's schedule
and cost 35% on the GPU; identical SASS rules that out before any device time is spent. Different SASS is
not a verdict, only a reason to time it (scripts/wa_ab.py, python -m vla_ttq.kernels.bench_compare).
The schedule depends on the Triton version: put the GPU machine's first on the path (run 16: Triton 3.6 showed
a register change that this machine's 3.9 did not), e.g. pip install --no-deps --target /tmp/t36 triton==3.6.0.

    python scripts/sass_diff.py --base HEAD~1       # this tree against HEAD~1 (a temporary git worktree)
    PYTHONPATH=/tmp/t36 python scripts/sass_diff.py --base HEAD~1   # under Triton 3.6, as on the GPU machine
    python scripts/sass_diff.py --json out.json     # just this tree's figures
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile

import torch
from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# the layers whose launches are compiled: π0.5's Gemma-2B (N, K) and the token counts its kernels switch at
LAYERS = {"gate/up": (16384, 2048), "down": (2048, 16384), "q/o": (2048, 2048), "k/v": (256, 2048)}
TOKENS = (1, 2, 3, 4, 8, 16, 24, 32, 48, 64)
SMS = 132  # an H100's: the tile heuristics read the SM count


class _Recorder:
    """Stands in for a @triton.jit kernel: ``kernel[grid](*args, **kw)`` records the launch instead of running."""

    def __init__(self, fn, launches: list):
        self.fn, self.launches = fn, launches

    def __getitem__(self, grid):
        return lambda *args, **kw: self.launches.append((self.fn, args, kw))


def launches(layers=LAYERS, tokens=TOKENS, bits_list=(2, 4)) -> dict:
    """{name: (kernel name, signature, constexprs, attrs, options)} of every distinct launch that ``quant_matmul``,
    ``quantize_pack`` and TTQ's per-call step (``column_scale``, ``online_matmul``) make for these layers and token
    counts, as the backend dispatches them on a GPU of SMS SMs (heuristic tiles, bf16 activations, a column scale),
    recorded instead of run."""
    from vla_ttq.kernels import reference, triton_backend as tb
    from vla_ttq.kernels.bench import backend_set
    tk = tb._tk()
    names = [n for n, v in vars(tk).items() if hasattr(v, "arg_names") and hasattr(v, "fn")]
    recorded, saved = [], {n: getattr(tk, n) for n in names}
    out = {}
    try:
        for n in names:
            setattr(tk, n, _Recorder(saved[n], recorded))
        with backend_set(_num_sms=lambda device: SMS):
            for (layer, (N, K)), bits in itertools.product(layers.items(), bits_list):
                w = torch.randn(N, K)
                cs = torch.rand(K) + 0.5
                packed = tb.prepare(reference.quantize_pack(w, cs, bits, 64))
                calls = [(f"quantize {layer} W{bits}", lambda: tb.quantize_pack(w, cs, bits, 64))]
                for m in tokens:
                    x = torch.randn(m, K, dtype=torch.bfloat16)
                    calls += [(f"{layer} W{bits} M={m}", lambda x=x: tb.quant_matmul(x, packed, cs)),
                              (f"TTQ step {layer} W{bits} M={m}", lambda x=x: tb.online_matmul(
                                  x, w.to(torch.bfloat16), tb.column_scale(x), None, None, bits, 64))]
                for name, call in calls:
                    recorded.clear()
                    call()
                    for fn, args, kw in recorded:
                        compiled_as = _specialize(fn, args, kw)
                        if compiled_as not in out.values():  # by value: the same kernel, specialised alike
                            out[f"{name}: {fn.__name__}"] = compiled_as
    finally:
        for n in names:
            setattr(tk, n, saved[n])
    return out


def _target():
    from triton.backends.compiler import GPUTarget
    return GPUTarget("cuda", 90, 32)


def _specialize(fn, args, kw) -> tuple:
    """What Triton's JIT would compile for this launch on an sm_90 GPU: (kernel name, signature, constexprs,
    attrs, options), from the JIT's own binder (16-byte divisibility of pointers and ints, int widths, constexprs)."""
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature
    backend = make_backend(_target())
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kw)
    options, signature, constexprs, attrs = fn._pack_args(backend, kw, bound, specialization, options)
    return fn.__name__, signature, constexprs, attrs, dict(options.__dict__)


def compile_sm90(fn, launch: tuple):
    """The compiled kernel of one recorded launch (``_specialize``) for sm_90: Triton's own ptxas, no GPU."""
    import triton
    from triton.compiler import ASTSource
    _, signature, constexprs, attrs, options = launch
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=_target(), options=options)


def sass_of(cubin: bytes) -> tuple[list[str], int]:
    """(instructions without addresses, registers) of a cubin, read with Triton's bundled cuobjdump."""
    import triton
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "-sass", "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    instructions = [m.group(1) for m in re.finditer(r"/\*[0-9a-f]{4,}\*/\s+([^;]*);", text)]
    return instructions, int(re.search(r"REG:(\d+)", text).group(1))


def measure(tree: str, layers=LAYERS, tokens=TOKENS, bits=(2, 4)) -> dict:
    """{launch name: {regs, instructions, sha}} for the kernels of the checkout ``tree``."""
    sys.path.insert(0, tree)
    from vla_ttq.kernels import triton_backend as tb
    if not os.path.abspath(tb.__file__).startswith(os.path.abspath(tree) + os.sep):
        raise RuntimeError(f"imported {tb.__file__}, not the kernels of {tree}")
    tk = tb._tk()
    figures = {}
    for name, launch in tqdm(launches(layers, tokens, bits).items(), desc="compiling for sm_90"):
        instructions, regs = sass_of(compile_sm90(getattr(tk, launch[0]), launch).asm["cubin"])
        figures[name] = {"regs": regs, "instructions": len(instructions),
                         "sha": hashlib.sha1("\n".join(instructions).encode()).hexdigest()[:12]}
    return figures


def measure_at(rev: str, selection: list[str]) -> dict:
    """``measure()`` run on a temporary git worktree of ``rev`` (its own kernels, this script)."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = os.path.join(tmp, "tree")
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", "-q", tree, rev], check=True)
        try:
            out = os.path.join(tmp, "figures.json")
            subprocess.run([sys.executable, os.path.abspath(__file__), "--tree", tree, "--json", out, "--quiet",
                            *selection], check=True)
            with open(out) as f:
                return json.load(f)
        finally:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", tree], check=True)


def _layer(text: str) -> tuple[str, tuple[int, int]]:
    name, _, shape = text.partition("=")
    try:
        n, k = (int(v) for v in shape.split(","))
    except ValueError:
        raise ValueError(f"--layer takes NAME=N,K (two integers), got {text!r}") from None
    return name, (n, k)


def table(now: dict, base: dict | None, rev: str | None) -> str:
    head = "| launch | regs | instructions |" + (f" same SASS as {rev} |" if base else "")
    rows = [head, "|---|---|---|" + ("---|" if base else "")]
    for name, f in now.items():
        row = f"| {name} | {f['regs']} | {f['instructions']} |"
        if base:
            b = base.get(name)
            row = (f"| {name} | {b['regs']} → {f['regs']} | {b['instructions']} → {f['instructions']} | "
                   f"{'yes' if b['sha'] == f['sha'] else '**no**'} |") if b else row + " not there |"
        rows.append(row)
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", help="git revision to compare against (compiled from a temporary worktree)")
    ap.add_argument("--json", help="write this tree's figures here")
    ap.add_argument("--quiet", action="store_true", help="no table (used for the base revision's run)")
    ap.add_argument("--tree", default=ROOT, help="the checkout whose kernels to compile (default: this script's)")
    ap.add_argument("--layer", action="append", metavar="NAME=N,K",
                    help="a layer of N outputs and K inputs (repeatable; default: Gemma-2B's four shapes)")
    ap.add_argument("--tokens", default=",".join(map(str, TOKENS)), help="token counts, comma-separated")
    ap.add_argument("--bits", default="2,4", help="code widths, comma-separated")
    args = ap.parse_args(argv)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the GPU machine's Triton fuses; silences 3.9's warning
    try:
        layers = dict(_layer(v) for v in args.layer) if args.layer else LAYERS
        tokens, bits = (tuple(int(v) for v in a.split(",")) for a in (args.tokens, args.bits))
    except ValueError as exc:
        ap.error(str(exc))
    if args.base and subprocess.run(["git", "-C", ROOT, "rev-parse", "--verify", "-q", f"{args.base}^{{commit}}"],
                                    capture_output=True).returncode != 0:
        ap.error(f"--base {args.base!r} is not a commit of {ROOT}")
    selection = ["--tokens", args.tokens, "--bits", args.bits] + [f"--layer={v}" for v in args.layer or []]
    now = measure(args.tree, layers, tokens, bits)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(now, f, indent=1)
    base = measure_at(args.base, selection) if args.base else None
    if not args.quiet:
        print(table(now, base, args.base))
    return 0


if __name__ == "__main__":
    sys.exit(main())
