"""Shared by the test files: Triton's CPU interpreter without a GPU, and the tiny pi0.5 checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Before any test module is imported, so before any Triton kernel is decorated.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """The tiny random checkpoint of seed 0, made once; tests that edit it work on a copy."""
    from vla_ttq.models.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=0)


SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture
def load_script(monkeypatch):
    """``load_script("name")``: scripts/name.py imported as a module, with scripts/ on sys.path while
    it loads (a script may import one beside it, as cuda_gemv_ab imports stream_ceiling)."""
    import importlib.util

    def load(name: str):
        monkeypatch.syspath_prepend(str(SCRIPTS))
        spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load
