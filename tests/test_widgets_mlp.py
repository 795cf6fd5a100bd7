"""The MoE routing explorer of chapter 07 (`llmcourse.widgets.mlp`).

Routing statistics are checked against a naive per-token computation; the explorer is driven by
setting its controls' values, as a learner would, and its state is checked after each change.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest
import torch

from llmcourse.widgets.mlp import (
    MAX_EXPERTS, MoERoutingExplorer, moe_routing_explorer, routing_figure, routing_stats, synthetic_router_logits,
)


def naive_routing(logits: torch.Tensor, k: int, renormalize: bool):
    """Per-token loop: dense weights (N, E), load f (E,), mean probability P (E,), E·Σ f·P."""
    n, e = logits.shape
    probs = torch.softmax(logits.double(), dim=-1)
    dense = torch.zeros(n, e, dtype=torch.float64)
    counts = torch.zeros(e, dtype=torch.float64)
    for i in range(n):
        order = sorted(range(e), key=lambda j: -logits[i, j].item())[:k]
        chosen = logits[i, order].double()
        w = torch.softmax(chosen, 0) if renormalize else probs[i, order]
        for j, weight in zip(order, w):
            dense[i, j] = weight
            counts[j] += 1
    load = counts / (n * k)
    mean_prob = probs.mean(0)
    return dense, load, mean_prob, e * (load * mean_prob).sum().item()


@pytest.mark.parametrize("k, renormalize", [(1, True), (2, True), (2, False), (3, False)])
def test_routing_stats_match_a_naive_loop(k, renormalize):
    logits = torch.randn(40, 6, generator=torch.Generator().manual_seed(k))
    stats = routing_stats(logits, k, renormalize)
    dense, load, mean_prob, aux = naive_routing(logits, k, renormalize)
    torch.testing.assert_close(stats.dense.double(), dense, atol=1e-6, rtol=0)
    torch.testing.assert_close(stats.load.double(), load)
    torch.testing.assert_close(stats.mean_prob.double(), mean_prob, atol=1e-6, rtol=0)
    assert stats.aux_loss == pytest.approx(aux, abs=1e-5)
    assert stats.experts.shape == (40, k) and stats.n_experts == 6
    row_sums = stats.dense.sum(1)
    if renormalize:
        torch.testing.assert_close(row_sums, torch.ones(40))
    else:
        assert (row_sums < 1).all()


def test_synthetic_logits_keep_existing_experts_and_favour_expert_zero():
    four = synthetic_router_logits(4, seed=3)
    eight = synthetic_router_logits(8, seed=3)
    torch.testing.assert_close(eight[:, :4], four)
    favoured = synthetic_router_logits(4, seed=3, favour=2.0)
    torch.testing.assert_close(favoured[:, 0], four[:, 0] + 2.0)
    torch.testing.assert_close(favoured[:, 1:], four[:, 1:])
    with pytest.raises(ValueError, match=r"n_experts=.* must be an integer in \[1, "):
        synthetic_router_logits(MAX_EXPERTS + 1)


def test_routing_figure_draws_the_weights_and_the_load_without_pyplot_state():
    before = plt.get_fignums()
    logits = torch.randn(30, 5, generator=torch.Generator().manual_seed(0))
    fig = routing_figure(logits, 2, token_labels=list("abcdefghijklmnopqrstuvwxyz0123"), max_tokens=10)
    assert plt.get_fignums() == before
    heat, load_ax, _ = fig.axes  # heatmap, the load bars, the colour bar
    image = heat.images[0].get_array()
    stats = routing_stats(logits, 2)
    assert image.shape == (10, 5)
    shown = torch.tensor(image.filled(0.0))
    torch.testing.assert_close(shown.float(), stats.dense[:10])
    assert [t.get_text() for t in heat.get_yticklabels()] == list("abcdefghij")
    heights = [bar.get_height() for bar in load_ax.patches]
    assert heights == pytest.approx(stats.load.tolist())
    assert f"{stats.aux_loss:.3f}" in fig.get_suptitle()
    with pytest.raises(ValueError, match="token_labels"):
        routing_figure(logits, 2, token_labels=["a"])


def test_explorer_follows_its_controls():
    explorer = moe_routing_explorer(n_experts=8, top_k=2, n_tokens=200)
    assert isinstance(explorer, MoERoutingExplorer)
    assert explorer.stats.dense.shape == (200, 8)
    assert explorer.stats.aux_loss == pytest.approx(1.0, abs=0.1)
    assert explorer.chart.value[:4] == b"\x89PNG"

    explorer.favour.value = 4.0                     # collapse towards expert 0
    assert explorer.stats.load[0] > 0.45
    assert explorer.stats.aux_loss > 1.5
    assert "expert 0" in explorer.message

    explorer.n_experts.value = 3                    # k's slider follows the number of experts
    assert explorer.top_k.max == 3
    assert explorer.logits.shape == (200, 3)
    explorer.top_k.value = 3
    torch.testing.assert_close(explorer.stats.load, torch.full((3,), 1 / 3))  # everyone uses every expert

    explorer.n_experts.value = 2                    # value above the new max is clamped
    assert explorer.top_k.value == 2 and explorer.stats.experts.shape == (200, 2)

    explorer.renormalize.value = False              # Switch's weights: below 1 per token
    explorer.top_k.value = 1
    assert (explorer.stats.dense.sum(1) < 1).all()
    explorer.renormalize.value = True
    torch.testing.assert_close(explorer.stats.dense.sum(1), torch.ones(200))
