"""A random TINY pi0.5 in the real checkpoint's file layout, for tests, CI and demos.

``make_tiny_checkpoint(out_dir, seed=0)`` writes ``config.json``, ``model.safetensors`` (with the
two unused LM heads, as lerobot stores them), ``policy_preprocessor.json`` /
``policy_postprocessor.json`` with their normalisation statistics (lerobot 0.6.1's step layout),
and a tiny deterministic BPE tokenizer built here (``tokenizer.json`` + ``tokenizer_config.json``,
loadable by ``tokenizers`` and by transformers' ``AutoTokenizer``). No download.

    python -m vla_ttq.models.tiny OUT_DIR [--seed 0]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from .config import GemmaSpec, Pi05Config, VisionSpec
from .loading import WEIGHTS_FILE, build_from_tensors, save_checkpoint
from .pi05 import Pi05Checkpoint, param_dtype
from .processing import DEFAULT_TOKENIZER

STATE_DIM, ACTION_DIM = 8, 7
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]  # Gemma's ids 0..3
# Words merged into single tokens (everything else falls back to characters).
WORDS = ["Task:", "State:", "Action:", "put", "the", "pick", "up", "and", "place", "it", "in", "on", "of", "to",
         "open", "close", "turn", "bowl", "plate", "basket", "drawer", "top", "stove", "black", "white", "cabinet",
         "mug", "soup", "sauce", "alphabet", "tomato", "ketchup", "cream", "cheese", "butter", "milk", "box"]


def tiny_config() -> Pi05Config:
    return Pi05Config(
        paligemma_variant="tiny", action_expert_variant="tiny", dtype="float32", chunk_size=50, n_action_steps=10,
        max_state_dim=32, max_action_dim=32, num_inference_steps=10, image_resolution=(32, 32),
        tokenizer_max_length=96,
        input_features={"observation.images.image": {"type": "VISUAL", "shape": [3, 256, 256]},
                        "observation.images.image2": {"type": "VISUAL", "shape": [3, 256, 256]},
                        "observation.state": {"type": "STATE", "shape": [STATE_DIM]}},
        output_features={"action": {"type": "ACTION", "shape": [ACTION_DIM]}},
        normalization_mapping={"VISUAL": "IDENTITY", "STATE": "QUANTILES", "ACTION": "QUANTILES"},
        vision=VisionSpec(hidden=64, depth=2, num_heads=2, mlp_dim=128, patch=8),
        language=GemmaSpec(width=128, depth=2, mlp_dim=256, num_heads=2, num_kv_heads=1, head_dim=32, vocab_size=512),
        expert=GemmaSpec(width=64, depth=2, mlp_dim=128, num_heads=2, num_kv_heads=1, head_dim=32, vocab_size=512),
    )


# --- tokenizer ----------------------------------------------------------------------------
def build_tiny_tokenizer():
    """Deterministic Gemma-like BPE: '▁' for spaces, single digits, a few whole words."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    chars = [chr(c) for c in range(33, 127)] + ["▁", "\n"]
    vocab = {tok: i for i, tok in enumerate(SPECIALS + chars)}
    merges = []
    for word in WORDS:
        for piece in (word, "▁" + word):
            cur = piece[0]
            for ch in piece[1:]:
                nxt = cur + ch
                if nxt not in vocab:
                    vocab[nxt] = len(vocab)
                    merges.append((cur, ch))
                cur = nxt
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    tok.add_special_tokens(SPECIALS)
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split("▁", behavior="merged_with_next"),
                                                 pre_tokenizers.Digits(individual_digits=True)])
    tok.decoder = decoders.Replace("▁", " ")
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B",
                                                       special_tokens=[("<bos>", vocab["<bos>"])])
    return tok


def write_tokenizer(out_dir: Path) -> None:
    tok = build_tiny_tokenizer()
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<bos>", "eos_token": "<eos>",
        "pad_token": "<pad>", "unk_token": "<unk>", "padding_side": "right", "model_max_length": 1000000,
    }, indent=2))


# --- processor files ----------------------------------------------------------------------
def _stats(dim: int, g: torch.Generator, scale: float) -> dict[str, torch.Tensor]:
    mean = torch.randn(dim, generator=g) * scale
    std = torch.rand(dim, generator=g) * scale + 0.1
    out = {"mean": mean, "std": std, "min": mean - 3 * std, "max": mean + 3 * std,
           "q01": mean - 2.3 * std, "q99": mean + 2.3 * std, "q10": mean - 1.3 * std, "q90": mean + 1.3 * std}
    return {k: v.float() for k, v in out.items()}


