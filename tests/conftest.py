"""Shared pytest set-up: headless plotting, hypothesis without deadlines, GPU marker."""

from __future__ import annotations

import os

import matplotlib
import pytest
import torch
from hypothesis import settings

matplotlib.use("Agg")  # tests never open windows

# Two shared CPU cores make wall-clock deadlines flaky; correctness does not depend on speed.
settings.register_profile("llmcourse", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "llmcourse"))


def pytest_collection_modifyitems(config, items):
    """Skip tests marked `gpu` on machines without CUDA (they run on the GPU machines)."""
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
