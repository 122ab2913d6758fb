"""Gemma blocks as pi0.5 uses them: (adaptive) RMSNorm, grouped-query attention with RoPE, GeGLU MLP.

Parameter names follow transformers' Gemma modules (``self_attn.q_proj`` ...) so lerobot checkpoints
load unchanged. Numerics follow lerobot 0.6.1 + transformers 5.5 ("eager" attention): norms in
float32, attention scores in the compute dtype then a float32 softmax, RoPE tables cast to the
compute dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import GemmaSpec

# lerobot's OPENPI_ATTENTION_MASK_VALUE: the additive mask for disallowed positions.
MASK_VALUE = -2.3819763e38

KVCache = list[tuple[torch.Tensor, torch.Tensor]]


class GemmaRMSNorm(nn.Module):
    """Gemma RMSNorm, ``x / rms(x) * (1 + w)``; returns ``(y, None)`` like the adaptive one."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None):
        var = x.float().square().mean(-1, keepdim=True)
        normed = x * torch.rsqrt(var + self.eps)  # promotes to float32
        return (normed * (1.0 + self.weight.float())).type_as(x), None


class AdaptiveRMSNorm(nn.Module):
    """pi0.5's AdaRMS: scale, shift and a residual gate predicted from the flow-time condition."""

    def __init__(self, dim: int, cond_dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.dense = nn.Linear(cond_dim, 3 * dim, bias=True)

    def modulation(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(scale, shift, gate), each (..., dim), from the condition (..., cond_dim)."""
        return self.dense(cond.to(self.dense.weight.dtype)).chunk(3, dim=-1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor):
        var = x.float().square().mean(-1, keepdim=True)
        normed = x * torch.rsqrt(var + self.eps)
        scale, shift, gate = self.modulation(cond)
        if x.dim() == 3:  # one condition per sequence
            scale, shift, gate = scale.unsqueeze(1), shift.unsqueeze(1), gate.unsqueeze(1)
        normed = normed * (1.0 + scale.float()) + shift.float()
        return normed.to(x.dtype), gate.to(x.dtype)


class GemmaAttention(nn.Module):
    def __init__(self, spec: GemmaSpec):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = spec.num_heads, spec.num_kv_heads, spec.head_dim
        self.q_proj = nn.Linear(spec.width, spec.num_heads * spec.head_dim, bias=False)
        self.k_proj = nn.Linear(spec.width, spec.num_kv_heads * spec.head_dim, bias=False)
        self.v_proj = nn.Linear(spec.width, spec.num_kv_heads * spec.head_dim, bias=False)
        self.o_proj = nn.Linear(spec.num_heads * spec.head_dim, spec.width, bias=False)


class GemmaMLP(nn.Module):
    def __init__(self, spec: GemmaSpec):
        super().__init__()
        self.gate_proj = nn.Linear(spec.width, spec.mlp_dim, bias=False)
        self.up_proj = nn.Linear(spec.width, spec.mlp_dim, bias=False)
        self.down_proj = nn.Linear(spec.mlp_dim, spec.width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype,
                round_inv_freq: bool = True):
    """cos/sin of shape (B, L, head_dim), computed in float32 and cast like transformers does.

    ``round_inv_freq``: lerobot casts its whole bfloat16 model with ``.to(bfloat16)``, which also
    rounds the rotary ``inv_freq`` buffers to bfloat16 (they stay so: only parameters go back to
    float32). True reproduces that (a no-op in float32); False keeps openpi's float32 frequencies.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float()
                                / head_dim))
    if round_inv_freq:
        inv_freq = inv_freq.to(dtype).float()
    freqs = positions[..., None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + _rotate_half(x) * sin


def attention(q, k, v, mask: torch.Tensor, impl: str = "eager") -> torch.Tensor:
    """q (B,H,L,D), k/v (B,KV,T,D), additive float mask (B,1,L,T) -> (B,L,H*D)."""
    b, h, length, d = q.shape
    rep = h // k.shape[1]
    if rep > 1:
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
    scaling = d ** -0.5
    if impl == "sdpa":
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask > MASK_VALUE / 2, scale=scaling)
    elif impl == "eager":
        w = torch.matmul(q, k.transpose(2, 3)) * scaling
        w = w + mask
        p = torch.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(p, v)
    else:
        raise ValueError(f"attention implementation must be 'eager' or 'sdpa', got {impl!r}")
    return out.transpose(1, 2).reshape(b, length, h * d)


