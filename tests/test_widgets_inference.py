"""The serving explorer of chapter 12 (`llmcourse.widgets.inference`).

The roofline numbers are checked against counts done by hand for published configurations, the
KV-cache size against the package's closed form, and the explorer by setting its controls.
"""

from __future__ import annotations

import pytest

from llmcourse.attention import kv_cache_bytes
from llmcourse.checks import ArgumentError
from llmcourse.widgets.inference import H100, MODELS, InferenceExplorer, decode_figure, decode_step


def test_kv_bytes_per_token_match_the_closed_form():
    for model in MODELS.values():
        assert model.kv_bytes_per_token == kv_cache_bytes(model.n_layer, model.n_kv_heads, model.head_dim, 1)
    # Llama-2-7B at 4096 tokens is 2 GiB; Llama-3-8B's 8 kv heads make it a quarter per token
    assert MODELS["Llama-2-7B"].kv_bytes_per_token * 4096 == 2**31
    assert MODELS["Llama-3-8B"].kv_bytes_per_token * 4 == MODELS["Llama-2-7B"].kv_bytes_per_token


def test_decode_step_counts_and_bounds():
    model = MODELS["Llama-3-8B"]
    step = decode_step(model, 1, 0)
    assert step.flops == 2 * model.params and step.bytes == 2 * model.params
    assert step.intensity == pytest.approx(1.0)  # 2 FLOPs per 2-byte weight
    assert step.bound == "memory" and step.seconds == pytest.approx(2 * model.params / H100.bandwidth)
    # a batch shares the weights: the arithmetic grows with it, the weight traffic does not
    big = decode_step(model, 512, 0)
    assert big.flops == 512 * step.flops and big.weight_bytes == step.weight_bytes
    assert big.bound == "compute"
    # the cache is read once per sequence per step
    cached = decode_step(model, 4, 1000)
    assert cached.kv_bytes == 4 * 1000 * model.kv_bytes_per_token
    assert cached.flops == 4 * (2 * model.params + 4 * model.n_layer * model.n_head * model.head_dim * 1000)


def test_decode_step_rejects_bad_arguments():
    with pytest.raises(ArgumentError):
        decode_step(MODELS["GPT-2 small"], 0, 10)
    with pytest.raises(ArgumentError):
        decode_step(MODELS["GPT-2 small"], 1, -1)


def test_figure_has_two_panels_and_a_line_per_context():
    fig = decode_figure(MODELS["GPT-2 small"], contexts=(128, 1024), mark=(4, 128))
    left, right = fig.axes
    assert len(right.lines) == 3  # two contexts + the marked point
    assert left.get_xscale() == "log"


def test_explorer_follows_its_controls():
    explorer = InferenceExplorer(model="Llama-3-8B", batch_size=1, context=1024)
    assert "memory-bound" in explorer.message and "fits" in explorer.message
    first = explorer.step.seconds
    explorer.batch_size.value = 256
    assert explorer.step.kv_bytes == 256 * 1024 * MODELS["Llama-3-8B"].kv_bytes_per_token
    assert explorer.step.seconds > first
    explorer.model.value = "Llama-3-70B"
    assert "does not fit" in explorer.message
    with pytest.raises(ArgumentError):
        InferenceExplorer(model="GPT-5")
