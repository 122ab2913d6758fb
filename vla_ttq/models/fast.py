"""A fast pi0.5 ``sample_actions``: static buffers, a static KV cache and one CUDA graph per call.

:class:`FastSampler` computes what :meth:`Pi05Model.sample_actions` computes (same operations in
the same dtypes; results equal within floating-point tolerance) but is built for one batch size
and input layout, so that the whole call (vision, prefix, ``num_steps`` denoising steps) has no
host synchronisation and can be captured once as a CUDA graph and replayed:

* inputs are copied into static buffers; masks, positions and RoPE tables are computed once per
  call on the device (not once per step or layer);
* the prefix writes its keys/values into a preallocated cache with room for the action chunk, so
  the denoising steps write their own keys/values in place instead of concatenating;
* the flow times are fixed, so the time MLP and every AdaRMS modulation (scale, shift, gate) are
  computed once when the sampler is built;
* the last language-model layer only computes its keys/values (its output is never used);
* both cameras go through SigLIP as one batch; grouped-query attention folds the query heads
  sharing a key head into one matrix product instead of repeating keys and values;
* with ``weights="dense"`` q/k/v and gate/up run as one matrix product each, and quantized layers
  run on their dequantized weights (``"packed"`` keeps only the packed codes on the device and
  dequantizes inside each call through :mod:`vla_ttq.kernels`).

TTQ layers that recompute D on every call re-quantize inside the graph (sync-free). TTQ layers
calibrated once per episode: when a layer has no calibration yet, the call runs the plain eager
path (which calibrates, layer by layer) and the sampler then refreshes its copies in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import kernels
from ..kernels.reference import effective_weight, lowrank_term
from ..quant.modules import QuantLinear, TTQLinear, dense_effective_weight
from .gemma import GemmaDecoderLayer, GemmaTransformer, rope_tables
from .pi05 import Pi05Model, additive_mask

WEIGHT_MODES = ("dense", "packed")


class _Linear:
    """One linear layer as the sampler runs it (``__call__(x)``), plus what it owns on the device."""

    def __init__(self, module: nn.Module, weights: str, dtype: torch.dtype, slots: int):
        self.module, self.weights, self.dtype = module, weights, dtype
        self.owned: list[torch.Tensor] = []  # tensors this wrapper allocated (weight copies)
        self.dense: list[torch.Tensor] | None = None  # per-slot dense effective weights (compute dtype)
        self.packed: list[tuple] | None = None  # per-slot (PackedWeight, col_scale) copies, graph-stable
        self._synced: list = []  # the module's cache entries the graph's copies were made from
        self.bias = getattr(module, "bias", None)
        if isinstance(module, nn.Linear):
            self.kind = "linear"
        elif isinstance(module, QuantLinear):
            self.kind = "quant"
            if weights == "dense":
                self.dense = [self._owned(dense_effective_weight(module).to(dtype))]
        elif isinstance(module, TTQLinear):
            self.kind = "ttq_call" if module.cfg.recompute == "call" else "ttq_episode"
            self.slots = slots if module.cfg.stats_scope == "sample" else 1
        else:
            raise TypeError(f"FastSampler cannot run a {type(module).__name__} as a linear layer")

    def _owned(self, t: torch.Tensor) -> torch.Tensor:
        self.owned.append(t)
        return t

    @property
    def dense_weight(self) -> torch.Tensor | None:
        """One dense weight usable for fusion (plain or static layers; episode TTQ with one slot)."""
        if self.kind == "linear":
            return self.module.weight
        if self.dense is not None and len(self.dense) == 1 and self.bias is None:
            return self.dense[0]
        return None

    # --- TTQ episode calibration ---------------------------------------------------------
    def needs_calibration(self) -> bool:
        return self.kind == "ttq_episode" and any(i not in self.module._cache for i in range(self.slots))

    def stale(self) -> bool:
        """The module holds another calibration than the graph's copy (e.g. a server swapped in
        another client's state with ``load_ttq_state``)."""
        cache = self.module._cache
        return self.kind == "ttq_episode" and any(cache.get(i) is not e for i, e in enumerate(self._synced))

    @torch.no_grad()
    def refresh(self) -> None:
        """Copy the module's current episode calibration into the graph's tensors (in place)."""
        if self.kind != "ttq_episode":
            return
        m = self.module
        entries = [m._cache[i] for i in range(self.slots)]
        if self.weights == "dense":
            new = [ttq_episode_dense(m, packed, s).to(self.dtype) for packed, s in entries]
            if self.dense is None:
                self.dense = [self._owned(w) for w in new]
            else:
                for dst, src in zip(self.dense, new):
                    dst.copy_(src)
        elif self.packed is None:
            self.packed = list(entries)  # first calibration: adopt its tensors
            m.cache_shared = True  # later refreshes overwrite them in place
        else:
            for (dst, ds), (src, ss) in zip(self.packed, entries):
                src_tensors = src.tensors()  # a backend's own layout too (torch_int4, Marlin), not just the codes
                for name, t in dst.tensors().items():
                    t.copy_(src_tensors[name])
                ds.copy_(ss)
            for i in range(self.slots):  # the module keeps the graph's tensors: no second copy
                m._cache[i] = self.packed[i]
        self._synced = [m._cache[i] for i in range(self.slots)]

    # --- forward ---------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        if self.kind == "linear":
            return F.linear(x, m.weight, m.bias)
        if self.kind == "quant":
            if self.dense is not None:
                return F.linear(x, self.dense[0], None if self.bias is None else self.bias.to(x.dtype))
            return m(x)
        if self.kind == "ttq_call":
            backend = kernels.select_backend(x.device, m.cfg.bits, m.cfg.group, m.cfg.backend)
            if backend != "reference":  # a kernel backend's one-pass quantize + low-bit matmul
                return m.per_slot(x, lambda xi, i: m._forward_one(xi, i, backend))
            return m.per_slot(x, lambda xi, _: ttq_call_forward(m, xi))
        if self.dense is not None:
            bias = None if self.bias is None else self.bias.to(x.dtype)
            return m.per_slot(x, lambda xi, i: F.linear(xi, self.dense[i], bias))
        if self.packed is None:
            raise RuntimeError(f"TTQ layer '{m.name}' has no episode calibration yet")
        backend = kernels.select_backend(x.device, m.cfg.bits, m.cfg.group, m.cfg.backend)
        return m.per_slot(x, lambda xi, i: kernels.quant_matmul(xi, self.packed[i][0], self.packed[i][1],
                                                                 m.lowrank, m.bias, backend=backend))


