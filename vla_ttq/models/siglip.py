"""SigLIP vision tower (PaliGemma's So400m/14) and the PaliGemma projector.

Names follow transformers <= 5.5 (``vision_tower.vision_model.encoder.layers.N...``), the layout
the lerobot checkpoints were saved with.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import VisionSpec
from .gemma import Embedding


class SiglipEmbeddings(nn.Module):
    def __init__(self, spec: VisionSpec, image_size: int):
        super().__init__()
        self.num_patches = (image_size // spec.patch) ** 2
        self.patch_embedding = nn.Conv2d(3, spec.hidden, kernel_size=spec.patch, stride=spec.patch)
        self.position_embedding = Embedding(self.num_patches, spec.hidden)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        if x.shape[1] != self.num_patches:
            raise ValueError(f"image gives {x.shape[1]} patches, the position table has {self.num_patches}")
        return x + self.position_embedding.weight[None]


class SiglipAttention(nn.Module):
    def __init__(self, spec: VisionSpec):
        super().__init__()
        self.num_heads = spec.num_heads
        self.q_proj = nn.Linear(spec.hidden, spec.hidden)
        self.k_proj = nn.Linear(spec.hidden, spec.hidden)
        self.v_proj = nn.Linear(spec.hidden, spec.hidden)
        self.out_proj = nn.Linear(spec.hidden, spec.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = (p(x).view(b, n, self.num_heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v)  # full bidirectional, scale = head_dim**-0.5
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class SiglipMLP(nn.Module):
    def __init__(self, spec: VisionSpec):
        super().__init__()
        self.fc1 = nn.Linear(spec.hidden, spec.mlp_dim)
        self.fc2 = nn.Linear(spec.mlp_dim, spec.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SiglipEncoderLayer(nn.Module):
    def __init__(self, spec: VisionSpec):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(spec.hidden, eps=spec.layer_norm_eps)
        self.self_attn = SiglipAttention(spec)
        self.layer_norm2 = nn.LayerNorm(spec.hidden, eps=spec.layer_norm_eps)
        self.mlp = SiglipMLP(spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class SiglipEncoder(nn.Module):
    def __init__(self, spec: VisionSpec):
        super().__init__()
        self.layers = nn.ModuleList([SiglipEncoderLayer(spec) for _ in range(spec.depth)])


class SiglipVisionModel(nn.Module):
    def __init__(self, spec: VisionSpec, image_size: int):
        super().__init__()
        self.embeddings = SiglipEmbeddings(spec, image_size)
        self.encoder = SiglipEncoder(spec)
        self.post_layernorm = nn.LayerNorm(spec.hidden, eps=spec.layer_norm_eps)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(pixels)
        for layer in self.encoder.layers:
            x = layer(x)
        return self.post_layernorm(x)


class SiglipVisionTower(nn.Module):
    """``vision_tower`` with its single child ``vision_model`` (the saved key layout)."""

    def __init__(self, spec: VisionSpec, image_size: int):
        super().__init__()
        self.vision_model = SiglipVisionModel(spec, image_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vision_model(pixels)


class MultiModalProjector(nn.Module):
    def __init__(self, vision_hidden: int, text_width: int):
        super().__init__()
        self.linear = nn.Linear(vision_hidden, text_width, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)
