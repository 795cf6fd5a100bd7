"""Figures of chapter 17's induction heads: the phase change, the two heads' patterns, their scores,
and the context window's edge.

Each function draws one `Figure` from numbers `llmcourse.induction` computes (or a recording of
them), so the page can draw the same pictures from a recorded run as from a live one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from matplotlib.figure import Figure
from torch import Tensor

from llmcourse.checks import ArgumentError
from llmcourse.induction import InductionHistory
from llmcourse.plots import BAR_COLOR, HIGHLIGHT_COLOR

__all__ = ["gap_figure", "head_scores_figure", "induction_pattern_figure", "phase_change_figure"]

ATTENTION_CMAP = "viridis"


def _smooth(values: Sequence[float], window: int) -> list[float]:
    """A running mean over `window` steps (each batch has its own length and gap, so single steps are noisy)."""
    series = torch.as_tensor(values, dtype=torch.float64)
    if window <= 1 or len(series) < window:
        return series.tolist()
    kernel = torch.ones(1, 1, window, dtype=torch.float64) / window
    return torch.nn.functional.conv1d(series[None, None], kernel).flatten().tolist()


def phase_change_figure(history: InductionHistory, vocab_size: int, smooth: int = 25) -> Figure:
    """Loss over training steps on the first copy and on the repeat, with ln V dashed.

    The first copy stays at ln V (random tokens); the repeat's loss falls abruptly once the
    induction head forms: the "phase change" of Olsson et al. (2022).
    """
    if not history.second_half:
        raise ArgumentError("the history is empty: train for at least one step")
    fig = Figure(figsize=(6.8, 3.8), layout="constrained")
    ax = fig.add_subplot()
    first, repeat = _smooth(history.first_half, smooth), _smooth(history.second_half, smooth)
    offset = (len(history.first_half) - len(first))  # the running mean starts at step window - 1
    ax.plot(range(offset, offset + len(first)), first, color=BAR_COLOR, label="first copy (random tokens)")
    ax.plot(range(offset, offset + len(repeat)), repeat, color=HIGHLIGHT_COLOR, label="repeat (copyable)")
    ax.axhline(math.log(vocab_size), color="0.4", linestyle="--", label=f"ln V = ln {vocab_size} = {math.log(vocab_size):.2f}")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"loss (nats per token, mean of {smooth} steps)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="lower left")
    ax.set_title("The phase change: copying appears suddenly")
    return fig


def induction_pattern_figure(patterns: Tensor, previous_head: tuple[int, int], induction_head: tuple[int, int],
                             length: int) -> Figure:
    """The previous-token head and the induction head side by side, on `repeated_sequences` of `length`.

    patterns: `(L, H, T, T)` from `attention_patterns`; each head is given as (layer, head).
    The induction head's stripe (query t -> key t - length + 1) is labelled.
    """
    if patterns.dim() != 4 or patterns.shape[-1] < 2 * length:
        raise ArgumentError(f"expected patterns (L, H, T, T) with T >= 2 * length = {2 * length}, "
                            f"got {tuple(patterns.shape)}")
    fig = Figure(figsize=(10.0, 4.8), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, (layer, head), name in zip(axes, (previous_head, induction_head), ("previous-token head", "induction head")):
        image = ax.imshow(patterns[layer, head].numpy(), cmap=ATTENTION_CMAP, vmin=0.0, vmax=1.0)
        ax.set_title(f"{name}: layer {layer}, head {head}")
        ax.set_xlabel("key position (attended to)")
        ax.set_ylabel("query position (attending)")
        ax.axhline(length - 0.5, color="white", linewidth=0.8, linestyle=":")
    axes[0].annotate("t → t − 1", xy=(length // 2 - 1, length // 2), xytext=(length, length // 3),
                     color="white", arrowprops={"arrowstyle": "->", "color": "white"})
    stripe = (length + length // 2, length // 2 + 1)  # (query, key) on the stripe t -> t - length + 1
    axes[1].annotate(f"t → t − {length - 1}\n(the token after the\nearlier copy of token t)",
                     xy=(stripe[1], stripe[0]), xytext=(stripe[1] + length // 2, stripe[0] - length),
                     color="white", arrowprops={"arrowstyle": "->", "color": "white"})
    fig.colorbar(image, ax=axes, shrink=0.8, label="attention weight")
    return fig


def head_scores_figure(previous_scores: Tensor, induction_scores: Tensor) -> Figure:
    """Each head's previous-token score and induction score as bars, one group per (layer, head)."""
    if previous_scores.shape != induction_scores.shape or previous_scores.dim() != 2:
        raise ArgumentError(f"expected two (L, H) score tensors, got {tuple(previous_scores.shape)} "
                            f"and {tuple(induction_scores.shape)}")
    n_layer, n_head = previous_scores.shape
    names = [f"L{layer}H{head}" for layer in range(n_layer) for head in range(n_head)]
    positions = torch.arange(len(names), dtype=torch.float64)
    fig = Figure(figsize=(max(5.0, 0.8 * len(names) + 1.5), 3.6), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(positions - 0.2, previous_scores.flatten().tolist(), width=0.4, color=BAR_COLOR, label="previous-token score")
    ax.bar(positions + 0.2, induction_scores.flatten().tolist(), width=0.4, color=HIGHLIGHT_COLOR, label="induction score")
    ax.set_xticks(positions.tolist(), names)
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean attention weight")
    ax.set_xlabel("layer and head")
    ax.legend(loc="upper left")
    return fig


def gap_figure(gaps: Sequence[int], losses: Tensor | Sequence[float], block_size: int, length: int,
               vocab_size: int) -> Figure:
    """Loss on the repeat against the gap between the two copies, with the window's edge marked.

    The induction head copies the first occurrence's successor, length + gap - 1 positions back,
    and finds it by the token before it, length + gap positions back. With a sliding window of
    block_size tokens both are inside only while gap < block_size - length: at gap =
    block_size - length the successor is still in the window but its predecessor is not, and
    copying stops. The edge is drawn halfway between the last copyable gap and the first that is not.
    """
    losses = torch.as_tensor(losses, dtype=torch.float64)
    if len(gaps) != len(losses):
        raise ArgumentError(f"one loss per gap: got {len(gaps)} gaps and {len(losses)} losses")
    fig = Figure(figsize=(6.4, 3.6), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(list(gaps), losses.tolist(), marker="o", color=BAR_COLOR, label="loss on the repeat")
    edge = block_size - length  # the first gap at which copying is impossible
    ax.axvline(edge - 0.5, color=HIGHLIGHT_COLOR, linestyle=":",
               label=f"first copy leaves the window (gap ≥ {block_size} − {length})")
    ax.axhline(math.log(vocab_size), color="0.4", linestyle="--", label=f"ln V = {math.log(vocab_size):.2f}")
    ax.set_xlabel("filler tokens between the two copies (gap)")
    ax.set_ylabel("loss (nats per token)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", fontsize=8)
    return fig
