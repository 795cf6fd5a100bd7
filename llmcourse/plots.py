"""Figures for the book: small functions that each draw one picture and return it.

Every function builds its own `matplotlib.figure.Figure` with the object API (no `pyplot`, no
global state), so calling one never changes another figure, and the caller decides what to do
with the result: show it in a notebook (`display(fig)`), save it (`fig.savefig(...)`) or turn it
into PNG bytes for a widget (`figure_to_png`).

Characters are shown with visible stand-ins (`char_label`): a space is drawn as "␣" and a newline
as "↵", because an empty tick label would hide the most frequent characters of any text.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import torch
from matplotlib import colormaps
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure

# Invisible characters get a visible glyph (all of these exist in matplotlib's default font).
_VISIBLE_STAND_INS = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "⏎"}

HIGHLIGHT_COLOR = "tab:orange"
BAR_COLOR = "tab:blue"


def char_label(char: str) -> str:
    """A printable label for one character (or token): whitespace becomes a visible symbol."""
    return "".join(_VISIBLE_STAND_INS.get(c, c) for c in char)


def figure_to_png(fig: Figure, dpi: int = 100) -> bytes:
    """Render a figure to PNG bytes (for an `ipywidgets.Image`, or to save by hand)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _as_float_tensor(values: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """A detached float64 CPU copy, so plotting never touches autograd or the GPU."""
    return torch.as_tensor(values).detach().to(device="cpu", dtype=torch.float64)


def bigram_heatmap(
    matrix: torch.Tensor,
    labels: Sequence[str],
    *,
    keep: Sequence[str] | None = None,
    log_color: bool = True,
    title: str | None = None,
    colorbar_label: str = "P(next | current)",
) -> Figure:
    """Draw a bigram table as a heatmap: row = current character, column = next character.

    Args:
        matrix: `(V, V)` counts or probabilities; `matrix[a, b]` is about "b follows a".
        labels: the `V` characters (or tokens) in index order, e.g. `vocab.itos`.
        keep: draw only these characters (rows and columns, in this order), to keep the picture
            readable; `None` draws all `V`. Rows of a probability table then no longer sum to 1.
        log_color: colour on a log scale, so that rare pairs are visible next to common ones;
            zero entries (pairs never seen) have no logarithm and are drawn white.
        title: the axes title.
        colorbar_label: what the colour means.

    Returns:
        The figure; its single heatmap is `fig.axes[0].images[0]`, whose data is the drawn
        `(K, K)` sub-table.
    """
    table = _as_float_tensor(matrix)
    if table.ndim != 2 or table.shape[0] != table.shape[1]:
        raise ValueError(
            f"matrix must be a square (V, V) table, got shape {tuple(table.shape)}; "
            "pass counts or probabilities indexed [current, next]"
        )
    if len(labels) != table.shape[0]:
        raise ValueError(
            f"labels has {len(labels)} entries but the matrix is {table.shape[0]} x "
            f"{table.shape[0]}; pass one label per row, e.g. vocab.itos"
        )
    shown = list(labels) if keep is None else list(keep)
    index_of = {label: i for i, label in enumerate(labels)}
    missing = [label for label in shown if label not in index_of]
    if missing:
        raise ValueError(
            f"keep contains {missing!r}, which are not in labels; keep only characters of the vocabulary"
        )
    rows = torch.tensor([index_of[label] for label in shown], dtype=torch.long)
    sub_table = table[rows][:, rows].numpy()

    positive = sub_table[sub_table > 0]
    if log_color and positive.size > 0:
        norm = LogNorm(vmin=positive.min(), vmax=positive.max())
    else:
        norm = Normalize(vmin=0.0, vmax=max(float(sub_table.max()), 1e-12))

    size = 2.5 + 0.22 * len(shown)
    fig = Figure(figsize=(size + 1.2, size), layout="constrained")
    ax = fig.add_subplot()
    # A log norm masks zeros; the colour map's "bad" colour decides how they look.
    cmap = colormaps["viridis"].with_extremes(bad="white")
    image = ax.imshow(sub_table, cmap=cmap, norm=norm, interpolation="nearest")
    ticks = range(len(shown))
    tick_labels = [char_label(label) for label in shown]
    ax.set_xticks(ticks, tick_labels, fontsize=8)
    ax.set_yticks(ticks, tick_labels, fontsize=8)
    ax.xaxis.tick_top()
    ax.xaxis.set_label_position("top")
    ax.set_xlabel("next character")
    ax.set_ylabel("current character")
    if title:
        ax.set_title(title, pad=12)
    fig.colorbar(image, ax=ax, label=colorbar_label, shrink=0.8)
    return fig


def next_token_bars(
    probs: torch.Tensor | Sequence[float],
    labels: Sequence[str],
    *,
    top_k: int | None = None,
    highlight: str | None = None,
    title: str | None = None,
    xlabel: str = "next token",
) -> Figure:
    """Bar chart of a next-token distribution, most probable first.

    Args:
        probs: `(V,)` probabilities of each possible next token.
        labels: the `V` tokens in index order.
        top_k: show only the `top_k` most probable tokens (`None`: all of them).
        highlight: a token to draw in a different colour (e.g. the one that was sampled); it is
            only highlighted if it is among the bars shown.
        title: the axes title.
        xlabel: the x-axis label (e.g. "next character").

    Returns:
        The figure; `fig.axes[0].patches` are the bars, tallest first.
    """
    p = _as_float_tensor(probs)
    if p.ndim != 1 or len(labels) != p.shape[0]:
        raise ValueError(
            f"probs must have shape (V,) with one label per entry, got probs of shape "
            f"{tuple(p.shape)} and {len(labels)} labels"
        )
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be a positive number of bars or None, got {top_k}")
    k = p.shape[0] if top_k is None else min(top_k, p.shape[0])
    # A stable sort keeps ties in vocabulary order, so the picture is deterministic.
    order = torch.sort(p, descending=True, stable=True).indices[:k]
    heights = p[order].tolist()
    shown = [labels[i] for i in order.tolist()]
    colors = [HIGHLIGHT_COLOR if label == highlight else BAR_COLOR for label in shown]

    fig = Figure(figsize=(max(4.0, 0.32 * k + 1.5), 3.0), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(range(k), heights, color=colors)
    ax.set_xticks(range(k), [char_label(label) for label in shown])
    ax.set_xlim(-0.6, k - 0.4)
    ax.set_ylim(0.0, max(heights) * 1.1 if heights and max(heights) > 0 else 1.0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("probability")
    if title:
        ax.set_title(title)
    return fig


def loss_curve(
    losses: Sequence[float] | torch.Tensor,
    *,
    reference_lines: Mapping[str, float] | None = None,
    title: str | None = None,
    xlabel: str = "training step",
    ylabel: str = "loss (nats per token)",
) -> Figure:
    """Plot a training loss per step, with labelled horizontal reference lines.

    Args:
        losses: the loss at each step (step 0 first).
        reference_lines: `{label: value}`, each drawn as a horizontal line (dashed, dotted, ...)
            and named in the legend with its value, e.g.
            `{"uniform guess, ln V": math.log(V), "counting bigram": 2.45}`.
        title, xlabel, ylabel: the axes text.

    Returns:
        The figure; `fig.axes[0].lines[0]` is the curve, the following lines are the references
        in the order given, and the legend names them all.
    """
    values = _as_float_tensor(losses)
    if values.ndim != 1 or values.numel() == 0:
        raise ValueError(
            f"losses must be a non-empty 1-D sequence of per-step losses, got shape {tuple(values.shape)}"
        )
    fig = Figure(figsize=(6.4, 3.6), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(range(len(values)), values.numpy(), color=BAR_COLOR, label="training loss")
    line_styles = ["--", ":", "-."]
    for i, (label, value) in enumerate((reference_lines or {}).items()):
        ax.axhline(float(value), color=f"C{i + 1}", linestyle=line_styles[i % 3], label=f"{label} ({float(value):.3f})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    if title:
        ax.set_title(title)
    return fig


def generation_loop_diagram(
    context: str,
    candidates: Sequence[tuple[str, float]],
    chosen: str,
    *,
    max_context_chars: int = 28,
) -> Figure:
    """The picture of a language model: context -> model -> next-token distribution -> sample -> append.

    Args:
        context: the text the model is shown (long contexts are cut to their last characters).
        candidates: `(token, probability)` pairs to draw as the distribution, most probable first.
        chosen: the token that was sampled from it and is appended to the context.
        max_context_chars: how many trailing characters of the context to print.

    Returns:
        The figure: a diagram axes `fig.axes[0]` and the distribution's bar axes `fig.axes[1]`.
    """
    if not candidates:
        raise ValueError("candidates is empty; pass at least one (token, probability) pair")
    shown_context = context if len(context) <= max_context_chars else "…" + context[-max_context_chars:]

    fig = Figure(figsize=(9.0, 2.7))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_xlim(0, 9)
    ax.set_ylim(0.3, 3)  # data units: the boxes, arrows and text are placed by x and y below
    ax.axis("off")

    box = dict(boxstyle="round,pad=0.45", facecolor="#eef3fb", edgecolor="#4a6fa5")
    # Spaces stay spaces here (the text reads naturally); only line breaks get a symbol.
    ax.text(1.55, 2.05, f"context\n“{shown_context.replace(chr(10), '↵')}”", ha="center", va="center",
            fontsize=10, family="monospace", bbox=box)
    ax.text(4.2, 2.05, "model\n$P(x_t \\mid x_{<t})$", ha="center", va="center", fontsize=11,
            bbox=dict(box, facecolor="#fdf1e4", edgecolor="#c07a2c"))
    arrow = dict(arrowstyle="-|>", color="0.3", lw=1.4)
    ax.annotate("", xy=(3.4, 2.05), xytext=(3.05, 2.05), arrowprops=arrow)
    ax.annotate("", xy=(5.6, 2.05), xytext=(5.0, 2.05), arrowprops=arrow)
    # The loop: from the distribution back under the boxes to the context.
    ax.annotate("", xy=(1.55, 1.45), xytext=(7.4, 0.85),
                arrowprops=dict(arrow, connectionstyle="angle,angleA=180,angleB=90,rad=8"))
    ax.text(4.5, 0.55, f"sample the next token (“{char_label(chosen)}”), append it to the context, repeat",
            ha="center", va="center", fontsize=10)

    bars = fig.add_axes((0.66, 0.39, 0.32, 0.5))  # figure fractions: right of the model box
    tokens = [token for token, _ in candidates]
    heights = [float(p) for _, p in candidates]
    colors = [HIGHLIGHT_COLOR if token == chosen else BAR_COLOR for token in tokens]
    bars.bar(range(len(tokens)), heights, color=colors)
    bars.set_xticks(range(len(tokens)), [char_label(t) for t in tokens], fontsize=9)
    bars.set_title("next-token distribution", fontsize=9)
    bars.tick_params(axis="y", labelsize=7)
    for side in ("top", "right"):
        bars.spines[side].set_visible(False)
    return fig
