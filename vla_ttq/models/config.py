"""pi0.5 model configuration, read from a lerobot checkpoint's ``config.json``.

lerobot names the two transformers by variant ("gemma_2b", "gemma_300m") and hard-codes the
PaliGemma vision tower; those sizes live here. A checkpoint written by ``vla_ttq.models.tiny``
carries explicit sizes under the extra key ``vla_ttq_dims`` (lerobot ignores unknown keys there).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import from_dict, to_dict


@dataclass
class GemmaSpec:
    """One Gemma transformer (PaliGemma's language model or the action expert)."""

    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int = 257152
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0


@dataclass
class VisionSpec:
    """SigLIP vision tower (So400m/14 as used by PaliGemma 3B) and its projector."""

    hidden: int = 1152
    depth: int = 27
    num_heads: int = 16
    mlp_dim: int = 4304
    patch: int = 14
    layer_norm_eps: float = 1e-6


# Sizes of lerobot's variants (lerobot/policies/pi05/modeling_pi05.py: get_gemma_config).
GEMMA_VARIANTS = {
    "gemma_2b": GemmaSpec(width=2048, depth=18, mlp_dim=16384, num_heads=8, num_kv_heads=1, head_dim=256),
    "gemma_300m": GemmaSpec(width=1024, depth=18, mlp_dim=4096, num_heads=8, num_kv_heads=1, head_dim=256),
}

NORM_MODES = ("IDENTITY", "MEAN_STD", "MIN_MAX", "QUANTILES", "QUANTILE10")


@dataclass
class Pi05Config:
    """The fields of lerobot's ``PI05Config`` that inference uses, plus the resolved sizes."""

    paligemma_variant: str = "gemma_2b"
    action_expert_variant: str = "gemma_300m"
    dtype: str = "float32"
    chunk_size: int = 50
    n_action_steps: int = 50
    max_state_dim: int = 32
    max_action_dim: int = 32
    num_inference_steps: int = 10
    min_period: float = 4e-3
    max_period: float = 4.0
    image_resolution: tuple[int, int] = (224, 224)
    empty_cameras: int = 0
    tokenizer_max_length: int = 200
    use_relative_actions: bool = False
    # lerobot feature dicts: name -> {"type": "VISUAL"|"STATE"|"ACTION", "shape": [...]}
    input_features: dict[str, dict] = field(default_factory=dict)
    output_features: dict[str, dict] = field(default_factory=dict)
    normalization_mapping: dict[str, str] = field(
        default_factory=lambda: {"VISUAL": "IDENTITY", "STATE": "QUANTILES", "ACTION": "QUANTILES"})
    vision: VisionSpec = field(default_factory=VisionSpec)
    language: GemmaSpec = field(default_factory=lambda: dataclasses.replace(GEMMA_VARIANTS["gemma_2b"]))
    expert: GemmaSpec = field(default_factory=lambda: dataclasses.replace(GEMMA_VARIANTS["gemma_300m"]))

    def __post_init__(self) -> None:
        self.image_resolution = tuple(self.image_resolution)
        if self.image_resolution[0] != self.image_resolution[1]:
            raise ValueError(f"PaliGemma needs a square image_resolution, got {self.image_resolution}")
        if self.image_resolution[0] % self.vision.patch:
            raise ValueError(f"image_resolution {self.image_resolution} is not a multiple of the patch "
                             f"size {self.vision.patch}")
        if self.n_action_steps > self.chunk_size:
            raise ValueError(f"n_action_steps ({self.n_action_steps}) cannot exceed chunk_size ({self.chunk_size})")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
        if self.language.head_dim != self.expert.head_dim or self.language.num_heads != self.expert.num_heads \
                or self.language.num_kv_heads != self.expert.num_kv_heads or self.language.depth != self.expert.depth:
            raise ValueError("the language model and the action expert must share depth, heads and head_dim "
                             "(their attention is joint)")
        for kind, mode in self.normalization_mapping.items():
            if mode not in NORM_MODES:
                raise ValueError(f"normalization_mapping[{kind!r}] = {mode!r} is not one of {NORM_MODES}")

    # --- features -------------------------------------------------------------------------
    @property
    def image_keys(self) -> list[str]:
        """Camera feature names in lerobot's order (config order, then the empty cameras)."""
        keys = [k for k, f in self.input_features.items() if f.get("type") == "VISUAL"]
        keys += [f"observation.images.empty_camera_{i}" for i in range(self.empty_cameras)
                 if f"observation.images.empty_camera_{i}" not in keys]
        return keys

    @property
    def action_dim(self) -> int:
        feat = self.output_features.get("action")
        return int(feat["shape"][0]) if feat else self.max_action_dim

    @property
    def num_image_tokens(self) -> int:
        return (self.image_resolution[0] // self.vision.patch) ** 2

    # --- (de)serialisation ----------------------------------------------------------------
    @classmethod
    def from_lerobot_json(cls, data: dict[str, Any]) -> "Pi05Config":
        """Build from a lerobot ``config.json`` dict (unknown lerobot fields are ignored)."""
        if data.get("type", "pi05") != "pi05":
            raise ValueError(f"config.json describes a {data.get('type')!r} policy, not 'pi05'")
        names = {f.name for f in dataclasses.fields(cls)} - {"vision", "language", "expert"}
        kwargs = {k: v for k, v in data.items() if k in names}
        dims = data.get("vla_ttq_dims")
        if dims:
            kwargs["vision"] = from_dict(VisionSpec, dims["vision"])
            kwargs["language"] = from_dict(GemmaSpec, dims["language"])
            kwargs["expert"] = from_dict(GemmaSpec, dims["expert"])
        else:
            for key, attr in (("paligemma_variant", "language"), ("action_expert_variant", "expert")):
                variant = data.get(key, cls.paligemma_variant if attr == "language" else cls.action_expert_variant)
                if variant not in GEMMA_VARIANTS:
                    raise ValueError(f"{key} = {variant!r}: known variants are {sorted(GEMMA_VARIANTS)}")
                kwargs[attr] = dataclasses.replace(GEMMA_VARIANTS[variant])
        return cls(**kwargs)

    @classmethod
    def from_file(cls, path: str | Path) -> "Pi05Config":
        with open(path) as fh:
            return cls.from_lerobot_json(json.load(fh))

    def to_lerobot_json(self, explicit_dims: bool = True) -> dict[str, Any]:
        data = to_dict(self)
        dims = {k: data.pop(k) for k in ("vision", "language", "expert")}
        data = {"type": "pi05", **data}
        data["image_resolution"] = list(self.image_resolution)
        if explicit_dims:
            data["vla_ttq_dims"] = dims
        return data
