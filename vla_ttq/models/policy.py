"""``load_policy`` and the :class:`Pi05Policy` of the project's policy contract (see docs/model.md)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..config import QuantConfig, to_dict
from ..quant.api import QuantReport, calibrate, quantize_, reset_ttq
from ..quant.modules import TTQLinear
from ..quant.stats import ActivationStats, load_stats
from .config import Pi05Config
from .fast import WEIGHT_MODES, FastSampler
from .loading import WEIGHTS_FILE, build_model
from .pi05 import Pi05Checkpoint
from .processing import (DEFAULT_TOKENIZER, STATE_PROMPTS, ProcessorFiles, PromptTokenizer, image_to_model_input,
                         make_prompt, read_processor_files)
from .quantize import quant_filter

log = logging.getLogger(__name__)

# openpi's LIBERO observation keys (the contract) -> lerobot camera features of the LIBERO checkpoints
DEFAULT_CAMERA_MAP = {"observation/image": "observation.images.image",
                      "observation/wrist_image": "observation.images.image2"}
STATE_KEY, PROMPT_KEY = "observation/state", "prompt"
HUB_FILES = ["config.json", WEIGHTS_FILE, "policy_preprocessor*", "policy_postprocessor*", "tokenizer*"]


def resolve_checkpoint(path_or_id: str | Path) -> Path:
    """A local directory, or a hub id fetched with ``huggingface_hub.snapshot_download``."""
    p = Path(path_or_id).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise ValueError(f"{p} is a file; pass the checkpoint directory (config.json, model.safetensors, ...)")
    name = str(path_or_id)
    if name.count("/") != 1 or name.startswith((".", "/")):
        raise FileNotFoundError(f"checkpoint directory not found: {name}")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=name, allow_patterns=HUB_FILES))
    except Exception as e:  # offline, gated, unknown repo ...
        raise RuntimeError(
            f"could not download '{name}' from the Hugging Face hub ({type(e).__name__}: {e}). If this machine is "
            f"offline, download it elsewhere (huggingface-cli download {name}) and pass the local directory."
        ) from e


def resolve_tokenizer(spec: str | Path | None, checkpoint_dir: Path, default_name: str) -> Path:
    """tokenizer.json: explicit file/dir, else the checkpoint's own, else the hub id (gated PaliGemma)."""
    candidates = []
    if spec is not None:
        p = Path(spec).expanduser()
        candidates += [p, p / "tokenizer.json"]
    else:
        candidates += [checkpoint_dir / "tokenizer.json", checkpoint_dir / "tokenizer" / "tokenizer.json"]
        p = Path(default_name).expanduser()
        candidates += [p / "tokenizer.json"]
    for c in candidates:
        if c.is_file():
            return c
    name = str(spec or default_name)
    if spec is not None and Path(name).expanduser().exists():
        raise FileNotFoundError(f"no tokenizer.json in {name}")
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo_id=name, filename="tokenizer.json"))
    except Exception as e:
        raise RuntimeError(
            f"could not get the tokenizer '{name}' ({type(e).__name__}: {e}). google/paligemma-3b-pt-224 is gated: "
            f"accept its licence and log in, or pass tokenizer=<directory with tokenizer.json>.") from e


