"""pi0.5 (PaliGemma + Gemma action expert) inference, loading lerobot checkpoints unchanged."""

from .config import GemmaSpec, Pi05Config, VisionSpec
from .loading import CheckpointMismatchError, build_model, expected_shapes
from .pi05 import Pi05Checkpoint, Pi05Model
from .policy import Pi05Policy, load_policy
from .quantize import quant_filter

Policy = Pi05Policy

__all__ = ["CheckpointMismatchError", "GemmaSpec", "Pi05Checkpoint", "Pi05Config", "Pi05Model", "Pi05Policy",
           "Policy", "VisionSpec", "build_model", "expected_shapes", "load_policy", "quant_filter"]
