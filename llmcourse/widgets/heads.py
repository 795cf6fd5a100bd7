"""The attention-head explorer of chapter 06: what each head of a trained model looks at.

`attention_maps` runs a model once with every attention layer switched to the reference
implementation (through the layers' `attention_fn` swap point) and keeps the weights, giving one
`(T, T)` heatmap per layer and head. `head_scores` sums each map up as three numbers (how much a
head looks at the previous token, at the first token, at itself), so that a page can point at the
heads with a recognisable job. `head_heatmap` and `head_grid` draw the maps; `kv_sharing_diagram`
draws which query heads share a key/value head in MHA, GQA and MQA. `HeadExplorer` shows one map
at a time, chosen by layer, head and sentence; the page shows `head_grid` statically beside it.
"""

from __future__ import annotations

import html
from fractions import Fraction
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import ipywidgets as widgets
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch
from torch import Tensor, nn

from llmcourse.attention import CausalSelfAttention, recording_attention
from llmcourse.checks import ArgumentError, check_int
from llmcourse.plots import char_label, figure_to_png
from llmcourse.widgets.explorer import Explorer

__all__ = [
    "HeadExplorer",
    "attention_maps",
    "head_explorer",
    "head_grid",
    "head_heatmap",
    "head_scores",
    "kv_sharing_diagram",
    "token_labels",
]

ATTENTION_CMAP = "viridis"


class TextCodec(Protocol):
    """What the explorer needs from a vocabulary: `CharVocab` and `Tokenizer` both qualify."""

    def encode(self, text: str) -> Any: ...

    def decode(self, ids: Sequence[int]) -> str: ...


# ---------------------------------------------------------------- capturing the weights


@torch.no_grad()
def attention_maps(model: nn.Module, ids: Tensor) -> Tensor:
    """The attention weights of every layer and head of `model` on one sequence.

    ids: `(T,)` or `(1, T)` token ids. Returns `(L, H, T, T)` on the CPU: entry `[l, h, i, j]` is
    how much query position i of head h in layer l attends to key position j (each row sums to 1).

    Every `CausalSelfAttention` inside `model` records its weights for this one forward pass
    (`attention.recording_attention`: `attention_reference` in place of the fused kernel, which
    never materialises them); the original functions and the train/eval mode come back afterwards.
    """
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise ValueError(f"attention_maps expects one sequence of ids, (T,) or (1, T), got shape {tuple(ids.shape)}")
    with recording_attention(model) as weights:
        model(ids)
    # one (1, H, T, T) tensor per layer, in the order the layers ran
    return torch.cat(weights, dim=0).float().cpu()


def head_scores(weights: Tensor) -> dict[str, Tensor]:
    """Three summaries of attention maps `(..., T, T)`, each `(...)`, averaged over queries 1..T-1.

    previous: the weight a query gives the token just before it, `w[i, i-1]`;
    first:    the weight it gives the first token, `w[i, 0]`;
    self:     the weight it gives itself, `w[i, i]`.
    Query 0 is left out: it can see only itself, so all three would be trivially 1 there. For a
    uniform causal head (every visible token weighted equally) `first` is the mean of 1/(i+1).
    """
    if weights.dim() < 2 or weights.shape[-1] != weights.shape[-2] or weights.shape[-1] < 2:
        raise ValueError(f"head_scores expects square attention maps (..., T, T) with T >= 2, got {tuple(weights.shape)}")
    positions = torch.arange(1, weights.shape[-1], device=weights.device)
    return {
        "previous": weights[..., positions, positions - 1].mean(dim=-1),
        "first": weights[..., positions, 0].mean(dim=-1),
        "self": weights[..., positions, positions].mean(dim=-1),
    }


def token_labels(codec: TextCodec, ids: Sequence[int] | Tensor) -> list[str]:
    """One readable tick label per token: its text, with whitespace drawn visibly ("␣", "↵")."""
    return [char_label(codec.decode([int(i)])) for i in ids]


# ---------------------------------------------------------------- pictures


def _draw_map(ax: Any, weights: Tensor, labels: Sequence[str], fontsize: float) -> Any:
    image = ax.imshow(weights.detach().float().cpu().numpy(), cmap=ATTENTION_CMAP, vmin=0.0, vmax=1.0)
    ticks = range(len(labels))
    ax.set_xticks(ticks, labels, fontsize=fontsize)
    ax.set_yticks(ticks, labels, fontsize=fontsize)
    ax.tick_params(length=0)
    return image


