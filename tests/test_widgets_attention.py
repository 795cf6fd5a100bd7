"""The chapter 05 attention explorer and its figures, checked without a kernel.

The weights the explorer shows are compared with attention computed independently here, one
head at a time with plain matmuls and an explicit triangular mask; the controls are driven by
setting their `.value`, as a learner would.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from llmcourse.attention import CausalSelfAttention
from llmcourse.widgets.attention import (
    AttentionExplorer,
    attention_explorer,
    attention_grid,
    attention_heatmap,
    head_weights,
    row_entropy,
)

N_EMBD, N_HEAD = 16, 4
SENTENCES = ["the red car", "a cat sat on the mat", "abcdefghij"]


def make_layer(n_kv_heads=None, seed=0) -> CausalSelfAttention:
    torch.manual_seed(seed)
    return CausalSelfAttention(N_EMBD, N_HEAD, n_kv_heads).eval()


TABLE = torch.randn(128, N_EMBD, generator=torch.Generator().manual_seed(1))


def embed(sentence: str):
    """One token per character; x is a fixed random vector per character plus a position term."""
    ids = torch.tensor([ord(c) for c in sentence])
    positions = torch.arange(len(sentence)).float()[:, None] * 0.1
    return list(sentence), TABLE[ids] + positions


def independent_weights(layer, x, head, causal=True, scaled=True):
    """softmax(q kᵀ / √D) for one head, written out with its own mask (no package attention code)."""
    d = layer.head_dim
    with torch.no_grad():
        q = layer.q_proj(x)[:, head * d:(head + 1) * d]
        kv_head = head // (layer.n_head // layer.n_kv_heads)
        k = layer.k_proj(x)[:, kv_head * d:(kv_head + 1) * d]
    scores = q @ k.T / (math.sqrt(d) if scaled else 1.0)
    if causal:
        t = x.shape[0]
        future = torch.arange(t)[None, :] > torch.arange(t)[:, None]
        scores = scores.masked_fill(future, float("-inf"))
    return torch.softmax(scores, dim=-1)


@pytest.mark.parametrize("n_kv_heads", [None, 2, 1])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("scaled", [True, False])
def test_head_weights_match_an_independent_computation(n_kv_heads, causal, scaled):
    layer = make_layer(n_kv_heads)
    _, x = embed("a cat sat on the mat")
    weights = head_weights(layer, x, causal=causal, scaled=scaled)
    assert weights.shape == (N_HEAD, len("a cat sat on the mat"), len("a cat sat on the mat"))
    for head in range(N_HEAD):
        torch.testing.assert_close(weights[head], independent_weights(layer, x, head, causal, scaled))


def test_head_weights_rejects_the_wrong_width():
    with pytest.raises(ValueError, match="C=16"):
        head_weights(make_layer(), torch.randn(5, 8))


def test_row_entropy_is_zero_for_one_hot_and_log_n_for_uniform():
    weights = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    torch.testing.assert_close(row_entropy(weights), torch.tensor([0.0, math.log(2), math.log(3)]))


def test_explorer_shows_the_chosen_head_and_reacts_to_every_control():
    layer = make_layer()
    explorer = attention_explorer(layer, embed, SENTENCES, head=1)
    assert isinstance(explorer, AttentionExplorer)
    labels, x = embed(SENTENCES[0])
    assert explorer.tokens == labels
    torch.testing.assert_close(explorer.weights, independent_weights(layer, x, 1))
    assert bytes(explorer.chart.value).startswith(b"\x89PNG")
    first_png = bytes(explorer.chart.value)

    explorer.head.value = 3
    torch.testing.assert_close(explorer.weights, independent_weights(layer, x, 3))
    assert bytes(explorer.chart.value) != first_png

    explorer.sentence.value = SENTENCES[1]
    labels, x = embed(SENTENCES[1])
    assert explorer.tokens == labels
    torch.testing.assert_close(explorer.weights, independent_weights(layer, x, 3))

    explorer.causal.value = False
    torch.testing.assert_close(explorer.weights, independent_weights(layer, x, 3, causal=False))
    assert explorer.weights.triu(diagonal=1).sum() > 0, "without the mask a token sees the future"
    assert "NO mask" in explorer.figure.axes[0].get_title()

    explorer.scaled.value = False
    torch.testing.assert_close(explorer.weights, independent_weights(layer, x, 3, causal=False, scaled=False))
    torch.testing.assert_close(torch.tensor(explorer.entropy), row_entropy(explorer.weights).mean())


def test_explorer_causal_weights_are_zero_above_the_diagonal_and_rows_sum_to_one():
    explorer = attention_explorer(make_layer(), embed, SENTENCES)
    explorer.sentence.value = SENTENCES[2]
    weights = explorer.weights
    assert torch.all(weights.triu(diagonal=1) == 0)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(len(SENTENCES[2])))
    assert "nats" in explorer.message


def test_unscaled_scores_give_sharper_rows_on_average():
    # With D = 4 the scaling divides by 2: unscaled softmax is sharper, so its entropy is lower.
    explorer = attention_explorer(make_layer(), embed, SENTENCES)
    explorer.sentence.value = SENTENCES[2]
    scaled_entropy = row_entropy(explorer.all_weights).mean()
    explorer.scaled.value = False
    assert row_entropy(explorer.all_weights).mean() < scaled_entropy


def test_explorer_rejects_bad_arguments():
    layer = make_layer()
    with pytest.raises(ValueError, match="empty"):
        attention_explorer(layer, embed, [])
    with pytest.raises(ValueError, match=r"head=4 must be an integer in \[0, 4\) \(this layer has 4 heads\)"):
        attention_explorer(layer, embed, SENTENCES, head=4)
    with pytest.raises(ValueError, match="one label per row"):
        attention_explorer(layer, lambda s: (["x"], torch.randn(3, N_EMBD)), SENTENCES)


def test_heatmap_draws_the_weights_labels_and_grey_blocked_cells():
    weights = torch.tensor([[1.0, 0.0, 0.0], [0.3, 0.7, 0.0], [0.2, 0.5, 0.3]])
    allowed = torch.ones(3, 3, dtype=torch.bool).tril()
    before = plt.get_fignums()
    fig = attention_heatmap(weights, ["the", " red", " car"], allowed=allowed, title="toy")
    assert plt.get_fignums() == before, "plots must not touch pyplot's global figures"
    ax = fig.axes[0]
    image = ax.images[0].get_array()
    np.testing.assert_allclose(image.data, weights.numpy(), rtol=1e-6)
    assert image.mask.tolist() == (~allowed).tolist()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["the", "␣red", "␣car"]
    assert ax.get_title() == "toy"
    assert sorted(t.get_text() for t in ax.texts) == sorted(["1.00", "0.30", "0.70", "0.20", "0.50", "0.30"])


def test_heatmap_and_grid_reject_mismatched_labels():
    with pytest.raises(ValueError, match="one label per row"):
        attention_heatmap(torch.eye(3), ["a", "b"])
    with pytest.raises(ValueError, match=r"\(H, T, T\)"):
        attention_grid(torch.eye(3), ["a", "b", "c"])


def test_grid_has_one_panel_per_head():
    weights = torch.softmax(torch.randn(4, 5, 5), dim=-1)
    fig = attention_grid(weights, list("abcde"), suptitle="all heads")
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["head 0", "head 1", "head 2", "head 3"]
    for h, ax in enumerate(panels):
        np.testing.assert_allclose(ax.images[0].get_array(), weights[h].numpy(), rtol=1e-6)


def test_grid_wraps_panels_into_rows_and_hides_unused_ones():
    weights = torch.softmax(torch.randn(3, 4, 4), dim=-1)
    fig = attention_grid(weights, list("abcd"), ncols=2)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 3
    assert [ax.get_visible() for ax in panels] == [True, True, True]
    hidden = [ax for ax in fig.axes if not ax.images and not ax.get_visible()]
    assert len(hidden) == 1
    # the first panel of each row keeps its token labels, the others drop them
    assert [bool(ax.get_yticklabels()[0].get_text()) for ax in panels] == [True, False, True]