def ttq_episode_dense(module: TTQLinear, packed, col_scale: torch.Tensor) -> torch.Tensor:
    """Dense float32 weight of one episode calibration, the low-rank part folded in: BA + Q[(W-BA)s]/s."""
    w = effective_weight(packed, col_scale)
    if module.lr_b is not None:
        w = w + module.lr_b.float() @ module.lr_a.float()
    return w


def ttq_call_forward(module: TTQLinear, x: torch.Tensor) -> torch.Tensor:
    """TTQLinear's per-call forward without host synchronisation (graph-capturable).

    Same codes as ``kernels.quantize_pack`` + ``quant_matmul`` of the reference backend (packing
    is lossless, so it is skipped); the finiteness check (a sync) is left out."""
    w_hat, s = module.requantize(x)
    y = F.linear(x, (w_hat / s).to(x.dtype), module.bias)
    return y if module.lowrank is None else y + lowrank_term(x, module.lowrank)


@dataclass
class _LayerOps:
    qkv: "_Group"
    o: _Linear
    gate_up: "_Group"
    down: _Linear


class _Group:
    """Linears reading the same input (q/k/v, gate/up): one matrix product once all have dense weights.

    Plain ``nn.Linear`` parts are re-pointed at slices of the fused weight and dequantized copies
    are replaced by slices, so nothing is held twice; an episode re-calibration copies into the
    slices, which updates the fused weight in place (a captured graph stays valid).

    Per-call TTQ parts with one config run as one layer too (``ttq``): they see the same x, so the
    same s = D(x)^½, and groupwise quantization works row by row, so quantizing the stacked W gives
    each part's codes. One column scale, one quantize pass and one matrix product replace one per
    part; their weights become slices of the stacked one, and rank-r parts a block-diagonal B."""

    def __init__(self, parts: Sequence[_Linear], fuse: bool):
        self.parts, self.fuse = list(parts), fuse
        self.fused: torch.Tensor | None = None
        self.owned: torch.Tensor | None = None  # the fused tensor when the sampler (not a module) owns it
        self.ttq: tuple | None = None  # (first module, backend, stacked W, stacked (B, A) or None)
        self.try_fuse()
        if fuse and self.fused is None:
            self._try_fuse_ttq_call()

    def _try_fuse_ttq_call(self) -> None:
        mods = [p.module for p in self.parts]
        if len(mods) < 2 or any(p.kind != "ttq_call" for p in self.parts):
            return
        first = mods[0]
        if any(m.cfg != first.cfg or m.bias is not None or m.weight.dtype != first.weight.dtype
               or m.weight.device != first.weight.device for m in mods):
            return
        backend = kernels.select_backend(first.weight.device, first.cfg.bits, first.cfg.group, first.cfg.backend)
        if backend == "reference":  # ttq_call_forward (sync-free torch) stays per layer
            return
        self.sizes = [m.out_features for m in mods]
        stacked = torch.cat([m.weight.detach() for m in mods], dim=0)
        for m, piece in zip(mods, stacked.split(self.sizes, dim=0)):
            m.weight.data = piece
        lowrank = None
        if first.lowrank is not None:
            lowrank = (torch.block_diag(*[m.lr_b for m in mods]), torch.cat([m.lr_a for m in mods], dim=0))
        self.ttq = (first, backend, stacked, lowrank)

    def try_fuse(self) -> None:
        if not self.fuse or self.fused is not None:
            return
        weights = [p.dense_weight for p in self.parts]
        if any(w is None for w in weights) or len({w.dtype for w in weights}) != 1:
            return
        self.sizes = [w.shape[0] for w in weights]
        fused = torch.cat(weights, dim=0)
        for p, piece in zip(self.parts, fused.split(self.sizes, dim=0)):
            if p.kind == "linear":
                p.module.weight.data = piece
            else:
                p.dense, p.owned, self.owned = [piece], [], fused
        self.fused = fused

    def __call__(self, x: torch.Tensor):
        if self.fused is not None:
            return F.linear(x, self.fused).split(self.sizes, dim=-1)
        if self.ttq is not None:
            return self._ttq_call(x).split(self.sizes, dim=-1)
        return tuple(p(x) for p in self.parts)

    def _ttq_call(self, x: torch.Tensor) -> torch.Tensor:
        m, backend, weight, lowrank = self.ttq

        def one(xi: torch.Tensor, slot: int) -> torch.Tensor:
            s = m.calibration_scale(xi, backend)
            for p in self.parts[1:]:  # the others are calibrated by the same s
                p.module.calibrations += 1
            return kernels.online_matmul(xi, weight, s, lowrank, None, *m._qargs(), backend=backend)

        return m.per_slot(x, one)