def head_heatmap(weights: Tensor, labels: Sequence[str], title: str = "") -> Figure:
    """One head's attention map `(T, T)`: row = the query (the token looking), column = the key."""
    if weights.dim() != 2 or weights.shape[0] != weights.shape[1] or weights.shape[0] != len(labels):
        raise ValueError(f"head_heatmap expects a (T, T) map and T labels, got {tuple(weights.shape)} "
                         f"and {len(labels)} labels")
    size = min(9.0, 2.5 + 0.17 * len(labels))
    fig = Figure(figsize=(size + 1.2, size), layout="constrained")
    ax = fig.add_subplot()
    image = _draw_map(ax, weights, labels, fontsize=9)
    ax.set_xlabel("key: the token attended to")
    ax.set_ylabel("query: the token attending")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, shrink=0.8, label="attention weight")
    return fig


def head_grid(maps: Tensor, labels: Sequence[str], title: str = "", scores: bool = True) -> Figure:
    """Every head's map at once: `maps` `(L, H, T, T)` drawn as L rows (layers) by H columns (heads).

    With `scores`, each panel's title gives the head's `previous` and `first` scores (see `head_scores`).
    """
    if maps.dim() != 4 or maps.shape[-1] != len(labels):
        raise ValueError(f"head_grid expects maps (L, H, T, T) and T labels, got {tuple(maps.shape)} and {len(labels)} labels")
    n_layers, n_heads = maps.shape[:2]
    fig = Figure(figsize=(2.6 * n_heads + 0.8, 2.75 * n_layers + 0.5), layout="constrained")
    axes = fig.subplots(n_layers, n_heads, squeeze=False)
    summary = head_scores(maps)
    fontsize = 5.5 if len(labels) > 24 else 7
    for layer in range(n_layers):
        for head in range(n_heads):
            ax = axes[layer][head]
            image = _draw_map(ax, maps[layer, head], labels, fontsize=fontsize)
            heading = f"layer {layer}, head {head}"
            if scores:
                heading += (f"\nprev {summary['previous'][layer, head]:.2f} · "
                            f"first {summary['first'][layer, head]:.2f}")
            ax.set_title(heading, fontsize=9)
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention weight")
    if title:
        fig.suptitle(title)
    return fig


