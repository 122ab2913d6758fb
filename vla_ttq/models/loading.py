"""Strict, low-memory loading of a lerobot pi0.5 ``model.safetensors``.

The model is built on the ``meta`` device (no memory), every checkpoint tensor is read one at a
time, cast to the dtype lerobot would give it, and attached with ``load_state_dict(assign=True)``:
peak memory is the final model plus one tensor. Unlike lerobot, which prints a warning and returns
a partly random model, any missing, unexpected or mis-shaped key is an error naming the keys.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from safetensors import safe_open

from .config import Pi05Config
from .pi05 import Pi05Checkpoint, param_dtype

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
LM_HEAD = "model.paligemma_with_expert.paligemma.lm_head.weight"
EXPERT_LM_HEAD = "model.paligemma_with_expert.gemma_expert.lm_head.weight"
EMBED = "model.paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight"
# Old expert norm weights that lerobot drops when the expert uses adaptive RMSNorm.
_LEGACY_EXPERT_NORM = re.compile(
    r"^model\.paligemma_with_expert\.gemma_expert\.model\.(layers\.\d+\.(input|post_attention)_layernorm|norm)\.weight$")


class CheckpointMismatchError(ValueError):
    """The checkpoint's keys or shapes do not match the pi0.5 layout."""


def unused_checkpoint_shapes(cfg: Pi05Config) -> dict[str, tuple[int, ...]]:
    """Keys stored in lerobot checkpoints that pi0.5 inference never reads (the two LM heads)."""
    return {LM_HEAD: (cfg.language.vocab_size, cfg.language.width),
            EXPERT_LM_HEAD: (cfg.expert.vocab_size, cfg.expert.width)}


def expected_shapes(cfg: Pi05Config) -> dict[str, tuple[int, ...]]:
    """Every parameter the model needs, with its shape (built on the meta device: no memory)."""
    with torch.device("meta"):
        root = Pi05Checkpoint(cfg)
    return {k: tuple(v.shape) for k, v in root.state_dict().items()}


def canonical_key(key: str) -> str:
    """lerobot's key fix-ups: the ``model.`` prefix and openpi's ``action_time_mlp_*`` names."""
    if not key.startswith("model."):
        key = "model." + key
    return key.replace("model.action_time_mlp_in.", "model.time_mlp_in.").replace(
        "model.action_time_mlp_out.", "model.time_mlp_out.")


def _summarise(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def plan_load(file_keys: dict[str, tuple[int, ...]], cfg: Pi05Config) -> dict[str, str]:
    """Map model key -> file key, or raise :class:`CheckpointMismatchError` naming what is wrong."""
    need = expected_shapes(cfg)
    unused = unused_checkpoint_shapes(cfg)
    source: dict[str, str] = {}
    unexpected, bad_shape = [], []
    for fkey, shape in file_keys.items():
        key = canonical_key(fkey)
        if key in need:
            if key in source:
                unexpected.append(f"{fkey} (duplicate of {source[key]})")
            source[key] = fkey
            if tuple(shape) != need[key]:
                bad_shape.append(f"{fkey}: checkpoint {tuple(shape)} vs model {need[key]}")
        elif key in unused:
            if tuple(shape) != unused[key]:
                bad_shape.append(f"{fkey}: checkpoint {tuple(shape)} vs expected {unused[key]}")
        elif _LEGACY_EXPERT_NORM.match(key):
            log.warning("ignoring %s: the action expert uses adaptive RMSNorm (as lerobot does)", fkey)
        else:
            unexpected.append(fkey)
    # PaliGemma ties the token embedding to its LM head: either one may be the stored copy.
    if EMBED not in source:
        for fkey, shape in file_keys.items():
            if canonical_key(fkey) == LM_HEAD and tuple(shape) == need[EMBED]:
                source[EMBED] = fkey
    missing = sorted(set(need) - set(source))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_summarise(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_summarise(unexpected)}")
    if bad_shape:
        problems.append(f"{len(bad_shape)} shape mismatch(es): {_summarise(bad_shape)}")
    if problems:
        raise CheckpointMismatchError("checkpoint does not match the pi0.5 layout of its config.json: "
                                      + "; ".join(problems))
    return source


def build_model(cfg: Pi05Config, weights: str | Path, dtype: torch.dtype = torch.float32,
                device: str | torch.device = "cpu") -> Pi05Checkpoint:
    """Build the model on ``meta`` and attach the checkpoint tensors (strictly checked)."""
    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"weights file not found: {weights}")
    with safe_open(str(weights), framework="pt", device="cpu") as f:
        file_shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        source = plan_load(file_shapes, cfg)
        return build_from_tensors(cfg, ((key, f.get_tensor(fkey)) for key, fkey in source.items()), dtype, device)


def build_from_tensors(cfg: Pi05Config, tensors, dtype: torch.dtype = torch.float32,
                       device: str | torch.device = "cpu") -> Pi05Checkpoint:
    """Build the model on ``meta`` and attach ``(name, tensor)`` pairs, each moved to ``device`` in
    the dtype lerobot gives that parameter (strictly checked: nothing may stay on ``meta``)."""
    with torch.device("meta"):
        root = Pi05Checkpoint(cfg)
    state = {key: t.to(device=device, dtype=param_dtype(key, dtype)) for key, t in tensors}
    root.load_state_dict(state, strict=True, assign=True)
    del state
    left = [n for n, t in list(root.named_parameters()) + list(root.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"tensors left on the meta device after loading: {_summarise(left)}")
    return root.eval().requires_grad_(False)


def save_checkpoint(root: Pi05Checkpoint, path: str | Path, with_lm_heads: bool = True,
                    tie_embedding: bool = False, seed: int = 0) -> None:
    """Write ``root``'s weights in the lerobot key layout (optionally with random LM heads, as stored).

    ``tie_embedding=True`` stores the embedding only as the PaliGemma LM head (one of the two
    layouts a tied checkpoint can have).
    """
    from safetensors.torch import save_file

    cfg = root.model.config
    state = {k: v.detach().contiguous().cpu() for k, v in root.state_dict().items()}
    if with_lm_heads:
        g = torch.Generator().manual_seed(seed + 1)
        state[LM_HEAD] = state[EMBED].clone() if tie_embedding else torch.randn(
            unused_checkpoint_shapes(cfg)[LM_HEAD], generator=g) * 0.02
        state[EXPERT_LM_HEAD] = torch.randn(unused_checkpoint_shapes(cfg)[EXPERT_LM_HEAD], generator=g) * 0.02
    if tie_embedding:
        state.pop(EMBED)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))


def weights_digest(path: str | Path) -> str:
    """sha256 over every tensor's bytes in key order (independent of the file's header layout):
    names the weights a reference output was made from."""
    import hashlib

    h = hashlib.sha256()
    with safe_open(str(path), framework="pt") as f:
        for k in sorted(f.keys()):
            h.update(k.encode())
            h.update(f.get_tensor(k).contiguous().numpy().tobytes())
    return h.hexdigest()
