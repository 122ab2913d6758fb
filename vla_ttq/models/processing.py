"""pi0.5 pre/post-processing, as lerobot's processor pipeline does it.

- images: uint8 HxWx3 -> float [0, 1] -> resize-with-pad to the model resolution (bilinear,
  centred black padding) -> [-1, 1] (SigLIP), channels first;
- state: normalised with the checkpoint's statistics, discretised into 256 bins and written into
  the prompt ``"Task: <task>, State: <bins>;\\nAction: "``; tokenised with ``<bos>`` and padded on
  the right to ``tokenizer_max_length``;
- actions: the first ``action_dim`` of ``max_action_dim`` outputs, unnormalised.

``state_prompt`` selects how many state values go into the prompt: ``"raw"`` (lerobot >= 0.5 and
openpi: the robot's own 8 values) or ``"padded"`` (lerobot 0.4.x: zero-padded to ``max_state_dim``
= 32 after normalisation, so 24 extra "128" bins). See docs/model.md for which checkpoint needs which.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

PREPROCESSOR_FILE = "policy_preprocessor.json"
POSTPROCESSOR_FILE = "policy_postprocessor.json"
DEFAULT_TOKENIZER = "google/paligemma-3b-pt-224"
STATE_PROMPTS = ("raw", "padded")


# --- images -------------------------------------------------------------------------------
def resize_with_pad(img: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(C, H, W) float in [0, 1] -> (C, height, width): aspect-preserving bilinear + centred zero pad."""
    _, h, w = img.shape
    ratio = max(w / width, h / height)
    rh, rw = int(h / ratio), int(w / ratio)
    out = F.interpolate(img[None], size=(rh, rw), mode="bilinear", align_corners=False)[0].clamp(0.0, 1.0)
    top, rem_h = divmod(height - rh, 2)
    left, rem_w = divmod(width - rw, 2)
    return F.pad(out, (left, left + rem_w, top, top + rem_h), value=0.0)