class Pi05Policy:
    """pi0.5 behind the project's policy contract: ``infer``, ``infer_batch``, ``reset``, ``metadata``."""

    def __init__(self, root: Pi05Checkpoint, processor: ProcessorFiles, tokenizer: PromptTokenizer,
                 policy_id: str, device: torch.device, state_prompt: str = "raw",
                 camera_map: dict[str, str] | None = None, seed: int = 0):
        if state_prompt not in STATE_PROMPTS:
            raise ValueError(f"state_prompt must be one of {STATE_PROMPTS}, got {state_prompt!r}")
        self.root, self.model = root, root.model
        self.config: Pi05Config = root.model.config
        self.processor, self.tokenizer = processor, tokenizer
        self.policy_id, self.device, self.state_prompt = policy_id, torch.device(device), state_prompt
        self.camera_map = dict(camera_map or DEFAULT_CAMERA_MAP)
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self.quant_config: QuantConfig | None = None
        self.quant_report: QuantReport | None = None
        self.quantize_expert = False
        self._fast: dict | None = None  # FastSampler options when predict_chunk uses it (use_fast_sampler)
        self._samplers: dict[tuple, FastSampler] = {}
        self._check_cameras()

    # --- contract ---------------------------------------------------------------------------
    def infer(self, obs: dict) -> dict:
        return self.infer_batch([obs])[0]

    def infer_batch(self, observations: Sequence[dict], noise: torch.Tensor | None = None) -> list[dict]:
        chunks = self.predict_chunk(observations, noise=noise)
        n = self.config.n_action_steps
        return [{"actions": chunk[:n].copy()} for chunk in chunks]

    def reset(self, env_index: int | None = None) -> None:
        """New episode: TTQ layers with ``recompute="episode"`` re-calibrate on their next call.

        ``env_index`` forgets only that batch slot's calibration (``stats_scope="sample"``)."""
        if env_index is None:
            reset_ttq(self.root)
            return
        for m in self.root.modules():
            if isinstance(m, TTQLinear):
                m._cache.pop(int(env_index), None)

    @property
    def metadata(self) -> dict[str, Any]:
        cfg = self.config
        rep = self.quant_report
        return {
            "policy": self.policy_id, "action_dim": cfg.action_dim, "chunk_size": cfg.chunk_size,
            "n_action_steps": cfg.n_action_steps, "num_inference_steps": cfg.num_inference_steps,
            "dtype": str(self.model.compute_dtype).removeprefix("torch."), "device": str(self.device),
            "state_prompt": self.state_prompt, "cameras": cfg.image_keys,
            "rope_like_lerobot": self.model.rope_like_lerobot, "attn_impl": self.model.attn_impl,
            "quant": None if self.quant_config is None else to_dict(self.quant_config),
            "quantize_expert": self.quantize_expert, "fast_sampler": self._fast is not None,
            "quantized_modules": 0 if rep is None else len(rep.modules),
            "quantized_weight_bytes_before": 0 if rep is None else rep.bytes_before,
            "quantized_weight_bytes_after": 0 if rep is None else rep.bytes_after,
        }

    # --- processing -------------------------------------------------------------------------
    def _check_cameras(self) -> None:
        keys = self.config.image_keys
        real = [k for k in keys if "empty_camera" not in k]
        unknown = [v for v in self.camera_map.values() if v not in keys]
        if unknown and real:
            # Checkpoints with other camera names: map the contract's cameras in config order.
            self.camera_map = dict(zip(DEFAULT_CAMERA_MAP, real))
            log.info("camera map by config order: %s", self.camera_map)

    def _renamed(self, feature: str) -> str:
        inverse = {v: k for k, v in self.processor.rename_map.items()}
        return inverse.get(feature, feature)

    def prepare(self, observations: Sequence[dict]) -> dict[str, Any]:
        """Observations -> model inputs (images, masks, tokens) plus the prompts, for inspection."""
        if not observations:
            raise ValueError("infer_batch needs at least one observation")
        cfg = self.config
        res = cfg.image_resolution
        feature_of = {v: k for k, v in self.camera_map.items()}
        images, masks = [], []
        for key in cfg.image_keys:
            obs_key = feature_of.get(key)
            present = [obs_key is not None and obs_key in o for o in observations]
            if any(present) and not all(present):
                raise ValueError(f"camera '{obs_key}' is present in some observations of the batch but not others")
            if present[0]:
                images.append(torch.stack([image_to_model_input(o[obs_key], res, obs_key) for o in observations]))
                masks.append(torch.ones(len(observations), dtype=torch.bool))
            else:  # lerobot: a missing camera is a -1 image that nothing attends to
                images.append(torch.full((len(observations), 3, *res), -1.0))
                masks.append(torch.zeros(len(observations), dtype=torch.bool))
        if not any(bool(m.any()) for m in masks):
            raise ValueError(f"no camera image found; expected keys {sorted(feature_of.values())}")
        prompts = []
        for i, o in enumerate(observations):
            for k in (STATE_KEY, PROMPT_KEY):
                if k not in o:
                    raise ValueError(f"observation {i} has no '{k}' (keys: {sorted(o)})")
            if not isinstance(o[PROMPT_KEY], str):
                raise ValueError(f"observation {i}: '{PROMPT_KEY}' must be a string")
            state = torch.as_tensor(np.asarray(o[STATE_KEY], dtype=np.float32)).reshape(-1)
            norm = self.processor.normalizer(self._renamed("observation.state"), state).numpy()
            if self.state_prompt == "padded":
                norm = np.pad(norm, (0, max(0, cfg.max_state_dim - norm.shape[0])))
            prompts.append(make_prompt(o[PROMPT_KEY], norm))
        tokens, token_masks = self.tokenizer(prompts)
        dev = self.device
        return {"images": [x.to(dev) for x in images], "image_masks": [m.to(dev) for m in masks],
                "tokens": tokens.to(dev), "token_masks": token_masks.to(dev), "prompts": prompts}

    def sample_noise(self, batch: int) -> torch.Tensor:
        cfg = self.config
        return torch.randn((batch, cfg.chunk_size, cfg.max_action_dim), generator=self.generator)

    @torch.no_grad()
    def predict_chunk(self, observations: Sequence[dict], noise: torch.Tensor | None = None) -> np.ndarray:
        """Unnormalised action chunks, float32 (B, chunk_size, action_dim)."""
        inp = self.prepare(observations)
        if noise is None:
            noise = self.sample_noise(len(observations))
        expected = (len(observations), self.config.chunk_size, self.config.max_action_dim)
        if tuple(noise.shape) != expected:
            raise ValueError(f"noise must have shape {expected}, got {tuple(noise.shape)}")
        args = (inp["images"], inp["image_masks"], inp["tokens"], inp["token_masks"],
                noise.to(self.device, torch.float32))
        actions = self.model.sample_actions(*args) if self._fast is None else self._sampler(args)(*args)
        actions = actions[:, :, : self.config.action_dim].float().cpu()
        actions = self.processor.unnormalizer("action", actions, inverse=True)
        return actions.numpy().astype(np.float32)

    # --- fast sampler -----------------------------------------------------------------------
    def use_fast_sampler(self, enabled: bool = True, weights: str = "dense", compile: bool = False,
                         cuda_graph: bool | None = None) -> None:
        """Run :meth:`predict_chunk` through :class:`~vla_ttq.models.fast.FastSampler`: static KV cache and,
        on a GPU, one CUDA graph per (batch size, cameras, prompt length), built on first use. Same
        actions as the plain path within floating-point tolerance (TTQ per episode: its first call after
        :meth:`reset` runs the plain path, which calibrates). See docs/bench.md."""
        if weights not in WEIGHT_MODES:
            raise ValueError(f"weights must be one of {WEIGHT_MODES}, got {weights!r}")
        self._fast = dict(weights=weights, compile=compile, cuda_graph=cuda_graph) if enabled else None
        self._samplers.clear()

    def _sampler(self, args: tuple) -> FastSampler:
        images, _, tokens, _, noise = args
        key = (noise.shape[0], len(images), tokens.shape[1])
        if key not in self._samplers:
            self._samplers[key] = FastSampler(self.model, *key, device=self.device, **self._fast)
        return self._samplers[key]

    # --- quantization -----------------------------------------------------------------------
    def quant_filter(self, quantize_expert: bool | None = None):
        return quant_filter(quantize_expert=self.quantize_expert if quantize_expert is None else quantize_expert)

    def collect_stats(self, observations: Sequence[dict] | Callable[[], None], batch_size: int = 8,
                      quantize_expert: bool | None = None, p: float = 2.0, reservoir: int = 1024,
                      stats: dict[str, ActivationStats] | None = None) -> dict[str, ActivationStats]:
        """Activation statistics of the layers that would be quantized (for AWQ).

        ``observations``: a list of contract observations (run in batches), or a callable that
        drives this policy itself (e.g. LIBERO episodes calling ``policy.infer``)."""
        if self.quant_report is not None:
            raise RuntimeError("collect_stats must run on the full-precision policy, before quantization")
        if callable(observations):
            run = observations
        else:
            obs = list(observations)
            if not obs:
                raise ValueError("collect_stats needs at least one observation")

            def run() -> None:
                for i in range(0, len(obs), batch_size):
                    self.predict_chunk(obs[i: i + batch_size])

        fast, self._fast = self._fast, None  # statistics are hooks on the modules: the plain path calls them
        try:
            return calibrate(self.root, run, self.quant_filter(quantize_expert), p=p, reservoir=reservoir, stats=stats)
        finally:
            self._fast = fast

    def quantize(self, quant: QuantConfig, calibration: dict[str, ActivationStats] | str | Path | None = None,
                 quantize_expert: bool = False) -> QuantReport:
        """Apply :func:`vla_ttq.quant.quantize_` to the selected linears; records and logs the report.

        ``quant.method == "fp"`` only records the config (metadata); the layers stay as they are."""
        if self.quant_report is not None:
            raise RuntimeError("policy is already quantized")
        if quant.method == "fp":  # no quant_report: the policy stays full precision (collect_stats still works)
            self.quant_config = quant
            return QuantReport(quant.method)
        if isinstance(calibration, (str, Path)):
            calibration = load_stats(calibration)
        self.quantize_expert = quantize_expert
        report = quantize_(self.root, quant, self.quant_filter(quantize_expert), calibration)
        self._samplers.clear()  # they wrap the replaced layers
        self.quant_config, self.quant_report = quant, report
        log.info("%s", report.summary())
        return report

    def quantized_modules(self) -> list[str]:
        return [] if self.quant_report is None else list(self.quant_report.modules)


