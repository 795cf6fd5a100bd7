"""The rotary-position explorer of chapter 04: one pair of dimensions, turned by position.

RoPE (Su et al. 2021) rotates each pair of a query's and a key's dimensions by an angle
proportional to the token's position. This module draws one such pair as two arrows in the
plane: the query q at position m is turned by m·θ, the key k at position n by n·θ. Their dot
product depends only on the angle *between* the arrows, (m - n)·θ plus the angle they started
with, so moving m and n together turns both arrows and leaves the dot product alone.

`rope_pair_figure` draws the arrows and the dot product against the offset m - n;
`rope_grid_figure` draws a grid of pairs (rows: one offset each, columns: both positions
shifted), the static picture the page shows beside the explorer; `RopePairExplorer` is the live
version with sliders. The rotation itself is the package's `apply_rope` on a 2-D vector.
"""

from __future__ import annotations

from collections.abc import Sequence

import ipywidgets as widgets
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Circle
from torch import Tensor

from llmcourse.checks import check_int
from llmcourse.plots import figure_to_png
from llmcourse.position import apply_rope
from llmcourse.widgets.explorer import Explorer

__all__ = [
    "DEFAULT_KEY",
    "DEFAULT_QUERY",
    "RopePairExplorer",
    "rope_explorer",
    "rope_grid_figure",
    "rope_pair_figure",
    "rotate_pair",
]

QUERY_COLOR = "tab:blue"
KEY_COLOR = "tab:orange"
# Two arrows of different lengths and directions, so that neither hides the other.
DEFAULT_QUERY = (1.0, 0.25)
DEFAULT_KEY = (-0.3, 0.8)


def _as_pair(vector: Tensor | Sequence[float], name: str) -> Tensor:
    """A `(2,)` float64 copy of a 2-D vector, or a clear error."""
    pair = torch.as_tensor(vector, dtype=torch.float64).detach().cpu()
    if pair.shape != (2,):
        raise ValueError(f"{name} must be one pair of dimensions, shape (2,), got shape {tuple(pair.shape)}")
    return pair


def rotate_pair(vector: Tensor | Sequence[float], position: int, theta: float) -> Tensor:
    """Turn a 2-D vector `(2,)` by `position * theta` radians, as RoPE turns one pair: `(2,)` float64.

    A head of size D = 2 has a single pair (dims 0 and 1 = 0 + D/2), so `apply_rope` with the
    angle written for both members of the pair is exactly this rotation.
    """
    angle = torch.tensor(position * theta, dtype=torch.float64)
    cos, sin = angle.cos().repeat(2), angle.sin().repeat(2)  # (D,) = the pair's angle for both dims
    return apply_rope(_as_pair(vector, "vector"), cos, sin)


def _draw_pair(ax: Axes, q: Tensor, k: Tensor, m: int, n: int, theta: float, *, small: bool = False) -> float:
    """Draw q turned to position m and k turned to position n on `ax`; return their dot product."""
    q_m, k_n = rotate_pair(q, m, theta), rotate_pair(k, n, theta)
    reach = 1.15 * float(max(q.norm(), k.norm()))
    for radius in (float(q.norm()), float(k.norm())):  # the circles the arrow tips move on
        ax.add_patch(Circle((0, 0), radius, fill=False, color="0.85", linewidth=1))
    for start, color in ((q, QUERY_COLOR), (k, KEY_COLOR)):  # where the arrows were at position 0
        ax.annotate("", xy=start.tolist(), xytext=(0, 0),
                    arrowprops=dict(arrowstyle="->", color=color, alpha=0.3, linestyle="--"))
    for end, color, label in ((q_m, QUERY_COLOR, f"q at m={m}"), (k_n, KEY_COLOR, f"k at n={n}")):
        ax.annotate("", xy=end.tolist(), xytext=(0, 0),
                    arrowprops=dict(arrowstyle="-|>", color=color, linewidth=2))
        if not small:
            ax.text(*(1.08 * end).tolist(), label, color=color, ha="center", va="center", fontsize=10)
    ax.set_xlim(-reach, reach)
    ax.set_ylim(-reach, reach)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    return float(q_m @ k_n)


def rope_pair_figure(
    q: Tensor | Sequence[float] = DEFAULT_QUERY,
    k: Tensor | Sequence[float] = DEFAULT_KEY,
    m: int = 3,
    n: int = 1,
    theta: float = 0.4,
    max_offset: int = 24,
) -> Figure:
    """Left: q turned to position m and k to position n. Right: q_m · k_n against the offset m - n.

    The right panel's curve is the same for every m and n; the dot marks where this (m, n) sits
    on it, so moving both positions together leaves the dot where it is.
    """
    q, k = _as_pair(q, "q"), _as_pair(k, "k")
    fig = Figure(figsize=(9.0, 4.0), layout="constrained")
    arrows, curve = fig.subplots(1, 2, width_ratios=[1, 1.4])
    dot = _draw_pair(arrows, q, k, m, n, theta)
    arrows.set_title(f"q (blue) and k (orange), θ = {theta:.2f} rad/position", fontsize=10)

    offsets = torch.arange(-max_offset, max_offset + 1)
    # q_m · k_n = q · R((n - m)θ) k: turning k back by the offset gives every point of the curve.
    scores = torch.stack([q @ rotate_pair(k, -int(offset), theta) for offset in offsets])
    curve.plot(offsets.numpy(), scores.numpy(), color="0.4", marker=".", linewidth=1)
    curve.plot([m - n], [dot], "o", color="tab:red", markersize=10, label=f"m = {m}, n = {n}")
    curve.axhline(0.0, color="0.8", linewidth=0.8)
    curve.set_xlabel("offset m − n (positions)")
    curve.set_ylabel("q_m · k_n")
    curve.set_title(f"q_m · k_n = {dot:.3f} depends only on m − n = {m - n}")
    curve.legend(loc="upper right")
    return fig


