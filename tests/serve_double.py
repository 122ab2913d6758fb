"""A minimal object implementing the policy contract, for the server's PROTOCOL tests only.

It is a real (tiny) torch model whose linears are real TTQ layers (``recompute="episode"``), so an
episode's first observation calibrates the quantizer and later outputs depend on it, plus a seeded
noise generator: exactly the state that must never leak between clients. End-to-end tests use the real tiny pi0.5 instead.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np
import torch
import torch.nn as nn

from vla_ttq.config import QuantConfig
from vla_ttq.quant import quantize_, reset_ttq

CHUNK, ACTION_DIM = 10, 7


def _prompt_features(prompt: str, n: int = 18) -> torch.Tensor:
    digest = hashlib.sha256(prompt.encode()).digest()
    return torch.tensor([b / 255.0 - 0.5 for b in digest[:n]])


class DoublePolicy:
    def __init__(self, seed: int = 0, delay_s: float = 0.0, recompute: str = "episode"):
        g = torch.Generator().manual_seed(seed)
        self.model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, CHUNK * ACTION_DIM))
        with torch.no_grad():
            for p in self.model.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        cfg = QuantConfig(method="ttq", bits=3, group=16, recompute=recompute)
        quantize_(self.model, cfg)
        self.generator = torch.Generator().manual_seed(seed + 1)  # like pi0.5's flow-matching noise
        self.delay_s = delay_s
        self.resets = 0
        self.calls = 0
        self.active = self.max_active = 0  # to check that the server never runs two requests at once
        self.metadata = {"policy_id": "test-double", "action_dim": ACTION_DIM, "chunk_size": CHUNK,
                         "quant": {"method": "ttq", "bits": 3}}

    def features(self, obs: dict) -> torch.Tensor:
        img = [torch.from_numpy(obs[k].reshape(-1, 3).astype(np.float32).mean(0) / 255.0)
               for k in ("observation/image", "observation/wrist_image")]
        state = torch.from_numpy(np.asarray(obs["observation/state"], dtype=np.float32))
        return torch.cat([*img, state, _prompt_features(obs["prompt"])])

    @torch.no_grad()
    def infer(self, obs: dict) -> dict:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.delay_s:
                time.sleep(self.delay_s)
            x = self.features(obs)
            if "refuse" in obs["prompt"]:
                raise ValueError("this policy refuses prompts containing 'refuse'")
            noise = 0.01 * torch.randn(CHUNK * ACTION_DIM, generator=self.generator)
            actions = (self.model(x[None])[0] + noise).reshape(CHUNK, ACTION_DIM)
            self.calls += 1
            return {"actions": actions.numpy().astype(np.float32)}
        finally:
            self.active -= 1

    def infer_batch(self, observations: list[dict]) -> list[dict]:
        return [self.infer(o) for o in observations]

    def reset(self, env_index: int | None = None) -> None:
        self.resets += 1
        reset_ttq(self.model)


def slow_policy() -> DoublePolicy:
    """Factory for ``python -m vla_ttq.serve --factory serve_double:slow_policy`` (shutdown test)."""
    return DoublePolicy(delay_s=1.5)