class GemmaDecoderLayer(nn.Module):
    def __init__(self, spec: GemmaSpec, cond_dim: int | None):
        super().__init__()
        self.self_attn = GemmaAttention(spec)
        self.mlp = GemmaMLP(spec)
        if cond_dim is None:
            self.input_layernorm = GemmaRMSNorm(spec.width, spec.rms_norm_eps)
            self.post_attention_layernorm = GemmaRMSNorm(spec.width, spec.rms_norm_eps)
        else:
            self.input_layernorm = AdaptiveRMSNorm(spec.width, cond_dim, spec.rms_norm_eps)
            self.post_attention_layernorm = AdaptiveRMSNorm(spec.width, cond_dim, spec.rms_norm_eps)

    def forward(self, h, cos, sin, mask, cond=None, past: tuple | None = None, attn_impl="eager"):
        """One layer; returns the new hidden state and this layer's (k, v) after RoPE."""
        attn = self.self_attn
        b, length, _ = h.shape
        x, gate = self.input_layernorm(h, cond)
        q = attn.q_proj(x).view(b, length, -1, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(b, length, -1, attn.head_dim).transpose(1, 2)
        v = attn.v_proj(x).view(b, length, -1, attn.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k_all, v_all = (k, v) if past is None else (torch.cat([past[0], k], 2), torch.cat([past[1], v], 2))
        out = attn.o_proj(attention(q, k_all, v_all, mask, attn_impl))
        h = h + out if gate is None else h + out * gate
        x, gate = self.post_attention_layernorm(h, cond)
        out = self.mlp(x)
        h = h + out if gate is None else h + out * gate
        return h, (k, v)


class Embedding(nn.Module):
    """A lookup table (``weight``). Unlike ``nn.Embedding`` it skips random init, which on the meta
    device would pull in torch._dynamo (tens of seconds on a small CPU)."""

    def __init__(self, num: int, dim: int):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num, dim
        self.weight = nn.Parameter(torch.empty(num, dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class ScaledEmbedding(Embedding):
    """Gemma's token embedding, multiplied by sqrt(width) (scale cast to the weight dtype)."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # rounded to the weight dtype on the host: a Python scalar needs no device copy per call
        # (which a CUDA-graph capture would refuse), and the product is the same
        scale = torch.tensor(math.sqrt(self.embedding_dim), dtype=self.weight.dtype).item()
        return F.embedding(ids, self.weight) * scale


class GemmaTransformer(nn.Module):
    """Decoder stack (``layers``, ``norm``; ``embed_tokens`` when it reads token ids)."""

    def __init__(self, spec: GemmaSpec, cond_dim: int | None, with_embedding: bool):
        super().__init__()
        self.spec = spec
        if with_embedding:
            self.embed_tokens = ScaledEmbedding(spec.vocab_size, spec.width)
        self.layers = nn.ModuleList([GemmaDecoderLayer(spec, cond_dim) for _ in range(spec.depth)])
        self.norm = (GemmaRMSNorm(spec.width, spec.rms_norm_eps) if cond_dim is None
                     else AdaptiveRMSNorm(spec.width, cond_dim, spec.rms_norm_eps))

    def forward(self, h, positions, mask, cond=None, past: KVCache | None = None, attn_impl="eager",
                final_norm: bool = True, round_inv_freq: bool = True):
        """Run all layers. Returns (output, per-layer (k, v) of these tokens)."""
        cos, sin = rope_tables(positions, self.spec.head_dim, self.spec.rope_theta, h.dtype, round_inv_freq)
        kv: KVCache = []
        for i, layer in enumerate(self.layers):
            h, layer_kv = layer(h, cos, sin, mask, cond, None if past is None else past[i], attn_impl)
            kv.append(layer_kv)
        if final_norm:
            h, _ = self.norm(h, cond)
        return h, kv