# --- element-wise glue between the matrix products (optionally compiled into fused kernels) ----
def rms_gain(x, eps: float, gain):
    """Gemma RMSNorm: x / rms(x) * (1 + w), in float32, back to x's dtype."""
    return (F.rms_norm(x.float(), (x.shape[-1],), eps=eps) * gain).type_as(x)


def ada_rms(x, eps: float, one_plus_scale, shift):
    """AdaRMS with a precomputed modulation: x / rms(x) * (1 + scale) + shift."""
    return torch.addcmul(shift, F.rms_norm(x.float(), (x.shape[-1],), eps=eps), one_plus_scale).to(x.dtype)


def rope(x, cos, sin):
    """x·cos + rotate_half(x)·sin, with rotate_half(x)·sin = roll(x)·(signed sin)."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), sin)


def rope_into(x, cos, sin, out):
    torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), sin, out=out)


def gelu_mul(g, u):
    return F.gelu(g, approximate="tanh") * u


def gqa_attention(q, k, v, mask):
    """q (B,L,H,D) pre-scaled, k/v (B,T,KV,D), additive mask (B,1,L,T) -> (B,L,H*D). Query heads
    sharing a key head form one matrix product (no repeated keys, no copies when KV = 1); scores in
    the compute dtype, softmax in float32 (lerobot's eager attention)."""
    b, length, h, d = q.shape
    t, kv = k.shape[1], k.shape[2]
    rep = h // kv
    qg = q.view(b, length, kv, rep, d).permute(0, 2, 1, 3, 4).reshape(b, kv, length * rep, d)
    w = torch.matmul(qg, k.permute(0, 2, 3, 1))  # (B, KV, L*rep, T)
    w = w.view(b, kv, length, rep, t) + mask[:, :, :, None, :]
    p = torch.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
    out = torch.matmul(p.view(b, kv, length * rep, t), v.permute(0, 2, 1, 3))  # (B, KV, L*rep, D)
    return out.view(b, kv, length, rep, d).permute(0, 2, 1, 3, 4).reshape(b, length, h * d)


class Glue:
    """The glue functions, eager or through ``torch.compile`` (shapes are static, so each distinct
    shape compiles once; under a CUDA graph the compiled kernels replay without guard checks)."""

    def __init__(self, compile: bool = False):
        if compile:  # one entry per distinct shape (prefix / expert, q / k, each batch size): allow them all
            import torch._dynamo

            for knob in ("cache_size_limit", "recompile_limit"):
                if hasattr(torch._dynamo.config, knob):
                    setattr(torch._dynamo.config, knob, max(64, getattr(torch._dynamo.config, knob)))
        wrap = (lambda f: torch.compile(f, fullgraph=True, dynamic=False)) if compile else (lambda f: f)
        self.rms, self.ada, self.rope, self.gelu_mul, self.attention = (
            wrap(f) for f in (rms_gain, ada_rms, rope, gelu_mul, gqa_attention))
        self.rope_into = rope_into if not compile else self._rope_into_compiled

    def _rope_into_compiled(self, x, cos, sin, out):
        out.copy_(self.rope(x, cos, sin))


class FastSampler:
    """``sample_actions`` of one :class:`Pi05Model` for a fixed batch size, cameras and prompt length."""

    def __init__(self, model: Pi05Model, batch_size: int, num_cameras: int, num_tokens: int,
                 num_steps: int | None = None, weights: str = "dense", fuse: bool = True,
                 cuda_graph: bool | None = None, device: torch.device | str | None = None,
                 compile: bool = False):
        if weights not in WEIGHT_MODES:
            raise ValueError(f"weights must be one of {WEIGHT_MODES}, got {weights!r}")
        if batch_size < 1 or num_cameras < 1 or num_tokens < 1:
            raise ValueError(f"batch_size, num_cameras and num_tokens must be >= 1, got "
                             f"{batch_size}, {num_cameras}, {num_tokens}")
        if model.attn_impl != "eager":
            raise ValueError(f"FastSampler implements the eager attention, the model uses {model.attn_impl!r}")
        cfg = model.config
        self.model, self.cfg = model, cfg
        self.batch, self.num_cameras, self.num_tokens = batch_size, num_cameras, num_tokens
        self.num_steps = num_steps or cfg.num_inference_steps
        self.device = torch.device(device) if device is not None else model.action_in_proj.weight.device
        self.dtype = model.compute_dtype
        self.weights, self.fuse = weights, fuse
        self.glue = Glue(compile)
        self.cuda_graph = self.device.type == "cuda" if cuda_graph is None else cuda_graph
        if self.cuda_graph and self.device.type != "cuda":
            raise ValueError("cuda_graph=True needs a CUDA device")
        spec = model.language_model.spec
        self.prefix_len = num_cameras * cfg.num_image_tokens + num_tokens
        self.chunk = cfg.chunk_size
        dev, b = self.device, batch_size
        res = cfg.image_resolution
        # static inputs and output
        self.images = torch.zeros(num_cameras * b, 3, *res, device=dev)
        self.image_masks = torch.zeros(num_cameras, b, dtype=torch.bool, device=dev)
        self.tokens = torch.zeros(b, num_tokens, dtype=torch.long, device=dev)
        self.token_masks = torch.zeros(b, num_tokens, dtype=torch.bool, device=dev)
        self.noise = torch.zeros(b, self.chunk, cfg.max_action_dim, device=dev)
        self.out = torch.zeros_like(self.noise)
        # static KV cache: prefix then the action chunk
        total = self.prefix_len + self.chunk
        shape = (spec.depth, b, total, spec.num_kv_heads, spec.head_dim)
        self.k_cache = torch.zeros(shape, dtype=self.dtype, device=dev)
        self.v_cache = torch.zeros(shape, dtype=self.dtype, device=dev)
        self.embed_scale = torch.tensor(spec.width ** 0.5).to(model.language_model.embed_tokens.weight.dtype).to(dev)
        # (1 + w) of the language model's RMSNorms, in float32 (Gemma's gain)
        self.norm_gain = {id(n): 1.0 + n.weight.float() for layer in model.language_model.layers
                          for n in (layer.input_layernorm, layer.post_attention_layernorm)}
        self.linears: dict[str, _Linear] = {}
        self.groups: list[_Group] = []
        self.lm_ops = self._layer_ops(model.language_model, "lm")
        self.expert_ops = self._layer_ops(model.expert, "expert")
        self._episode_linears = [lin for lin in self.linears.values() if lin.kind == "ttq_episode"]
        if self.cuda_graph:
            checked = [n for n, lin in self.linears.items() if lin.kind == "ttq_call" and lin.module.cfg.check_finite]
            if checked:
                raise ValueError(f"{len(checked)} per-call TTQ layers (e.g. {checked[0]}) check their input for "
                                 "NaN/inf, "
                                 "a host synchronisation a CUDA graph cannot hold: set QuantConfig.check_finite=False "
                                 "or cuda_graph=False")
        self._time_conditioning()
        self.graph: torch.cuda.CUDAGraph | None = None
        self.calibrations = 0  # eager episode calibrations this sampler ran

    # --- build ---------------------------------------------------------------------------
    def _wrap(self, module: nn.Module, name: str) -> _Linear:
        lin = _Linear(module, self.weights, self.dtype, self.batch)
        self.linears[name] = lin
        return lin

    def _layer_ops(self, stack: GemmaTransformer, tag: str) -> list[_LayerOps]:
        ops = []
        for i, layer in enumerate(stack.layers):
            a, mlp = layer.self_attn, layer.mlp
            q, k, v = (self._wrap(getattr(a, n), f"{tag}.{i}.{n}") for n in ("q_proj", "k_proj", "v_proj"))
            g, u = self._wrap(mlp.gate_proj, f"{tag}.{i}.gate_proj"), self._wrap(mlp.up_proj, f"{tag}.{i}.up_proj")
            qkv, gate_up = _Group([q, k, v], self.fuse), _Group([g, u], self.fuse)
            self.groups += [qkv, gate_up]
            ops.append(_LayerOps(qkv, self._wrap(a.o_proj, f"{tag}.{i}.o_proj"), gate_up,
                                 self._wrap(mlp.down_proj, f"{tag}.{i}.down_proj")))
        return ops

    @torch.no_grad()
    def _time_conditioning(self) -> None:
        """Per step: the AdaRMS (scale, shift, gate) of every expert norm; the flow time is fixed."""
        m, b = self.model, self.batch
        dt = -1.0 / self.num_steps
        self.dt = dt
        self.mods: list[list[tuple]] = []
        norms = [n for layer in m.expert.layers for n in (layer.input_layernorm, layer.post_attention_layernorm)]
        norms.append(m.expert.norm)
        for step in range(self.num_steps):
            t = torch.full((b,), 1.0 + step * dt, dtype=torch.float32, device=self.device)
            cond = m.time_condition(t).unsqueeze(1)  # one condition per sequence
            per = []
            for n in norms:
                scale, shift, gate = n.modulation(cond)
                per.append(((1.0 + scale.float()).contiguous(), shift.float().contiguous(),
                            gate.to(self.dtype).contiguous()))
            self.mods.append(per)

    # --- the call --------------------------------------------------------------------------
    # Layouts: activations (B, L, heads, D) as the projections produce them; the KV cache is
    # (layer, B, T, kv_heads, D), so keys are written straight into it and nothing is transposed.
    def _rms(self, x, norm):
        return self.glue.rms(x, norm.eps, self.norm_gain[id(norm)])

    def _ada(self, x, eps, mod):
        return self.glue.ada(x, eps, mod[0], mod[1])

    def _rope_tables(self, positions, spec):
        """cos, signed sin (rotate_half folded in), both (B, L, 1, D); the query's copies also carry
        the attention scale 1/sqrt(D) (a power of two for pi0.5's D = 256, so exact)."""
        cos, sin = rope_tables(positions, spec.head_dim, spec.rope_theta, self.dtype,
                               self.model.rope_like_lerobot)
        half = spec.head_dim // 2
        sin = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)
        cos, sin = cos[:, :, None], sin[:, :, None]
        scale = spec.head_dim ** -0.5
        return cos, sin, cos * scale, sin * scale

    def _attention(self, q, k, v, mask):
        return self.glue.attention(q, k, v, mask)

    def _qkv(self, ops: _LayerOps, layer: GemmaDecoderLayer, x, rope, k_out, v_out):
        """q (roped, scaled); k (roped) and v written into the cache slices ``k_out``/``v_out``."""
        a = layer.self_attn
        b, length, _ = x.shape
        q, k, v = ops.qkv(x)
        cos, sin, cos_q, sin_q = rope
        q = self.glue.rope(q.view(b, length, -1, a.head_dim), cos_q, sin_q)
        self.glue.rope_into(k.view(b, length, -1, a.head_dim), cos, sin, k_out)
        v_out.copy_(v.view(b, length, -1, a.head_dim))
        return q

    def _mlp(self, ops: _LayerOps, x):
        g, u = ops.gate_up(x)
        return ops.down(self.glue.gelu_mul(g, u))

    def _prefix(self):
        m, b, n_img = self.model, self.batch, self.cfg.num_image_tokens
        feats = m.embed_image(self.images)  # all cameras as one batch: (cams*B, n_img, W) float32
        feats = feats.view(self.num_cameras, b, n_img, -1).transpose(0, 1).reshape(b, self.num_cameras * n_img, -1)
        lm = m.language_model
        tok = F.embedding(self.tokens, lm.embed_tokens.weight) * self.embed_scale
        h = torch.cat([feats.to(self.dtype), tok.to(self.dtype)], dim=1)
        pad = torch.cat([self.image_masks.t()[:, :, None].expand(b, self.num_cameras, n_img).reshape(b, -1),
                         self.token_masks], dim=1)
        mask = additive_mask(pad[:, None, :] & pad[:, :, None])
        rope = self._rope_tables(torch.cumsum(pad, dim=1) - 1, lm.spec)
        P = self.prefix_len
        last = len(lm.layers) - 1
        for i, (layer, ops) in enumerate(zip(lm.layers, self.lm_ops)):
            k_out, v_out = self.k_cache[i, :, :P], self.v_cache[i, :, :P]
            q = self._qkv(ops, layer, self._rms(h, layer.input_layernorm), rope, k_out, v_out)
            if i == last:  # the prefix output is never read: only the cache of the last layer matters
                break
            h = h + ops.o(self._attention(q, k_out, v_out, mask))
            h = h + self._mlp(ops, self._rms(h, layer.post_attention_layernorm))
        return pad

    def _denoise(self, pad):
        m, b, c, P = self.model, self.batch, self.chunk, self.prefix_len
        ex = m.expert
        chunk_block = torch.ones(b, c, c, dtype=torch.bool, device=pad.device)
        allowed = torch.cat([pad[:, None, :].expand(b, c, -1), chunk_block], dim=2)
        mask = additive_mask(allowed)
        rope = self._rope_tables(pad.sum(dim=-1, keepdim=True) + torch.arange(c, device=pad.device)[None], ex.spec)
        x_t = self.noise
        for step in range(self.num_steps):
            mods = self.mods[step]
            h = m.action_in_proj(x_t).to(self.dtype)
            for i, (layer, ops) in enumerate(zip(ex.layers, self.expert_ops)):
                mod_in, mod_post = mods[2 * i], mods[2 * i + 1]
                x = self._ada(h, layer.input_layernorm.eps, mod_in)
                q = self._qkv(ops, layer, x, rope, self.k_cache[i, :, P:], self.v_cache[i, :, P:])
                h = torch.addcmul(h, ops.o(self._attention(q, self.k_cache[i], self.v_cache[i], mask)), mod_in[2])
                x = self._ada(h, layer.post_attention_layernorm.eps, mod_post)
                h = torch.addcmul(h, self._mlp(ops, x), mod_post[2])
            h = self._ada(h, ex.norm.eps, mods[-1])
            x_t = torch.add(x_t, m.action_out_proj(h.to(torch.float32)), alpha=self.dt)
        return x_t

    @torch.no_grad()
    def _run(self) -> None:
        self.out.copy_(self._denoise(self._prefix()))

    # --- public ------------------------------------------------------------------------------
    def _load(self, images, image_masks, tokens, token_masks, noise) -> None:
        if len(images) != self.num_cameras or len(image_masks) != self.num_cameras:
            raise ValueError(f"sampler was built for {self.num_cameras} cameras, got {len(images)} images")
        if tuple(tokens.shape) != (self.batch, self.num_tokens):
            raise ValueError(f"tokens must have shape {(self.batch, self.num_tokens)}, got {tuple(tokens.shape)}")
        if tuple(noise.shape) != tuple(self.noise.shape):
            raise ValueError(f"noise must have shape {tuple(self.noise.shape)}, got {tuple(noise.shape)}")
        b = self.batch
        for c, (img, msk) in enumerate(zip(images, image_masks)):
            self.images[c * b:(c + 1) * b].copy_(img, non_blocking=True)
            self.image_masks[c].copy_(msk, non_blocking=True)
        self.tokens.copy_(tokens, non_blocking=True)
        self.token_masks.copy_(token_masks, non_blocking=True)
        self.noise.copy_(noise, non_blocking=True)

    def needs_calibration(self) -> bool:  # every call asks: only episode-TTQ layers can say yes
        return any(lin.needs_calibration() for lin in self._episode_linears)

    @torch.no_grad()
    def refresh(self) -> None:
        for lin in self.linears.values():
            lin.refresh()
        for group in self.groups:  # episode TTQ layers fuse once they have dense weights
            group.try_fuse()

    def capture(self, warmup: int = 2) -> None:
        """Record the call as a CUDA graph (after a warm-up on a side stream, as torch requires)."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                self._run()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._run()

    @torch.no_grad()
    def __call__(self, images: Sequence[torch.Tensor], image_masks: Sequence[torch.Tensor], tokens: torch.Tensor,
                 token_masks: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Same arguments and result as :meth:`Pi05Model.sample_actions` (a view of a static buffer)."""
        if self.needs_calibration():  # first call of a TTQ episode: the plain path calibrates
            out = self.model.sample_actions(list(images), list(image_masks), tokens, token_masks, noise,
                                            num_steps=self.num_steps)
            self.refresh()
            self.calibrations += 1
            self.out.copy_(out)
            return self.out
        if any(lin.stale() for lin in self._episode_linears):  # another calibration was loaded
            self.refresh()
        self._load(images, image_masks, tokens, token_masks, noise)
        if self.cuda_graph:
            if self.graph is None:
                self.capture()
            self.graph.replay()
        else:
            self._run()
        return self.out

    def owned_tensors(self) -> list[torch.Tensor]:
        """Weight copies this sampler allocated (dequantized or fused weights), for memory accounting."""
        return [t for lin in self.linears.values() for t in lin.owned] + [g.owned for g in self.groups
                                                                             if g.owned is not None]


__all__ = ["FastSampler", "Glue", "WEIGHT_MODES", "ttq_call_forward", "ttq_episode_dense"]