def kv_sharing_diagram(n_heads: int = 8, kv_head_counts: Sequence[int] = (8, 2, 1)) -> Figure:
    """Which query heads share which key/value head, one panel per kv-head count.

    Query head h uses kv head h // (n_heads / n_kv), the grouping of `repeat_kv`. n_kv = n_heads is
    multi-head attention, 1 is multi-query, anything between is grouped-query attention.
    """
    check_int("n_heads", n_heads, 1)
    for n_kv in kv_head_counts:
        if n_heads % check_int("kv_head_counts entry", n_kv, 1):
            raise ArgumentError(f"every kv head count must divide n_heads={n_heads}, got {n_kv}")
    fig = Figure(figsize=(4.2 * len(kv_head_counts), 3.0), layout="constrained")
    axes = fig.subplots(1, len(kv_head_counts), squeeze=False)[0]
    palette = colormaps["tab10"]
    for ax, n_kv in zip(axes, kv_head_counts):
        group = n_heads // n_kv
        kv_x = [g * group + (group - 1) / 2 for g in range(n_kv)]  # each kv head under its group's centre
        for h in range(n_heads):
            colour = palette((h // group) % 10)
            ax.plot([h, kv_x[h // group]], [1.0, 0.0], color=colour, linewidth=1.5, zorder=1)
            ax.add_patch(_box(h, 1.0, colour, fill=False))
            ax.text(h, 1.0, f"q{h}", ha="center", va="center", fontsize=8)
        for g, x in enumerate(kv_x):
            ax.add_patch(_box(x, 0.0, palette(g % 10), fill=True))
            ax.text(x, 0.0, f"kv{g}", ha="center", va="center", fontsize=8, color="white")
        name = "MHA" if n_kv == n_heads else "MQA" if n_kv == 1 else "GQA"
        ax.set_title(f"{name}: {n_heads} query heads, {n_kv} kv head{'s' if n_kv > 1 else ''}\n"
                     f"KV cache: {Fraction(n_kv, n_heads)} × MHA's", fontsize=10)
        ax.set_xlim(-0.8, n_heads - 0.2)
        ax.set_ylim(-0.45, 1.45)
        ax.set_yticks([0.0, 1.0], ["keys/values", "queries"])
        ax.set_xticks([])
        for side in ("top", "right", "bottom", "left"):
            ax.spines[side].set_visible(False)
    return fig


def _box(x: float, y: float, colour: Any, fill: bool) -> FancyBboxPatch:
    """A rounded box centred on (x, y): filled for a key/value head, outlined for a query head."""
    return FancyBboxPatch((x - 0.35, y - 0.17), 0.7, 0.34, boxstyle="round,pad=0.02",
                          facecolor=colour if fill else "white", edgecolor=colour, linewidth=1.5, zorder=2)


# ---------------------------------------------------------------- the explorer


class HeadExplorer(Explorer):
    """Choose a layer, a head and a sentence; see that head's attention map on that sentence.

    Controls: `layer` and `head` (dropdowns), `sentence` (a combo box: pick an example or type).
    State after any change: `maps` (`(L, H, T, T)` for the sentence), `weights` (the `(T, T)` map
    shown), `labels` (the tokens), `scores` (that head's `head_scores`), `figure` and `message`
    (explains a sentence the vocabulary cannot encode).

    Args:
        model: a model containing `CausalSelfAttention` layers, e.g. `llmcourse.model.GPT`.
        codec: its vocabulary (`CharVocab` or `Tokenizer`): `encode(text)` and `decode(ids)`.
        sentences: example sentences offered in the combo box; the first is shown initially.
        max_tokens: the longest sentence (in tokens) accepted, at most the model's context.
    """

    def __init__(self, model: nn.Module, codec: TextCodec, sentences: Sequence[str], *, max_tokens: int = 64) -> None:
        if not sentences:
            raise ValueError("give at least one example sentence")
        self.model = model
        self.codec = codec
        self.max_tokens = max_tokens
        self.maps: Tensor | None = None
        self.weights: Tensor | None = None
        self.labels: list[str] = []
        self.scores: dict[str, float] = {}
        self.figure: Figure | None = None
        self._maps_for: str | None = None  # the sentence `maps` belongs to (no recompute on a head change)

        layers = [m for m in model.modules() if isinstance(m, CausalSelfAttention)]
        if not layers:
            raise ValueError(f"{type(model).__name__} has no CausalSelfAttention layers to explore")
        self.layer = widgets.Dropdown(options=list(range(len(layers))), value=0, description="layer")
        self.head = widgets.Dropdown(options=list(range(layers[0].n_head)), value=0, description="head")
        self.sentence = widgets.Combobox(value=sentences[0], options=list(sentences), ensure_option=False,
                                         description="sentence", layout=widgets.Layout(width="40em"))
        self.status = widgets.HTML()
        self.chart = widgets.Image(format="png")
        self.watch(self.layer, self.head, self.sentence)
        super().__init__([widgets.HBox([self.layer, self.head]), self.sentence, self.status, self.chart])
        self.refresh()


    def refresh(self) -> None:
        """Recompute (if the sentence changed) and redraw the chosen head's map."""
        text = self.sentence.value
        if text != self._maps_for:
            problem = self._compute_maps(text)
            if problem:
                self._show_problem(problem)
                return
        assert self.maps is not None
        layer, head = self.layer.value, self.head.value
        self.weights = self.maps[layer, head]
        self.scores = {name: float(value) for name, value in head_scores(self.weights).items()}
        self.figure = head_heatmap(self.weights, self.labels, title=f"layer {layer}, head {head}")
        self.chart.value = figure_to_png(self.figure, dpi=80)
        self.status.value = (f"{len(self.labels)} tokens. Average weight on the previous token "
                             f"{self.scores['previous']:.2f}, on the first token {self.scores['first']:.2f}, "
                             f"on itself {self.scores['self']:.2f}.")

    def _compute_maps(self, text: str) -> str:
        """Fill `maps` and `labels` for `text`; return an error message instead if it cannot."""
        self._maps_for = None
        if not text:
            return "Type a sentence (at least two tokens)."
        try:
            ids = torch.as_tensor(self.codec.encode(text), dtype=torch.long)
        except (ValueError, KeyError) as error:
            return html.escape(str(error))
        if not 2 <= len(ids) <= self.max_tokens:
            return f"The sentence has {len(ids)} tokens; use between 2 and {self.max_tokens}."
        device = next(self.model.parameters()).device
        self.maps = attention_maps(self.model, ids.to(device))
        self.labels = token_labels(self.codec, ids.tolist())
        self._maps_for = text
        return ""

    def _show_problem(self, message: str) -> None:
        self.maps = self.weights = self.figure = None
        self.labels, self.scores = [], {}
        self.chart.value = b""
        self.status.value = f'<span style="color: #b00">{message}</span>'


# The name the book uses: building the explorer is just constructing it (display it in Jupyter).
head_explorer: Callable[..., HeadExplorer] = HeadExplorer
