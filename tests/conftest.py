"""Shared fixtures: a tiny random open_clip model, registered the way users register their own configs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

TESTS_DIR = Path(__file__).parent
REPO_DIR = TESTS_DIR.parent
os.environ.setdefault("CLIPSTUDIO_MODEL_CONFIGS", str(TESTS_DIR / "model_configs"))
TINY_CLIP = "clipstudio-test-tiny:random"
SHARED_DIR = Path(os.environ.get("CLIPSTUDIO_SHARED", REPO_DIR.parent / "shared"))

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def tiny_clip() -> str:
    """The ``--clip`` value of a tiny random-weight open_clip model (32 px input)."""
    return TINY_CLIP


@pytest.fixture
def tiny_options(tiny_clip) -> dict:
    """Settings for a fast generate run with the tiny model."""
    return {"clip": [tiny_clip], "width": 32, "height": 32, "cutn": 4, "steps": 3, "generator": "pixels", "candidates": 1}


@pytest.fixture
def shared_dir() -> Path:
    """The project's shared folder (``CLIPSTUDIO_SHARED``); tests needing it skip when it is absent."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"shared folder not found at {SHARED_DIR} (set CLIPSTUDIO_SHARED)")
    return SHARED_DIR


@pytest.fixture
def one_thread():
    """Run a test on one thread (the autoencoder tests time and compare runs), then restore the count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