def rope_grid_figure(
    q: Tensor | Sequence[float] = DEFAULT_QUERY,
    k: Tensor | Sequence[float] = DEFAULT_KEY,
    offsets: Sequence[int] = (0, 2, 5),
    shifts: Sequence[int] = (0, 3, 7, 12),
    theta: float = 0.4,
) -> Figure:
    """A grid of rotated pairs: row r has offset m - n = offsets[r], column c both positions + shifts[c].

    Each panel's title gives m, n and q_m · k_n; along a row the arrows turn but the dot product,
    and the angle between the arrows, stay the same. `fig.dot_products[r][c]` holds the numbers.
    """
    q, k = _as_pair(q, "q"), _as_pair(k, "k")
    if not offsets or not shifts:
        raise ValueError(f"offsets and shifts must be non-empty, got offsets={offsets!r}, shifts={shifts!r}")
    fig = Figure(figsize=(2.1 * len(shifts) + 0.6, 2.2 * len(offsets) + 0.5), layout="constrained")
    axes = fig.subplots(len(offsets), len(shifts), squeeze=False)
    dot_products = []
    for row, offset in zip(axes, offsets):
        row_dots = []
        for ax, shift in zip(row, shifts):
            m, n = shift + offset, shift
            dot = _draw_pair(ax, q, k, m, n, theta, small=True)
            ax.set_title(f"m={m}, n={n}\nq·k = {dot:.3f}", fontsize=9)
            row_dots.append(dot)
        row[0].set_ylabel(f"m − n = {offset}")
        dot_products.append(row_dots)
    fig.suptitle(f"q (blue) at m, k (orange) at n, θ = {theta:.2f} rad/position\n"
                 "shifting both (left to right) turns the arrows, q·k stays")
    fig.dot_products = dot_products
    return fig


class RopePairExplorer(Explorer):
    """Sliders for the positions m (query) and n (key), a shift applied to both, and the speed θ.

    State a caller (or a test) can read after any change: `m_total` and `n_total` (the positions
    drawn, slider + shift), `q_rotated` and `k_rotated` (the turned vectors, `(2,)`), `dot`
    (q_m · k_n), `figure` (the current `rope_pair_figure`) and `message`.

    Args:
        q, k: the query's and key's pair at position 0, two numbers each.
        m, n: the initial positions.
        theta: the pair's angle per position in radians (RoPE's θ_i for one i).
        max_position: the sliders' largest value.
    """

    def __init__(
        self,
        q: Tensor | Sequence[float] = DEFAULT_QUERY,
        k: Tensor | Sequence[float] = DEFAULT_KEY,
        *,
        m: int = 3,
        n: int = 1,
        theta: float = 0.4,
        max_position: int = 24,
    ) -> None:
        check_int("max_position", max_position, 1, hint="the last position the sliders reach")
        self.q, self.k = _as_pair(q, "q"), _as_pair(k, "k")
        self.max_position = max_position
        self.m_total = self.n_total = 0
        self.q_rotated = self.k_rotated = torch.zeros(2, dtype=torch.float64)
        self.dot = 0.0
        self.figure: Figure | None = None

        def slider(value: int, description: str) -> widgets.IntSlider:
            return widgets.IntSlider(value=value, min=0, max=max_position, description=description,
                                     continuous_update=False)

        self.m = slider(m, "query at m")
        self.n = slider(n, "key at n")
        self.shift = slider(0, "shift both")
        self.theta = widgets.FloatSlider(value=theta, min=0.05, max=1.0, step=0.05, description="θ (rad/pos)",
                                         continuous_update=False, readout_format=".2f")
        self.status = widgets.HTML()
        self.chart = widgets.Image(format="png")
        self.watch(self.m, self.n, self.shift, self.theta)
        super().__init__([
            widgets.HBox([self.m, self.n]), widgets.HBox([self.shift, self.theta]), self.status, self.chart,
        ])
        self.refresh()


    def refresh(self) -> None:
        """Turn both vectors to the current positions and redraw."""
        theta = self.theta.value
        self.m_total, self.n_total = self.m.value + self.shift.value, self.n.value + self.shift.value
        self.q_rotated = rotate_pair(self.q, self.m_total, theta)
        self.k_rotated = rotate_pair(self.k, self.n_total, theta)
        self.dot = float(self.q_rotated @ self.k_rotated)
        self.figure = rope_pair_figure(self.q, self.k, self.m_total, self.n_total, theta,
                                       max_offset=self.max_position)
        self.chart.value = figure_to_png(self.figure, dpi=80)
        self.status.value = (
            f"q at position {self.m_total}, k at position {self.n_total}: offset m − n = "
            f"{self.m_total - self.n_total}, q·k = <b>{self.dot:.4f}</b>. Move <i>shift both</i>: "
            "the arrows turn together and q·k does not change."
        )


# The name the book uses: building the explorer is just constructing it (display it in Jupyter).
rope_explorer = RopePairExplorer