def write_processor_files(out_dir: Path, cfg: Pi05Config, seed: int, tokenizer_name: str) -> None:
    """lerobot 0.6.1's pi05 pipelines (step order and registry names), statistics in safetensors."""
    g = torch.Generator().manual_seed(seed + 2)
    stats = {"observation.state": _stats(STATE_DIM, g, 0.5), "action": _stats(ACTION_DIM, g, 0.3)}
    flat = {f"{feat}.{k}": v for feat, st in stats.items() for k, v in st.items()}
    features = {**cfg.input_features, **cfg.output_features}
    norm_conf = {"eps": 1e-8, "features": features, "norm_map": cfg.normalization_mapping}
    pre_state = "policy_preprocessor_step_3_normalizer_processor.safetensors"
    post_state = "policy_postprocessor_step_0_unnormalizer_processor.safetensors"
    pre = {"name": "policy_preprocessor", "steps": [
        {"registry_name": "rename_observations_processor", "config": {"rename_map": {}}},
        {"registry_name": "to_batch_processor", "config": {}},
        {"registry_name": "relative_actions_processor",
         "config": {"enabled": False, "exclude_joints": ["gripper"], "action_names": None}},
        {"registry_name": "normalizer_processor", "config": norm_conf, "state_file": pre_state},
        {"registry_name": "pi05_prepare_state_tokenizer_processor_step",
         "config": {"max_state_dim": cfg.max_state_dim, "task_key": "task"}},
        {"registry_name": "tokenizer_processor",
         "config": {"max_length": cfg.tokenizer_max_length, "task_key": "task", "padding_side": "right",
                    "padding": "max_length", "truncation": True, "tokenizer_name": tokenizer_name}},
        {"registry_name": "device_processor", "config": {"device": "cpu", "float_dtype": None}},
    ]}
    post = {"name": "policy_postprocessor", "steps": [
        {"registry_name": "unnormalizer_processor",
         "config": {"eps": 1e-8, "features": cfg.output_features, "norm_map": cfg.normalization_mapping},
         "state_file": post_state},
        {"registry_name": "absolute_actions_processor", "config": {"enabled": False}},
        {"registry_name": "device_processor", "config": {"device": "cpu", "float_dtype": None}},
    ]}
    save_file(flat, str(out_dir / pre_state))
    save_file({k: v for k, v in flat.items() if k.startswith("action.")}, str(out_dir / post_state))
    (out_dir / "policy_preprocessor.json").write_text(json.dumps(pre, indent=2))
    (out_dir / "policy_postprocessor.json").write_text(json.dumps(post, indent=2))


# --- weights ------------------------------------------------------------------------------
@torch.no_grad()
def randomize_(root: Pi05Checkpoint, seed: int) -> None:
    """Random weights scaled so every block matters (norm gains and AdaRMS modulation too).

    Drawn on each parameter's own device (one generator per device), so a full-size model built
    on a GPU is randomised there; on CPU the values are those of the tiny checkpoint."""
    gens: dict[torch.device, torch.Generator] = {}
    for name, p in sorted(root.named_parameters()):
        if p.device not in gens:
            gens[p.device] = torch.Generator(device=p.device).manual_seed(seed)
        noise = torch.randn(p.shape, generator=gens[p.device], device=p.device)
        if p.dim() == 1:  # biases and norm gains; LayerNorm gains centre on 1, Gemma's (1 + w) on 0
            centre = 1.0 if ("layer_norm" in name or "post_layernorm" in name) and name.endswith("weight") else 0.0
            p.copy_(centre + 0.1 * noise)
        else:
            p.copy_(noise / p[0].numel() ** 0.5)


@torch.no_grad()
def build_random_model(cfg: Pi05Config, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                       seed: int = 0) -> Pi05Checkpoint:
    """A random model of any size made directly on ``device`` (for speed and memory benchmarks).

    Built on ``meta``, materialised one tensor at a time on the device in the dtype lerobot would
    give it (so a full-size model never passes through host memory), then :func:`randomize_`."""
    with torch.device("meta"):
        shapes = [(name, p.shape) for name, p in Pi05Checkpoint(cfg).named_parameters()]
    root = build_from_tensors(cfg, ((name, torch.empty(shape, dtype=param_dtype(name, dtype), device=device))
                                    for name, shape in shapes), dtype, device)
    randomize_(root, seed)
    return root


def make_tiny_checkpoint(out_dir: str | Path, seed: int = 0, cfg: Pi05Config | None = None,
                         tie_embedding: bool = False) -> Path:
    """Write a random tiny pi0.5 checkpoint directory; returns its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = cfg or tiny_config()
    torch.manual_seed(seed)
    root = Pi05Checkpoint(cfg)
    randomize_(root, seed)
    save_checkpoint(root, out / WEIGHTS_FILE, with_lm_heads=True, tie_embedding=tie_embedding, seed=seed)
    (out / "config.json").write_text(json.dumps(cfg.to_lerobot_json(explicit_dims=True), indent=2))
    write_tokenizer(out)
    write_processor_files(out, cfg, seed, tokenizer_name=DEFAULT_TOKENIZER)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    path = make_tiny_checkpoint(args.out_dir, args.seed)
    print(f"tiny pi0.5 checkpoint written to {path}")


if __name__ == "__main__":
    main()
