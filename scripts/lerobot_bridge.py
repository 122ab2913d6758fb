"""Build lerobot 0.6.1's own pi0.5 (``PI05Policy``) next to ours, for the parity scripts.

Used by ``make_tiny_reference.py`` and ``parity_lerobot.py`` on a machine with lerobot 0.6.1
(Python >= 3.12). Nothing here changes lerobot's model code; two things are worked around:

- ``lerobot/policies/__init__.py`` imports every policy lerobot has (GR00T needs OpenCV, ...). If
  that fails for a package pi0.5 does not use, the ``lerobot.policies`` package is registered
  without running its ``__init__`` so that only pi0.5's own modules (and what they import) load.
- lerobot sizes its pi0.5 from a table of two variants and hard-codes the SigLIP So400m tower and
  the 257152-token vocabulary. :func:`lerobot_sizes` makes it build at any :class:`Pi05Config`'s
  sizes (our tiny checkpoint's) by patching that table and editing the two Hugging Face configs
  just before the models are constructed.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from vla_ttq.models.config import Pi05Config
from vla_ttq.models.loading import EMBED, EXPERT_LM_HEAD, LM_HEAD

LEROBOT_VERSION = "0.6.1"
CAMERAS = {"observation/image": "observation.images.image", "observation/wrist_image": "observation.images.image2"}


def import_lerobot_pi05() -> types.ModuleType:
    """``lerobot.policies.pi05.modeling_pi05`` (see the module docstring for the fallback)."""
    import lerobot  # noqa: F401  (a clear ImportError if lerobot is absent)

    try:
        return importlib.import_module("lerobot.policies.pi05.modeling_pi05")
    except ImportError as e:
        print(f"[lerobot_bridge] `import lerobot.policies` failed ({type(e).__name__}: {e}); "
              f"loading lerobot.policies.pi05 without lerobot/policies/__init__.py")
        for name in [n for n in sys.modules if n == "lerobot.policies" or n.startswith("lerobot.policies.")]:
            del sys.modules[name]
        root = Path(importlib.util.find_spec("lerobot").origin).parent / "policies"
        pkg = types.ModuleType("lerobot.policies")
        pkg.__path__ = [str(root)]
        pkg.__package__ = "lerobot.policies"
        sys.modules["lerobot.policies"] = pkg
        return importlib.import_module("lerobot.policies.pi05.modeling_pi05")


def lerobot_version() -> str:
    from importlib.metadata import version

    return version("lerobot")


@contextlib.contextmanager
def lerobot_sizes(mp: types.ModuleType, cfg: Pi05Config):
    """While active, lerobot's ``PI05Pytorch`` is built at ``cfg``'s sizes (vision, LM, expert, vocab)."""
    specs = {"gemma_2b": cfg.language, "gemma_300m": cfg.expert}
    saved = mp.get_gemma_config, mp.PaliGemmaForConditionalGenerationWithPiGemma, mp.PiGemmaForCausalLM

    def get_gemma_config(variant: str):
        s = specs[variant]
        return mp.GemmaConfig(width=s.width, depth=s.depth, mlp_dim=s.mlp_dim, num_heads=s.num_heads,
                              num_kv_heads=s.num_kv_heads, head_dim=s.head_dim)

    class PaliGemma(saved[1]):
        def __init__(self, config, *args, **kwargs):
            v = config.vision_config
            v.hidden_size, v.num_hidden_layers = cfg.vision.hidden, cfg.vision.depth
            v.num_attention_heads, v.intermediate_size = cfg.vision.num_heads, cfg.vision.mlp_dim
            v.patch_size, v.layer_norm_eps = cfg.vision.patch, cfg.vision.layer_norm_eps
            v.projection_dim = cfg.language.width
            config.text_config.vocab_size = cfg.language.vocab_size
            config.text_config.rms_norm_eps = cfg.language.rms_norm_eps
            super().__init__(config, *args, **kwargs)

    class Expert(saved[2]):
        def __init__(self, config, *args, **kwargs):
            config.vocab_size = cfg.expert.vocab_size
            config.rms_norm_eps = cfg.expert.rms_norm_eps
            super().__init__(config, *args, **kwargs)

    mp.get_gemma_config, mp.PaliGemmaForConditionalGenerationWithPiGemma, mp.PiGemmaForCausalLM = (
        get_gemma_config, PaliGemma, Expert)
    try:
        yield
    finally:
        mp.get_gemma_config, mp.PaliGemmaForConditionalGenerationWithPiGemma, mp.PiGemmaForCausalLM = saved


def lerobot_config(mp: types.ModuleType, cfg: Pi05Config, device: str, dtype: str):
    """lerobot's ``PI05Config`` with the same fields as ours (variants stay the two lerobot knows)."""
    from lerobot.configs.types import FeatureType, NormalizationMode, PolicyFeature

    def feats(d: dict) -> dict:
        return {k: PolicyFeature(type=FeatureType(v["type"]), shape=tuple(v["shape"])) for k, v in d.items()}

    pi05_config = importlib.import_module("lerobot.policies.pi05.configuration_pi05").PI05Config
    return pi05_config(
        paligemma_variant="gemma_2b", action_expert_variant="gemma_300m", dtype=dtype,
        chunk_size=cfg.chunk_size, n_action_steps=cfg.n_action_steps, max_state_dim=cfg.max_state_dim,
        max_action_dim=cfg.max_action_dim, num_inference_steps=cfg.num_inference_steps,
        min_period=cfg.min_period, max_period=cfg.max_period, image_resolution=tuple(cfg.image_resolution),
        empty_cameras=cfg.empty_cameras, tokenizer_max_length=cfg.tokenizer_max_length,
        input_features=feats(cfg.input_features), output_features=feats(cfg.output_features),
        normalization_mapping={k: NormalizationMode(v) for k, v in cfg.normalization_mapping.items()},
        device=device)


