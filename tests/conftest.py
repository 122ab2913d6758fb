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
