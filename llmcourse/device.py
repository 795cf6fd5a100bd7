"""Where tensors live and how to make a run repeatable.

Every chapter asks `default_device()` where to put its tensors, so one environment variable
(`LLMCOURSE_DEVICE`) moves the whole course between a laptop CPU, an NVIDIA GPU and Apple silicon.
`seed_everything(seed)` makes random numbers, and so every experiment, repeat exactly.
"""

from __future__ import annotations

import numbers
import os
import random

import numpy as np
import torch

DEVICE_ENV_VAR = "LLMCOURSE_DEVICE"
KNOWN_DEVICE_TYPES = ("cpu", "cuda", "mps")
# numpy's legacy global seed must fit in 32 bits; we use the same range for every library.
MAX_SEED = 2**32 - 1


def default_device() -> torch.device:
    """The device to compute on: `$LLMCOURSE_DEVICE` if set, else CUDA, else Apple MPS, else CPU.

    The variable takes what `torch.device` takes ("cpu", "cuda", "cuda:1", "mps"). A value torch
    does not understand, or a device this machine does not have, raises ValueError naming it:
    silently falling back to the CPU would make a "GPU run" mysteriously slow.
    """
    requested = os.environ.get(DEVICE_ENV_VAR, "").strip()
    if requested:
        return _parse_requested_device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def _parse_requested_device(requested: str) -> torch.device:
    """Turn the text of `$LLMCOURSE_DEVICE` into a device this machine really has."""
    setting = f"{DEVICE_ENV_VAR}={requested!r}"
    fix = f"set it to one of {', '.join(KNOWN_DEVICE_TYPES)} (or cuda:N), or unset it to choose automatically"
    try:
        device = torch.device(requested.lower())
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"{setting} is not a device name torch understands; {fix}") from error
    if device.type not in KNOWN_DEVICE_TYPES:
        raise ValueError(f"{setting} names a device type the course does not support; {fix}")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"{setting} but this machine has no CUDA GPU; {fix}")
        if device.index is not None and device.index >= count:
            raise ValueError(f"{setting} but this machine has only {count} CUDA GPU(s), "
                             f"numbered 0 to {count - 1}; {fix}")
    if device.type == "mps" and not _mps_available():
        raise ValueError(f"{setting} but Apple MPS is not available on this machine; {fix}")
    return device


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python's `random`, numpy and torch (CPU and every GPU) with `seed`.

    Returns a fresh CPU `torch.Generator` seeded with `seed`. Passing it explicitly
    (`torch.multinomial(..., generator=g)`) keeps a computation repeatable even when other code
    draws from the global random state in between.
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an integer from 0 to {MAX_SEED}, got {seed!r}")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds CUDA and MPS generators when those devices exist
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)  # explicit: every GPU, not only the current one
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    return generator
