"""llmcourse.device: choosing the device (env var override, auto-detection order) and seeding."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from llmcourse.device import DEVICE_ENV_VAR, default_device, seed_everything


@pytest.fixture
def no_accelerators(monkeypatch):
    """Pretend this machine has neither CUDA nor MPS, whatever it really has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.mark.parametrize("value", ["cpu", " CPU ", "Cpu"])
def test_env_var_selects_cpu(monkeypatch, value):
    monkeypatch.setenv(DEVICE_ENV_VAR, value)
    assert default_device() == torch.device("cpu")


def test_env_var_wins_over_detected_accelerators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setenv(DEVICE_ENV_VAR, "cpu")
    assert default_device() == torch.device("cpu")


@pytest.mark.parametrize("value", ["banana", "cuda:x", "tpu"])
def test_env_var_that_is_not_a_device_raises_naming_it(monkeypatch, value):
    monkeypatch.setenv(DEVICE_ENV_VAR, value)
    with pytest.raises(ValueError) as error:
        default_device()
    assert repr(value) in str(error.value) and DEVICE_ENV_VAR in str(error.value)


@pytest.mark.parametrize("value", ["meta", "xpu"])
def test_env_var_with_unsupported_device_type_raises(monkeypatch, value):
    monkeypatch.setenv(DEVICE_ENV_VAR, value)
    with pytest.raises(ValueError, match="does not support"):
        default_device()


@pytest.mark.parametrize("value", ["cuda", "cuda:0", "mps"])
def test_env_var_naming_a_missing_accelerator_raises(monkeypatch, no_accelerators, value):
    monkeypatch.setenv(DEVICE_ENV_VAR, value)
    with pytest.raises(ValueError, match="not available|no CUDA GPU") as error:
        default_device()
    assert repr(value) in str(error.value)


def test_env_var_naming_a_gpu_index_past_the_last_raises(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv(DEVICE_ENV_VAR, "cuda:2")
    with pytest.raises(ValueError, match="only 2 CUDA GPU"):
        default_device()
    monkeypatch.setenv(DEVICE_ENV_VAR, "cuda:1")
    assert default_device() == torch.device("cuda", 1)


@pytest.mark.parametrize("cuda, mps, expected", [
    (True, True, "cuda"), (True, False, "cuda"), (False, True, "mps"), (False, False, "cpu"),
])
def test_automatic_choice_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    monkeypatch.delenv(DEVICE_ENV_VAR, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert default_device() == torch.device(expected)


def test_empty_env_var_means_automatic(monkeypatch, no_accelerators):
    monkeypatch.setenv(DEVICE_ENV_VAR, "  ")
    assert default_device() == torch.device("cpu")


def draw_from_every_library(generator: torch.Generator) -> tuple:
    return (random.random(), float(np.random.rand()), torch.rand(3).tolist(),
            torch.rand(3, generator=generator).tolist())


def test_seed_everything_repeats_every_library():
    first = draw_from_every_library(seed_everything(1234))
    second = draw_from_every_library(seed_everything(1234))
    other = draw_from_every_library(seed_everything(1235))
    assert first == second
    assert all(a != b for a, b in zip(first, other))


def test_seed_everything_returns_a_fresh_cpu_generator_seeded_with_the_seed():
    generator = seed_everything(7)
    assert isinstance(generator, torch.Generator) and generator.device == torch.device("cpu")
    assert generator.initial_seed() == 7
    torch.rand(5)  # drawing from the global state must not move the returned generator
    assert torch.equal(torch.rand(4, generator=generator), torch.rand(4, generator=torch.Generator().manual_seed(7)))


def test_seed_everything_accepts_numpy_integers_and_the_full_range():
    assert seed_everything(np.int64(3)).initial_seed() == 3
    assert seed_everything(0).initial_seed() == 0
    assert seed_everything(2**32 - 1).initial_seed() == 2**32 - 1


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, True, "3", None])
def test_seed_everything_rejects_bad_seeds(seed):
    with pytest.raises(ValueError, match="seed must be an integer"):
        seed_everything(seed)


@pytest.mark.gpu
def test_seed_everything_repeats_cuda_draws(monkeypatch):
    seed_everything(5)
    first = torch.rand(8, device="cuda")
    seed_everything(5)
    assert torch.equal(first, torch.rand(8, device="cuda"))
    monkeypatch.setenv(DEVICE_ENV_VAR, "cuda:0")
    assert default_device() == torch.device("cuda", 0)