def load_policy(path_or_hub_id: str | Path, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None,
                quant: QuantConfig | None = None, calibration=None, quantize_expert: bool = False,
                n_action_steps: int | None = None, num_inference_steps: int | None = None,
                state_prompt: str = "raw", tokenizer: str | Path | None = None, seed: int = 0,
                attn_impl: str = "eager", camera_map: dict[str, str] | None = None,
                rope_like_lerobot: bool = True, fast: bool = False, verbose: bool = False) -> Pi05Policy:
    """Load a lerobot pi0.5 checkpoint (local directory, or hub id when online) as a :class:`Pi05Policy`.

    dtype: ``None`` keeps the checkpoint config's ``dtype``; ``"bfloat16"`` keeps the vision path,
    norms and action/time projections in float32 as lerobot does. ``state_prompt``: ``"raw"``
    (lerobot >= 0.5) or ``"padded"`` (lerobot 0.4.x); see docs/model.md. ``rope_like_lerobot``:
    in bfloat16, round the RoPE frequencies to bfloat16 as lerobot's model does (bit parity with
    lerobot); False keeps them float32 as openpi does. No effect in float32. ``fast``: serve calls
    through :class:`~vla_ttq.models.fast.FastSampler` (:meth:`Pi05Policy.use_fast_sampler`).
    """
    directory = resolve_checkpoint(path_or_hub_id)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"config.json not found in {directory}")
    cfg = Pi05Config.from_file(config_path)
    if cfg.use_relative_actions:
        raise NotImplementedError("use_relative_actions=True checkpoints are not supported (LIBERO ones are absolute)")
    if n_action_steps is not None:
        if not 1 <= n_action_steps <= cfg.chunk_size:
            raise ValueError(f"n_action_steps must be in [1, {cfg.chunk_size}], got {n_action_steps}")
        cfg.n_action_steps = int(n_action_steps)
    if num_inference_steps is not None:
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        cfg.num_inference_steps = int(num_inference_steps)
    if dtype is None:
        dtype = cfg.dtype
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(str(dtype).removeprefix("torch."))
    if torch_dtype is None:
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}")
    processor = read_processor_files(directory)
    max_len = processor.max_length or cfg.tokenizer_max_length
    tok_path = resolve_tokenizer(tokenizer, directory, processor.tokenizer_name or DEFAULT_TOKENIZER)
    root = build_model(cfg, directory / WEIGHTS_FILE, dtype=torch_dtype, device=device)
    root.model.attn_impl = attn_impl
    root.model.rope_like_lerobot = bool(rope_like_lerobot)
    policy = Pi05Policy(root, processor, PromptTokenizer(tok_path, max_len), str(path_or_hub_id), torch.device(device),
                        state_prompt=state_prompt, camera_map=camera_map, seed=seed)
    if quant is not None:
        report = policy.quantize(quant, calibration, quantize_expert=quantize_expert)
        if verbose and report.modules:
            print(report.summary())
    if fast:
        policy.use_fast_sampler()
    return policy


def describe(policy: Pi05Policy) -> str:
    return json.dumps(policy.metadata, indent=2)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