def build_lerobot_policy(cfg: Pi05Config, state: dict[str, torch.Tensor], device: str, dtype: str,
                         full_size: bool):
    """lerobot's ``PI05Policy`` holding ``state`` (our checkpoint keys). Returns (policy, load report).

    Built under ``torch.device(device)`` so that a full-size model is initialised on the GPU. The
    PaliGemma LM head is tied to the token embedding in transformers, so it gets the embedding.
    """
    mp = import_lerobot_pi05()
    lcfg = lerobot_config(mp, cfg, device, dtype)
    sizes = contextlib.nullcontext() if full_size else lerobot_sizes(mp, cfg)
    with sizes, torch.device(device):
        policy = mp.PI05Policy(lcfg)
    state = dict(state)
    state[LM_HEAD] = state[EMBED]
    state.pop(EXPERT_LM_HEAD, None)
    result = policy.load_state_dict(state, strict=False)
    params = dict(policy.named_parameters(remove_duplicate=False))
    missing_params = sorted(k for k in result.missing_keys if k in params and k != EXPERT_LM_HEAD)
    if missing_params or result.unexpected_keys:
        raise RuntimeError(f"lerobot's PI05Policy did not take our weights: missing parameters {missing_params[:8]}, "
                           f"unexpected {list(result.unexpected_keys)[:8]}")
    report = {"missing_keys_left_random": sorted(result.missing_keys), "unexpected_keys": list(result.unexpected_keys),
              "lerobot_params": sum(p.numel() for p in policy.parameters())}
    return policy.eval(), report


def lerobot_processors(checkpoint_dir: Path, tokenizer_dir: Path, device: str):
    """lerobot's own pre/post-processor pipelines read from a checkpoint directory's json files."""
    import_lerobot_pi05()
    importlib.import_module("lerobot.policies.pi05.processor_pi05")  # registers the pi05 state step
    from lerobot.processor import PolicyProcessorPipeline
    from lerobot.processor.converters import policy_action_to_transition, transition_to_policy_action

    pre = PolicyProcessorPipeline.from_pretrained(
        str(checkpoint_dir), config_filename="policy_preprocessor.json",
        overrides={"tokenizer_processor": {"tokenizer_name": str(tokenizer_dir)},
                   "device_processor": {"device": device}})
    post = PolicyProcessorPipeline.from_pretrained(
        str(checkpoint_dir), config_filename="policy_postprocessor.json",
        overrides={"device_processor": {"device": "cpu"}},
        to_transition=policy_action_to_transition, to_output=transition_to_policy_action)
    return pre, post


def lerobot_batch(observations: Sequence[dict]) -> dict[str, Any]:
    """Contract observations -> the raw batch lerobot's preprocessor takes (images float CHW in [0, 1])."""
    batch: dict[str, Any] = {}
    for obs_key, feature in CAMERAS.items():
        if obs_key in observations[0]:
            imgs = np.stack([o[obs_key] for o in observations])
            batch[feature] = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255.0
    batch["observation.state"] = torch.from_numpy(np.stack([o["observation/state"] for o in observations])).float()
    batch["task"] = [o["prompt"] for o in observations]
    return batch


