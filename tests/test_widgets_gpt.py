"""The configuration explorer of chapter 08 and its figures, driven without a kernel.

The explorer's numbers are checked against independent counts: a model built on the meta device
(its real tensors, counted), hand-written GPT-2 small totals, and the KV-cache formula written out.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest
import torch

from llmcourse.model import GPT, GPTConfig, flops_per_token, param_breakdown
from llmcourse.widgets.gpt import (
    FLOP_PARTS,
    PARAM_PARTS,
    GPTConfigExplorer,
    architecture_figure,
    config_explorer,
    config_figure,
    config_summary,
    flops_breakdown,
    human_bytes,
    human_count,
    share_bars_figure,
)

GPT2_SMALL = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768, bias=True)


def small_config(**overrides) -> GPTConfig:
    values = dict(vocab_size=96, block_size=32, n_layer=2, n_head=4, n_embd=32)
    values.update(overrides)
    return GPTConfig(**values)


def counted_params(config: GPTConfig) -> int:
    with torch.device("meta"):
        model = GPT(config)
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


@pytest.mark.parametrize("overrides", [{}, {"mlp": "swiglu", "n_kv_heads": 2}, {"n_experts": 4, "top_k": 2},
                                       {"tie_weights": False, "bias": True}])
def test_flops_breakdown_sums_to_flops_per_token(overrides):
    config = small_config(**overrides)
    for seq_len in (1, 7, None):
        parts = flops_breakdown(config, seq_len)
        assert set(parts) == set(FLOP_PARTS)
        assert sum(parts.values()) == flops_per_token(config, seq_len)
    assert flops_breakdown(config, 10)["attention_scores"] == 12 * 2 * 32 * 10  # 12·L·C·T


def test_config_summary_of_gpt2_small():
    summary = config_summary(GPT2_SMALL)
    assert summary["params"] == 124_439_808
    assert summary["non_embedding_params"] == 124_439_808 - 50257 * 768 - 1024 * 768
    assert summary["kv_cache_bytes"] == 2 * 12 * 12 * 64 * 1024 * 2  # keys + values, bf16: 36 MiB
    assert human_bytes(summary["kv_cache_bytes"]) == "36.00 MiB"


def test_human_units():
    assert human_count(124_439_808) == "124M"
    assert human_count(999) == "999"
    assert human_count(1_500) == "1.5K"
    assert human_bytes(512) == "512 B"
    assert human_bytes(3 * 2**30) == "3.00 GiB"


def test_explorer_starts_at_its_base_and_follows_the_depth_and_width_sliders():
    explorer = config_explorer(small_config())
    assert explorer.config == small_config()
    assert explorer.summary["params"] == counted_params(small_config())
    explorer.n_layer.value = 3
    explorer.n_embd.value = 128
    expected = small_config(n_layer=3, n_embd=128)
    assert explorer.config == expected
    assert explorer.summary["params"] == counted_params(expected)
    assert explorer.params == param_breakdown(expected)
    assert explorer.flops == flops_breakdown(expected)
    assert f"{counted_params(expected):,}" in explorer.message
    assert bytes(explorer.chart.value)[:4] == b"\x89PNG"


def test_explorer_follows_the_vocabulary_and_context_sliders():
    explorer = config_explorer(small_config())
    explorer.vocab_size.value = 500
    explorer.block_size.value = 64
    expected = small_config(vocab_size=500, block_size=64)
    assert explorer.summary["params"] == counted_params(expected)
    assert explorer.summary["kv_cache_bytes"] == 2 * 2 * 4 * 8 * 64 * 2  # 2·L·H·D·T·bytes
    assert explorer.summary["flops_per_token"] == flops_per_token(expected, 64)


def test_explorer_untying_adds_an_output_matrix():
    explorer = GPTConfigExplorer(small_config())
    tied = explorer.summary["params"]
    explorer.tie_weights.value = False
    assert explorer.summary["params"] - tied == 96 * 32
    assert explorer.params["lm_head"] == 96 * 32


def test_explorer_explains_an_invalid_config_and_recovers():
    explorer = GPTConfigExplorer(small_config())
    explorer.n_head.value = 3  # 32 is not divisible by 3
    assert explorer.config is None and explorer.figure is None
    assert "n_embd=32 must be divisible by n_head=3" in explorer.message
    assert explorer.chart.value == b""
    explorer.n_head.value = 2
    assert explorer.config == small_config(n_head=2)
    assert explorer.figure is not None


def test_explorer_drops_a_kv_grouping_that_no_longer_fits():
    explorer = GPTConfigExplorer(small_config(n_kv_heads=2))
    assert explorer.config.kv_heads == 2
    explorer.n_head.value = 1
    assert explorer.config.kv_heads == 1 and explorer.config.n_kv_heads is None


def test_config_figure_draws_each_part():
    config = small_config(tie_weights=False)
    fig = config_figure(config, seq_len=16)
    params_ax, flops_ax = fig.axes
    assert [bar.get_width() for bar in params_ax.patches] == [param_breakdown(config)[k] for k in PARAM_PARTS]
    assert [bar.get_width() for bar in flops_ax.patches] == [flops_breakdown(config, 16)[k] for k in FLOP_PARTS]
    assert "T = 16" in flops_ax.get_title()


def test_share_bars_are_percentages_that_sum_to_100():
    fig = share_bars_figure({"a": {"mlp": 3, "norms": 1}, "b": {"mlp": 1, "norms": 1, "lm_head": 0}},
                            PARAM_PARTS, title="shares")
    ax = fig.axes[0]
    widths = [bar.get_width() for bar in ax.patches]
    assert widths == pytest.approx([75, 50, 25, 50])  # the mlp bars, then the norms bars
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert labels == ["MLP", "norms"]  # parts that are 0 everywhere stay out of the legend


def test_architecture_figure_writes_the_shapes_of_the_batch():
    fig = architecture_figure(small_config(), batch=4, seq_len=8)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "(B, T) = (4, 8)" in texts
    assert "logits (B, T, V) = (4, 8, 96)" in texts
    assert any("Block × 2" in t for t in texts)


def test_figures_leave_pyplot_state_alone():
    before = plt.get_fignums()
    config_figure(small_config())
    architecture_figure(small_config())
    share_bars_figure({"a": param_breakdown(small_config())}, PARAM_PARTS, title="t")
    assert plt.get_fignums() == before