def image_to_model_input(image: np.ndarray | torch.Tensor, resolution: tuple[int, int], name: str = "image"):
    """HxWx3 uint8 (or float in [0, 1]) -> (3, H, W) float32 in [-1, 1] at ``resolution``."""
    t = torch.as_tensor(np.asarray(image))
    if t.dim() != 3 or t.shape[-1] != 3:
        raise ValueError(f"{name} must be an HxWx3 array, got shape {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        t = t.permute(2, 0, 1).contiguous().to(torch.float32) / 255.0
    elif t.is_floating_point():
        t = t.permute(2, 0, 1).contiguous().to(torch.float32)
        if t.numel() and (t.min() < 0 or t.max() > 1):
            raise ValueError(f"{name} is float but not in [0, 1] (min {t.min():.3f}, max {t.max():.3f})")
    else:
        raise ValueError(f"{name} must be uint8 or float in [0, 1], got {t.dtype}")
    if tuple(t.shape[1:]) != tuple(resolution):
        t = resize_with_pad(t, *resolution)
    return t * 2.0 - 1.0


# --- normalisation ------------------------------------------------------------------------
@dataclass
class Normalizer:
    """lerobot's (Un)NormalizerProcessorStep for the STATE and ACTION features."""

    stats: dict[str, dict[str, torch.Tensor]]
    norm_map: dict[str, str]  # feature type -> mode
    feature_types: dict[str, str]  # feature name -> feature type
    eps: float = 1e-8

    def _mode(self, key: str) -> str:
        return self.norm_map.get(self.feature_types.get(key, ""), "IDENTITY")

    def _stats(self, key: str, names: Sequence[str]) -> list[torch.Tensor]:
        st = self.stats.get(key, {})
        absent = [n for n in names if n not in st]
        if absent:
            raise ValueError(f"{self._mode(key)} normalisation of '{key}' needs statistics {list(names)}, "
                             f"missing {absent}")
        return [st[n].to(torch.float32) for n in names]

    def __call__(self, key: str, x: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        mode = self._mode(key)
        if mode == "IDENTITY" or key not in self.stats:
            return x
        x = x.to(torch.float32)
        if mode == "MEAN_STD":
            mean, std = self._stats(key, ("mean", "std"))
            return x * std + mean if inverse else (x - mean) / (std + self.eps)
        lo_name, hi_name = {"MIN_MAX": ("min", "max"), "QUANTILES": ("q01", "q99"),
                            "QUANTILE10": ("q10", "q90")}[mode]
        lo, hi = self._stats(key, (lo_name, hi_name))
        denom = hi - lo
        denom = torch.where(denom == 0, torch.tensor(self.eps, dtype=denom.dtype), denom)
        return (x + 1.0) * denom / 2.0 + lo if inverse else 2.0 * (x - lo) / denom - 1.0


# --- prompt -------------------------------------------------------------------------------
def discretize_state(state: np.ndarray) -> np.ndarray:
    """Normalised state in [-1, 1] -> bin indices 0..255 (values outside give -1 or 256-1, as openpi)."""
    return np.digitize(state, bins=np.linspace(-1, 1, 256 + 1)[:-1]) - 1


def make_prompt(task: str, normalized_state: np.ndarray) -> str:
    cleaned = task.strip().replace("_", " ").replace("\n", " ")
    bins = " ".join(map(str, discretize_state(normalized_state)))
    return f"Task: {cleaned}, State: {bins};\nAction: "


class PromptTokenizer:
    """PaliGemma tokenisation with the ``tokenizers`` library: ``<bos>`` + text, right-padded."""

    def __init__(self, tokenizer_json: str | Path, max_length: int, bos: str = "<bos>", pad: str = "<pad>"):
        from tokenizers import Tokenizer

        self.path = str(tokenizer_json)
        self.tok = Tokenizer.from_file(self.path)
        self.max_length = max_length
        self.bos_id, self.pad_id = self.tok.token_to_id(bos), self.tok.token_to_id(pad)
        if self.bos_id is None or self.pad_id is None:
            raise ValueError(f"tokenizer {self.path} has no {bos!r} or {pad!r} token")

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.full((len(texts), self.max_length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(texts), self.max_length), dtype=torch.bool)
        for i, text in enumerate(texts):
            seq = [self.bos_id] + self.tok.encode(text, add_special_tokens=False).ids
            seq = seq[: self.max_length]  # lerobot truncates too
            ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[i, : len(seq)] = True
        return ids, mask


# --- the checkpoint's processor files ----------------------------------------------------
@dataclass
class ProcessorFiles:
    """What lerobot stored beside the weights: statistics, normalisation modes, tokenizer settings."""

    normalizer: Normalizer
    unnormalizer: Normalizer
    tokenizer_name: str = DEFAULT_TOKENIZER
    max_length: int | None = None
    rename_map: dict[str, str] = field(default_factory=dict)


def _read_pipeline(path: Path) -> dict:
    with open(path) as fh:
        return json.load(fh)


def _normalizer_from_step(step: dict, directory: Path) -> Normalizer:
    conf = step.get("config", {})
    stats: dict[str, dict[str, torch.Tensor]] = {}
    if step.get("state_file"):
        state_path = directory / step["state_file"]
        if not state_path.is_file():
            raise FileNotFoundError(f"normalisation statistics file not found: {state_path}")
        for flat, tensor in load_file(str(state_path)).items():
            feat, stat = flat.rsplit(".", 1)
            stats.setdefault(feat, {})[stat] = tensor.to(torch.float32)
    features = {k: v["type"] for k, v in conf.get("features", {}).items()}
    return Normalizer(stats, dict(conf.get("norm_map", {})), features, float(conf.get("eps", 1e-8)))


def read_processor_files(directory: str | Path) -> ProcessorFiles:
    """Parse ``policy_preprocessor.json`` / ``policy_postprocessor.json`` and their statistics."""
    directory = Path(directory)
    pre_path, post_path = directory / PREPROCESSOR_FILE, directory / POSTPROCESSOR_FILE
    for p in (pre_path, post_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p.name} not found in {directory}: pi0.5 needs the normalisation "
                                    f"statistics lerobot saves beside model.safetensors")
    normalizer = unnormalizer = None
    out = ProcessorFiles(normalizer=None, unnormalizer=None)  # type: ignore[arg-type]
    for step in _read_pipeline(pre_path).get("steps", []):
        name = step.get("registry_name", step.get("class", ""))
        conf = step.get("config", {})
        if name == "normalizer_processor":
            normalizer = _normalizer_from_step(step, directory)
        elif name == "tokenizer_processor":
            out.tokenizer_name = conf.get("tokenizer_name") or DEFAULT_TOKENIZER
            out.max_length = conf.get("max_length")
            if conf.get("padding_side", "right") != "right":
                raise ValueError(f"unsupported tokenizer padding_side {conf.get('padding_side')!r}")
        elif name == "rename_observations_processor":
            out.rename_map = dict(conf.get("rename_map", {}))
    for step in _read_pipeline(post_path).get("steps", []):
        if step.get("registry_name") == "unnormalizer_processor":
            unnormalizer = _normalizer_from_step(step, directory)
    if normalizer is None or unnormalizer is None:
        raise ValueError(f"{directory}: no normalizer_processor in {PREPROCESSOR_FILE} or no "
                         f"unnormalizer_processor in {POSTPROCESSOR_FILE}")
    out.normalizer, out.unnormalizer = normalizer, unnormalizer
    return out
