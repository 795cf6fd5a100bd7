"""The attention explorer of chapter 05: see who attends to whom, head by head.

The picture is a heatmap of attention weights (`attention_heatmap`): row i is query token i,
column j is key token j, and the colour is the weight query i gives key j (each row sums to 1).
Cells the causal mask blocks are drawn grey, so "cannot look" is never confused with "chose not
to look". `attention_grid` draws every head of a layer side by side (the page's static figure);
`AttentionExplorer` shows one head at a time and lets a learner switch the sentence, the head,
the causal mask and the 1/√D scaling.

The weights come from the package's own `attention_reference`, fed with the layer's own
projections (`head_weights`), so what the explorer shows is exactly what the layer computes.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from torch import Tensor

from llmcourse.attention import CausalSelfAttention, attention_reference, causal_mask, repeat_kv, split_heads
from llmcourse.checks import check_int
from llmcourse.plots import char_label, figure_to_png
from llmcourse.widgets.explorer import Explorer

__all__ = [
    "AttentionExplorer",
    "attention_explorer",
    "attention_grid",
    "attention_heatmap",
    "head_weights",
    "row_entropy",
]

WEIGHT_CMAP = "Blues"
BLOCKED_COLOR = "0.85"  # light grey: a cell the causal mask forbids

# A sentence in, its token labels and the layer's input vectors (T, C) out.
Embedder = Callable[[str], tuple[Sequence[str], Tensor]]


def row_entropy(weights: Tensor) -> Tensor:
    """Entropy in nats of each row of attention weights: `(..., Tq, Tk) -> (..., Tq)`.

    0 when a query puts all its weight on one key, ln(n) when it spreads evenly over n keys.
    Blocked keys have weight exactly 0 and contribute nothing (0 · log 0 = 0).
    """
    logs = torch.where(weights > 0, weights.log(), torch.zeros_like(weights))
    return -(weights * logs).sum(dim=-1)


@torch.no_grad()
def head_weights(layer: CausalSelfAttention, x: Tensor, *, causal: bool = True, scaled: bool = True) -> Tensor:
    """The attention weights of every head of `layer` for one sequence: x (T, C) -> (H, T, T).

    Uses the layer's own projections (and its RoPE, if it has one) and the package's
    `attention_reference`. `scaled=False` shows what attention would do without the 1/√D:
    multiplying q by √D cancels the division inside `attention_reference`.
    """
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if x.dim() != 3 or x.shape[0] != 1 or x.shape[-1] != layer.n_embd:
        raise ValueError(f"head_weights expects one sequence x of shape (T, C={layer.n_embd}), got {tuple(x.shape)}")
    q = split_heads(layer.q_proj(x), layer.n_head)  # (1, H, T, D)
    k = split_heads(layer.k_proj(x), layer.n_kv_heads)  # (1, H_kv, T, D)
    if layer.rope is not None:
        q, k = layer.rope(q, k)
    k = repeat_kv(k, layer.n_head // layer.n_kv_heads)  # every query head gets its key head
    if not scaled:
        q = q * math.sqrt(layer.head_dim)
    _, weights = attention_reference(q, k, k, causal=causal)  # the values do not change the weights
    return weights[0]


def _draw_weights(
    ax: Axes,
    weights: Tensor,
    query_labels: Sequence[str],
    key_labels: Sequence[str],
    allowed: Tensor | None,
    annotate: bool,
) -> None:
    """One heatmap on `ax`: weights in blue on a 0..1 scale, blocked cells grey."""
    values = weights.detach().to("cpu", torch.float64).numpy()
    cmap = colormaps[WEIGHT_CMAP].with_extremes(bad=BLOCKED_COLOR)
    shown = values if allowed is None else np.ma.masked_where(~allowed.cpu().numpy(), values)
    ax.imshow(shown, cmap=cmap, norm=Normalize(0.0, 1.0), aspect="equal", interpolation="nearest")
    ax.set_xticks(range(len(key_labels)), [char_label(t) for t in key_labels], rotation=90)
    ax.set_yticks(range(len(query_labels)), [char_label(t) for t in query_labels])
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    if annotate:
        for i, j in np.ndindex(values.shape):
            if allowed is None or bool(allowed[i, j]):
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if values[i, j] > 0.6 else "black")


def _check_weights(weights: Tensor, query_labels: Sequence[str], key_labels: Sequence[str]) -> None:
    if weights.dim() != 2:
        raise ValueError(f"weights must be one (Tq, Tk) matrix, got shape {tuple(weights.shape)}")
    if weights.shape != (len(query_labels), len(key_labels)):
        raise ValueError(f"weights of shape {tuple(weights.shape)} need one label per row and column, "
                         f"got {len(query_labels)} query and {len(key_labels)} key labels")


def attention_heatmap(
    weights: Tensor,
    query_labels: Sequence[str],
    key_labels: Sequence[str] | None = None,
    *,
    allowed: Tensor | None = None,
    annotate: bool | None = None,
    title: str | None = None,
) -> Figure:
    """Draw one `(Tq, Tk)` matrix of attention weights: row = query token, column = key token.

    Args:
        weights: `(Tq, Tk)` weights, each row a distribution over the keys.
        query_labels, key_labels: the tokens of the rows and columns (keys default to the queries).
        allowed: optional `(Tq, Tk)` bool mask (as `causal_mask`); False cells are drawn grey.
        annotate: write each weight in its cell (default: only for small matrices, up to 8 keys).
        title: the figure's title.
    """
    key_labels = query_labels if key_labels is None else key_labels
    _check_weights(weights, query_labels, key_labels)
    annotate = len(key_labels) <= 8 if annotate is None else annotate
    side = max(3.0, 0.32 * len(key_labels) + 1.6)
    fig = Figure(figsize=(side + 1.0, max(2.6, 0.32 * len(query_labels) + 1.4)), layout="constrained")
    ax = fig.add_subplot()
    _draw_weights(ax, weights, query_labels, key_labels, allowed, annotate)
    fig.colorbar(ax.images[0], ax=ax, label="attention weight", shrink=0.8)
    if title:
        ax.set_title(title)
    return fig


def attention_grid(
    weights: Tensor,
    labels: Sequence[str],
    *,
    titles: Sequence[str] | None = None,
    allowed: Tensor | None = None,
    annotate: bool | None = None,
    ncols: int | None = None,
    suptitle: str | None = None,
) -> Figure:
    """Draw several `(T, T)` weight matrices side by side, e.g. every head of a layer: weights (H, T, T).

    `annotate` writes each weight in its cell (default: only for small matrices, up to 8 tokens);
    `ncols` panels per row (default: all in one row).
    """
    if weights.dim() != 3:
        raise ValueError(f"attention_grid expects (H, T, T) weights, got shape {tuple(weights.shape)}")
    n_panels = weights.shape[0]
    titles = [f"head {h}" for h in range(n_panels)] if titles is None else list(titles)
    if len(titles) != n_panels:
        raise ValueError(f"got {len(titles)} titles for {n_panels} panels")
    for panel in weights:
        _check_weights(panel, labels, labels)
    annotate = len(labels) <= 8 if annotate is None else annotate
    ncols = n_panels if ncols is None else max(1, min(ncols, n_panels))
    nrows = math.ceil(n_panels / ncols)
    side = max(3.0, 0.17 * len(labels) + 1.2)
    fig = Figure(figsize=(ncols * side + 0.8, nrows * side + 0.6), layout="constrained")
    grid = fig.subplots(nrows, ncols, squeeze=False)
    axes = list(grid.flat[:n_panels])
    for ax in grid.flat[n_panels:]:  # an incomplete last row: hide the empty panels
        ax.set_visible(False)
    for h, ax in enumerate(axes):
        _draw_weights(ax, weights[h], labels, labels, allowed, annotate)
        ax.set_title(titles[h])
        if h % ncols > 0:  # the token labels are the same on every panel: say them once per row
            ax.set_ylabel("")
            ax.set_yticklabels([])
    fig.colorbar(axes[0].images[0], ax=axes, label="attention weight", shrink=0.7)
    if suptitle:
        fig.suptitle(suptitle)
    return fig


class AttentionExplorer(Explorer):
    """Pick a sentence and a head; see that head's attention weights, with or without mask and scaling.

    Controls: `sentence` (dropdown), `head` (dropdown), `causal` (checkbox: the causal mask) and
    `scaled` (checkbox: divide the scores by √D). State readable after any change: `tokens`,
    `all_weights` (H, T, T) for every head, `weights` (T, T) for the head shown, `entropy` (mean
    row entropy of that head, nats), `figure` (the heatmap) and `message`.

    Args:
        layer: the `CausalSelfAttention` whose heads to show.
        embed: `embed(sentence) -> (token labels, x)` with x the layer's input `(T, C)` (token
            embeddings plus positions, or whatever the model feeds this layer).
        sentences: the sentences to choose from.
        head, causal, scaled: the initial settings.
    """

    def __init__(
        self,
        layer: CausalSelfAttention,
        embed: Embedder,
        sentences: Sequence[str],
        *,
        head: int = 0,
        causal: bool = True,
        scaled: bool = True,
    ) -> None:
        sentences = list(sentences)
        if not sentences:
            raise ValueError("sentences is empty: give the explorer at least one sentence to show")
        check_int("head", head, 0, below=layer.n_head, hint=f"this layer has {layer.n_head} heads")
        self.layer = layer
        self.embed = embed
        self.tokens: list[str] = []
        self.all_weights = torch.empty(0)
        self.weights = torch.empty(0)
        self.entropy = float("nan")
        self.figure: Figure | None = None

        self.sentence = widgets.Dropdown(options=sentences, value=sentences[0], description="sentence",
                                         layout=widgets.Layout(width="48em"))
        self.head = widgets.Dropdown(options=[(f"head {h}", h) for h in range(layer.n_head)], value=head,
                                     description="head")
        self.causal = widgets.Checkbox(value=causal, description="causal mask")
        self.scaled = widgets.Checkbox(value=scaled, description="divide by √D")
        self.status = widgets.HTML()
        self.chart = widgets.Image(format="png")
        self.watch(self.sentence, self.head, self.causal, self.scaled)
        super().__init__([self.sentence, widgets.HBox([self.head, self.causal, self.scaled]), self.status, self.chart])
        self.refresh()


    def refresh(self) -> None:
        """Recompute the weights and redraw the heatmap from the current controls."""
        labels, x = self.embed(self.sentence.value)
        self.tokens = list(labels)
        if x.dim() != 2 or x.shape[0] != len(self.tokens):
            raise ValueError(f"embed returned {len(self.tokens)} labels and x of shape {tuple(x.shape)}; "
                             "it must return one label per row of x (T, C)")
        self.all_weights = head_weights(self.layer, x, causal=self.causal.value, scaled=self.scaled.value)
        self.weights = self.all_weights[self.head.value]
        self.entropy = row_entropy(self.weights).mean().item()
        t = len(self.tokens)
        allowed = causal_mask(t) if self.causal.value else None
        mask_text = "causal mask on" if self.causal.value else "NO mask: tokens see the future"
        scale_text = "scores / √D" if self.scaled.value else "unscaled scores"
        self.figure = attention_heatmap(self.weights, self.tokens, allowed=allowed,
                                        title=f"head {self.head.value}: {mask_text}, {scale_text}")
        self.chart.value = figure_to_png(self.figure, dpi=80)
        # A row that spreads evenly over its n visible keys has entropy ln n: the yardstick.
        visible = torch.arange(1, t + 1) if self.causal.value else torch.full((t,), t)
        uniform = visible.double().log().mean().item()
        self.status.value = html.escape(
            f"{t} tokens. Mean entropy of a row: {self.entropy:.2f} nats "
            f"(spreading evenly over the visible keys would give {uniform:.2f}; one key only gives 0)."
        )


# The name the book uses: building the explorer is just constructing it (display it in Jupyter).
attention_explorer = AttentionExplorer
