"""The DPO explorer of chapter 14: the loss of one preference pair, and what its gradient does.

DPO sees a pair (prompt x, chosen reply y_c, rejected reply y_r) only through two **log-ratios**,
how much more likely the policy makes each reply than the frozen reference does:

    u_c = log pi(y_c | x) - log pi_ref(y_c | x)        u_r = the same for y_r

From them: the implicit rewards beta * u_c and beta * u_r, the margin m = beta * (u_c - u_r), the
loss -log sigmoid(m), and its gradient, which has the same size for both replies and opposite signs:

    d loss / d log pi(y_c) = -beta * sigmoid(-m)       d loss / d log pi(y_r) = +beta * sigmoid(-m)

So sigmoid(-m) is each pair's **weight**: a pair the policy ranks wrongly pulls hard, one it
already ranks right by a wide margin hardly counts. Nothing in the loss depends on u_c alone:
both rewards can be negative (both replies less likely than before) with a low loss.

`dpo_point` computes all of this for one pair with the package's `dpo_loss` (the gradient by
autograd); `dpo_figure` draws the loss and the gradient's size against u_c - u_r for several betas,
and the two rewards; `DPOExplorer` moves beta and the two log-ratios. No model is involved.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

import ipywidgets as widgets
import torch
from matplotlib.figure import Figure

from llmcourse.checks import check_real
from llmcourse.plots import figure_to_png
from llmcourse.preference import dpo_loss
from llmcourse.widgets.explorer import Explorer

__all__ = ["BETAS", "DPOExplorer", "DPOPoint", "dpo_explorer", "dpo_figure", "dpo_point"]

BETAS = (0.05, 0.1, 0.3, 1.0)  # the betas the figure compares (0.1 is the chapter's runs')
LOGRATIO_LIMIT = 30.0  # the sliders and the figure's x axis span -30..30 nats
LOSS_CEILING = 3.5  # the loss panel's top: beta = 1 would reach 30 nats and flatten the others


@dataclass(frozen=True)
class DPOPoint:
    """One preference pair as DPO sees it: the two log-ratios, beta, and what follows from them."""

    chosen_logratio: float  # u_c = log pi(y_c | x) - log pi_ref(y_c | x), in nats
    rejected_logratio: float  # u_r, the same for the rejected reply
    beta: float
    loss: float  # -log sigmoid(margin)
    chosen_reward: float  # beta * u_c
    rejected_reward: float  # beta * u_r
    margin: float  # chosen_reward - rejected_reward
    grad_chosen: float  # d loss / d log pi(y_c) = -beta * weight
    grad_rejected: float  # d loss / d log pi(y_r) = +beta * weight

    @property
    def weight(self) -> float:
        """sigmoid(-margin): how much this pair still counts (1 when badly wrong, 0 when surely right)."""
        return float(torch.sigmoid(torch.tensor(-self.margin, dtype=torch.float64)))

    @property
    def probability(self) -> float:
        """sigmoid(margin): the probability the Bradley-Terry model gives to "chosen beats rejected"."""
        return 1.0 - self.weight


def dpo_point(chosen_logratio: float, rejected_logratio: float, beta: float = 0.1) -> DPOPoint:
    """The DPO loss, rewards, margin and gradient of one pair with log-ratios u_c and u_r (nats).

    The reference's log-probabilities are set to 0 and the policy's to the log-ratios: only their
    differences matter, so this is any pair with those log-ratios.
    """
    beta = check_real("beta", beta, above=0.0, hint="the strength of the pull to the reference; 0.1 is typical")
    u_c = check_real("chosen_logratio", chosen_logratio, hint="log pi(chosen) - log pi_ref(chosen), in nats")
    u_r = check_real("rejected_logratio", rejected_logratio, hint="log pi(rejected) - log pi_ref(rejected)")
    with torch.enable_grad():  # also inside a page or a test that switched gradients off
        policy = torch.tensor([u_c, u_r], dtype=torch.float64, requires_grad=True)
        reference = torch.zeros(2, dtype=torch.float64)
        out = dpo_loss(policy[:1], policy[1:], reference[:1], reference[1:], beta)
        (grad,) = torch.autograd.grad(out.loss, policy)
    return DPOPoint(u_c, u_r, beta, out.loss.item(), out.chosen_rewards.item(), out.rejected_rewards.item(),
                    out.margins.item(), grad[0].item(), grad[1].item())


def dpo_figure(point: DPOPoint | None = None, betas: Sequence[float] = BETAS, *,
               limit: float = LOGRATIO_LIMIT, title: str | None = None) -> Figure:
    """Left: the DPO loss against u_c - u_r, one line per beta. Middle: the pair's weight
    sigmoid(-margin) (the gradient on each reply's log-probability is beta times it). Right (with
    `point`): the two implicit rewards and the margin. `point` is marked, its beta drawn thick."""
    betas = sorted({*betas, *([point.beta] if point else [])})
    fig = Figure(figsize=(10.5, 3.4) if point else (7.5, 3.2), layout="constrained")
    axes = fig.subplots(1, 3 if point else 2, width_ratios=[1.2, 1.2, 0.8] if point else None)
    difference = torch.linspace(-limit, limit, 401, dtype=torch.float64)
    for beta in betas:
        margin = beta * difference
        loss = -torch.nn.functional.logsigmoid(margin)
        weight = torch.sigmoid(-margin)
        current = point is not None and beta == point.beta
        style = {"linewidth": 2.4 if current else 1.2, "label": f"β = {beta:g}"}
        line, = axes[0].plot(difference.numpy(), loss.numpy(), **style)
        axes[1].plot(difference.numpy(), weight.numpy(), color=line.get_color(), **style)
    log2 = torch.log(torch.tensor(2.0)).item()
    axes[0].plot([0], [log2], "s", color="0.3", markersize=5)
    axes[0].annotate("log 2 at the start\n(policy = reference)", (0, log2), (0.06 * limit, 1.4), fontsize=8,
                     color="0.3", arrowprops={"arrowstyle": "-", "color": "0.5"})
    axes[0].set_ylabel("DPO loss of the pair (nats)")
    axes[1].set_ylabel("weight σ(−margin)")
    for ax in axes[:2]:
        ax.set_xlabel("u_c − u_r: chosen log-ratio minus rejected (nats)")
        ax.axvline(0, color="0.8", linewidth=0.8)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(0, LOSS_CEILING)
    axes[1].set_ylim(0, 1.05)
    axes[0].legend(fontsize=8, frameon=False)
    axes[0].set_title("the loss", fontsize=10)
    axes[1].set_title("how much the pair counts (gradient = β × this)", fontsize=10)
    if point is not None:
        x = point.chosen_logratio - point.rejected_logratio
        axes[0].plot([x], [min(point.loss, LOSS_CEILING)], "o", color="crimson", markersize=8, zorder=5)
        axes[1].plot([x], [point.weight], "o", color="crimson", markersize=8, zorder=5)
        names = ["chosen\nreward", "rejected\nreward", "margin"]
        values = [point.chosen_reward, point.rejected_reward, point.margin]
        colors = ["tab:green", "tab:red", "0.4"]
        axes[2].bar(names, values, color=colors)
        axes[2].axhline(0, color="k", linewidth=0.8)
        reach = max(1.0, *(abs(v) for v in values))
        axes[2].set_ylim(-1.1 * reach, 1.1 * reach)
        axes[2].set_title("implicit rewards β·u", fontsize=10)
        axes[2].tick_params(axis="x", labelsize=8)
    fig.suptitle(title or "DPO on one pair: the loss only sees the difference of the two log-ratios",
                 fontsize=10)
    return fig


class DPOExplorer(Explorer):
    """Move beta and the two log-ratios of one pair; see the loss, the rewards, the margin and the
    gradient that each reply's log-probability receives.

    Controls: `beta` (log slider), `chosen` and `rejected` (the log-ratios u_c, u_r in nats).
    State after any change: `point` (a `DPOPoint`), `figure` and `message`.
    """

    def __init__(self, beta: float = 0.1, chosen: float = 0.0, rejected: float = 0.0) -> None:
        self.point = dpo_point(chosen, rejected, beta)  # checks the arguments before any widget exists
        self.figure: Figure | None = None
        self.beta = widgets.FloatLogSlider(value=beta, base=10, min=-2, max=0, step=0.05, description="β",
                                           continuous_update=False, readout_format=".3g")
        slider = {"min": -LOGRATIO_LIMIT, "max": LOGRATIO_LIMIT, "step": 0.5, "continuous_update": False,
                  "style": {"description_width": "initial"}}
        self.chosen = widgets.FloatSlider(value=chosen, description="u_c (chosen log-ratio)", **slider)
        self.rejected = widgets.FloatSlider(value=rejected, description="u_r (rejected log-ratio)", **slider)
        self.status = widgets.HTML()
        self.chart = widgets.Image(format="png")
        self.watch(self.beta, self.chosen, self.rejected)
        super().__init__([self.beta, widgets.HBox([self.chosen, self.rejected]), self.status, self.chart])
        self.refresh()

    def refresh(self) -> None:
        """Recompute the pair from the sliders and redraw."""
        self.point = p = dpo_point(self.chosen.value, self.rejected.value, self.beta.value)
        both_down = p.chosen_reward < 0 and p.margin > 0
        note = (" Both replies are less likely than under the reference, yet the loss is satisfied: "
                "it only asks for the margin." if both_down else "")
        self.status.value = html.escape(
            f"loss {p.loss:.3f} nats; rewards: chosen {p.chosen_reward:+.2f}, rejected "
            f"{p.rejected_reward:+.2f}, margin {p.margin:+.2f}; P(chosen beats rejected) = "
            f"{p.probability:.2f}; gradient weight σ(−margin) = {p.weight:.2f}, so a step raises "
            f"log π(chosen) and lowers log π(rejected) at rate β·σ(−margin) = {-p.grad_chosen:.3f}."
            + note)
        self.figure = dpo_figure(p)
        self.chart.value = figure_to_png(self.figure, dpi=80)


# The name the book uses: building the explorer is just constructing it (display it in Jupyter).
dpo_explorer = DPOExplorer