@torch.no_grad()
def run_lerobot(policy, pre, post, observations: Sequence[dict], noise: torch.Tensor) -> dict[str, Any]:
    """lerobot end to end: its preprocessor, its image preprocessing, prefix embedding, actions, postprocessor."""
    from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS

    batch = pre(lerobot_batch(observations))
    images, img_masks = policy._preprocess_images(batch)
    tokens, masks = batch[OBS_LANGUAGE_TOKENS], batch[OBS_LANGUAGE_ATTENTION_MASK]
    embs, pad, _ = policy.model.embed_prefix(images, img_masks, tokens, masks)
    dev = tokens.device
    raw = policy.model.sample_actions(images, img_masks, tokens, masks, noise=noise.to(dev))
    chunk = policy.predict_action_chunk(batch, noise=noise.to(dev))
    actions = post(chunk)
    return {"images": torch.stack([i.float().cpu() for i in images]), "image_masks": torch.stack(img_masks).cpu(),
            "tokens": tokens.cpu(), "token_masks": masks.cpu(), "prompts": list(batch["task"]),
            "norm_state": batch["observation.state"].float().cpu(), "prefix_embs": embs.float().cpu(),
            "prefix_pad": pad.cpu(), "actions_raw": raw.float().cpu(), "actions": actions.float().cpu()}


@torch.no_grad()
def run_ours(policy, observations: Sequence[dict], noise: torch.Tensor) -> dict[str, Any]:
    """The same quantities from our :class:`~vla_ttq.models.Pi05Policy`."""
    inp = policy.prepare(observations)
    model = policy.model
    embs, pad = model.embed_prefix(inp["images"], inp["image_masks"], inp["tokens"], inp["token_masks"])
    raw = model.sample_actions(inp["images"], inp["image_masks"], inp["tokens"], inp["token_masks"],
                               noise.to(policy.device))
    actions = policy.predict_chunk(observations, noise=noise)
    return {"images": torch.stack([i.float().cpu() for i in inp["images"]]),
            "image_masks": torch.stack(inp["image_masks"]).cpu(), "tokens": inp["tokens"].cpu(),
            "token_masks": inp["token_masks"].cpu(), "prompts": inp["prompts"], "prefix_embs": embs.float().cpu(),
            "prefix_pad": pad.cpu(), "actions_raw": raw.float().cpu(), "actions": torch.from_numpy(actions)}


def compare(ours: dict, ref: dict) -> dict[str, Any]:
    """Exact equality for discrete outputs, max abs / relative (L2) error for the float ones."""
    out: dict[str, Any] = {}
    for k in ("tokens", "token_masks", "image_masks", "prefix_pad"):
        out[f"{k}_equal"] = bool(torch.equal(ours[k].cpu().to(ref[k].dtype), ref[k].cpu()))
    out["prompts_equal"] = list(ours["prompts"]) == list(ref["prompts"])
    for k in ("images", "prefix_embs", "actions_raw", "actions"):
        a, b = ours[k].double(), ref[k].double()
        out[f"{k}_max_abs"] = float((a - b).abs().max())
        out[f"{k}_rel_l2"] = float((a - b).norm() / b.norm().clamp_min(1e-30))
    return out


def make_observations(batch: int, height: int, width: int, seed: int, tasks: Sequence[str],
                      wrist: bool = True, state_dim: int = 8) -> list[dict]:
    """Deterministic contract observations (smooth random images, states around the stats' centre)."""
    g = np.random.default_rng(seed)
    out = []
    for i in range(batch):
        obs = {}
        for key in (["observation/image", "observation/wrist_image"] if wrist else ["observation/image"]):
            base = g.uniform(0, 255, size=(height // 4 + 1, width // 4 + 1, 3))
            img = np.kron(base, np.ones((4, 4, 1)))[:height, :width]  # blocky: resizing matters but is smooth
            obs[key] = np.clip(img + g.normal(0, 8, size=img.shape), 0, 255).astype(np.uint8)
        obs["observation/state"] = g.normal(0, 0.6, size=state_dim).astype(np.float32)
        obs["prompt"] = tasks[i % len(tasks)]
        out.append(obs)
    return out
