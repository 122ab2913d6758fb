"""The pi0.5 network: PaliGemma (SigLIP + projector + Gemma LM) with a Gemma action expert.

Inference (lerobot 0.6.1 ``PI05Pytorch.sample_actions``): one prefix pass of images + prompt
through the language model filling a KV cache, then ``num_steps`` Euler steps of flow matching
from noise (t = 1) to actions (t = 0); each step runs only the action expert, which attends to
the cached prefix and is conditioned on t through adaptive RMSNorm.

The module tree reproduces the checkpoint's key layout, rooted at :class:`Pi05Checkpoint`
(``model.paligemma_with_expert.paligemma.model.language_model.layers.0.self_attn.q_proj.weight``...).
Both LM heads of the checkpoint are never used by pi0.5 and are not built (see ``loading.py``).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import Pi05Config
from .gemma import MASK_VALUE, GemmaTransformer, KVCache
from .siglip import MultiModalProjector, SiglipVisionTower

# Parameters lerobot keeps in float32 when the model runs in bfloat16 (substring match on names
# below ``paligemma_with_expert``), plus every parameter outside it (action/time projections).
FLOAT32_SELECTORS = ("vision_tower", "multi_modal_projector", "input_layernorm", "post_attention_layernorm",
                     "model.norm")


class PaliGemmaBackbone(nn.Module):
    def __init__(self, cfg: Pi05Config):
        super().__init__()
        self.vision_tower = SiglipVisionTower(cfg.vision, cfg.image_resolution[0])
        self.multi_modal_projector = MultiModalProjector(cfg.vision.hidden, cfg.language.width)
        self.language_model = GemmaTransformer(cfg.language, cond_dim=None, with_embedding=True)


class PaliGemma(nn.Module):
    def __init__(self, cfg: Pi05Config):
        super().__init__()
        self.model = PaliGemmaBackbone(cfg)


class GemmaExpert(nn.Module):
    def __init__(self, cfg: Pi05Config):
        super().__init__()
        self.model = GemmaTransformer(cfg.expert, cond_dim=cfg.expert.width, with_embedding=False)


class PaliGemmaWithExpert(nn.Module):
    def __init__(self, cfg: Pi05Config):
        super().__init__()
        self.paligemma = PaliGemma(cfg)
        self.gemma_expert = GemmaExpert(cfg)


def sinusoidal_time_embedding(t: torch.Tensor, dim: int, min_period: float, max_period: float) -> torch.Tensor:
    """openpi's sine-cosine embedding of the flow time (computed in float64, returned in t's dtype)."""
    if dim % 2:
        raise ValueError(f"time embedding dimension must be even, got {dim}")
    dtype = torch.float64 if t.device.type != "mps" else torch.float32
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=dtype, device=t.device)
    period = min_period * (max_period / min_period) ** fraction
    x = (1.0 / period * 2 * math.pi)[None, :] * t[:, None]
    return torch.cat([torch.sin(x), torch.cos(x)], dim=1).to(t.dtype)


def additive_mask(allowed: torch.Tensor) -> torch.Tensor:
    """bool (B, L, T) -> float32 (B, 1, L, T) with 0 where allowed, MASK_VALUE elsewhere."""
    return torch.where(allowed[:, None], 0.0, MASK_VALUE)


class Pi05Model(nn.Module):
    """lerobot's ``PI05Pytorch`` for inference."""

    def __init__(self, cfg: Pi05Config):
        super().__init__()
        self.config = cfg
        self.paligemma_with_expert = PaliGemmaWithExpert(cfg)
        w = cfg.expert.width
        self.action_in_proj = nn.Linear(cfg.max_action_dim, w)
        self.action_out_proj = nn.Linear(w, cfg.max_action_dim)
        self.time_mlp_in = nn.Linear(w, w)
        self.time_mlp_out = nn.Linear(w, w)
        self.attn_impl = "eager"  # "sdpa" is faster on GPU, numerically not identical to lerobot
        # bfloat16 RoPE frequencies rounded like lerobot's (see gemma.rope_tables); False = openpi's float32
        self.rope_like_lerobot = True

    # --- pieces ---------------------------------------------------------------------------
    @property
    def language_model(self) -> GemmaTransformer:
        return self.paligemma_with_expert.paligemma.model.language_model

    @property
    def expert(self) -> GemmaTransformer:
        return self.paligemma_with_expert.gemma_expert.model

    @property
    def compute_dtype(self) -> torch.dtype:
        """dtype of the transformer activations (the q_proj weights' dtype, as lerobot decides)."""
        return self.language_model.embed_tokens.weight.dtype

    def embed_image(self, pixels: torch.Tensor) -> torch.Tensor:
        pali = self.paligemma_with_expert.paligemma.model
        dtype = pali.multi_modal_projector.linear.weight.dtype
        feats = pali.multi_modal_projector(pali.vision_tower(pixels.to(dtype)))
        return feats.to(pixels.dtype)

    def embed_prefix(self, images, image_masks, tokens, token_masks):
        """Image tokens of every camera, then the prompt tokens; returns (embs, pad_mask)."""
        embs, pads = [], []
        for img, m in zip(images, image_masks, strict=True):
            e = self.embed_image(img)
            embs.append(e)
            pads.append(m[:, None].expand(e.shape[0], e.shape[1]))
        embs.append(self.language_model.embed_tokens(tokens))
        pads.append(token_masks)
        return torch.cat(embs, dim=1), torch.cat(pads, dim=1)

    def prefix_pass(self, images, image_masks, tokens, token_masks) -> tuple[KVCache, torch.Tensor]:
        """Run the language model over the prefix; returns its KV cache and pad mask."""
        embs, pad = self.embed_prefix(images, image_masks, tokens, token_masks)
        allowed = pad[:, None, :] & pad[:, :, None]  # prefix attention is bidirectional over valid tokens
        positions = torch.cumsum(pad, dim=1) - 1
        _, kv = self.language_model(embs.to(self.compute_dtype), positions, additive_mask(allowed),
                                    attn_impl=self.attn_impl, final_norm=False, round_inv_freq=self.rope_like_lerobot)
        return kv, pad

    def time_condition(self, t: torch.Tensor) -> torch.Tensor:
        """The condition (B, width) of the expert's AdaRMS norms at flow time t (B,)."""
        cfg = self.config
        emb = sinusoidal_time_embedding(t, self.action_in_proj.out_features, cfg.min_period, cfg.max_period)
        return F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(emb))))

    def denoise_step(self, kv: KVCache, prefix_pad: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Velocity v_t of the action chunk x_t at flow time t (shape (B,))."""
        b, chunk, _ = x_t.shape
        cond = self.time_condition(t)
        h = self.action_in_proj(x_t)
        # actions attend to every valid prefix token and to each other
        allowed = torch.cat([prefix_pad[:, None, :].expand(b, chunk, -1),
                             torch.ones(b, chunk, chunk, dtype=torch.bool, device=x_t.device)], dim=2)
        positions = prefix_pad.sum(dim=-1, keepdim=True) + torch.arange(chunk, device=x_t.device)[None]
        out, _ = self.expert(h.to(self.compute_dtype), positions, additive_mask(allowed), cond=cond, past=kv,
                             attn_impl=self.attn_impl, round_inv_freq=self.rope_like_lerobot)
        return self.action_out_proj(out[:, -chunk:].to(torch.float32))

    @torch.no_grad()
    def sample_actions(self, images, image_masks, tokens, token_masks, noise: torch.Tensor,
                       num_steps: int | None = None) -> torch.Tensor:
        """Euler integration from t = 1 (noise) to t = 0; returns (B, chunk, max_action_dim)."""
        num_steps = num_steps or self.config.num_inference_steps
        kv, prefix_pad = self.prefix_pass(images, image_masks, tokens, token_masks)
        dt = -1.0 / num_steps
        x_t = noise
        for step in range(num_steps):
            t = torch.tensor(1.0 + step * dt, dtype=torch.float32, device=noise.device).expand(noise.shape[0])
            x_t = x_t + dt * self.denoise_step(kv, prefix_pad, x_t, t)
        return x_t


class Pi05Checkpoint(nn.Module):
    """Root whose ``state_dict`` keys are the checkpoint's (lerobot's ``PI05Policy`` holds ``model``)."""

    def __init__(self, cfg: Pi05Config):
        super().__init__()
        self.model = Pi05Model(cfg)


def is_float32_param(name: str) -> bool:
    """Parameters lerobot keeps in float32 when ``dtype="bfloat16"`` (name relative to the root)."""
    if ".paligemma_with_expert." not in f".{name}":
        return True
    inner = name.split("paligemma_with_expert.", 1)[1]
    return any(sel in inner for sel in FLOAT32_SELECTORS)


def param_dtype(name: str, dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype == torch.float32 or is_float32_param(name) else dtype
