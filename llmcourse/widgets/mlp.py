"""The Mixture-of-Experts routing explorer of chapter 07: which expert each token goes to.

A router scores E experts for every token; `top_k_route` keeps each token's k best and weights
them; `load_balancing_loss` (Switch, Fedus et al. 2021) measures how unevenly the tokens spread
over the experts. This module draws all three at once:

- `routing_stats` computes the routing of `(N, E)` router logits: the dense `(N, E)` table of
  routing weights (0 where a token does not go), the load of each expert (its share of the N·k
  token-slots), the router's mean probability per expert, and the auxiliary loss.
- `routing_figure` draws a heatmap of the routing weights (tokens × experts) beside a bar chart
  of the expert load, titled with the loss: the picture the page shows for a trained router.
- `MoERoutingExplorer` makes router logits for random tokens and lets a learner change the number
  of experts, k, how sharp the router is, and how much it favours expert 0, and watch the load
  and the loss respond.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

import ipywidgets as widgets
import torch
from matplotlib.figure import Figure
from torch import Tensor

from llmcourse.checks import check_int
from llmcourse.mlp import load_balancing_loss, top_k_route
from llmcourse.plots import char_label, figure_to_png
from llmcourse.widgets.explorer import Explorer

__all__ = ["MoERoutingExplorer", "RoutingStats", "moe_routing_explorer", "routing_figure", "routing_stats",
           "synthetic_router_logits"]

MAX_EXPERTS = 16


@dataclass
class RoutingStats:
    """The routing of N tokens over E experts (all CPU tensors).

    dense       (N, E) routing weight of each token for each expert, 0 where it is not routed.
    experts     (N, k) the chosen experts, best first.
    load        (E,) fraction of the N·k token-slots each expert receives (f_e; sums to 1).
    mean_prob   (E,) the router's mean softmax probability for each expert (P_e; sums to 1).
    aux_loss    E · Σ_e f_e · P_e: 1 for a perfectly even spread, up to E when one expert takes all.
    """

    dense: Tensor
    experts: Tensor
    load: Tensor
    mean_prob: Tensor
    aux_loss: float

    @property
    def n_experts(self) -> int:
        return self.dense.shape[1]


def routing_stats(router_logits: Tensor, top_k: int, renormalize: bool = True) -> RoutingStats:
    """Route `(N, E)` router logits with the package's `top_k_route` and summarise the result."""
    logits = router_logits.detach().float().cpu()
    weights, experts = top_k_route(logits, top_k, renormalize=renormalize)   # (N, k), (N, k)
    n_experts = logits.shape[1]
    dense = torch.zeros_like(logits).scatter_(1, experts, weights)           # (N, E)
    load = torch.bincount(experts.flatten(), minlength=n_experts).float() / experts.numel()
    mean_prob = torch.softmax(logits, dim=-1).mean(0)
    aux = load_balancing_loss(logits, experts, n_experts).item()
    return RoutingStats(dense=dense, experts=experts, load=load, mean_prob=mean_prob, aux_loss=aux)


def routing_figure(
    router_logits: Tensor,
    top_k: int,
    *,
    renormalize: bool = True,
    token_labels: Sequence[str] | None = None,
    max_tokens: int = 24,
    title: str | None = None,
) -> Figure:
    """Heatmap of the routing weights of the first `max_tokens` tokens, and the load of every expert.

    Left: rows are tokens (labelled with `token_labels` if given), columns experts, colour the
    weight a token gives an expert (white: not routed there). Right: each expert's share of all N·k
    token-slots (bars), the router's mean probability for it (dots), and the even share 1/E
    (dashed line). The title reports the load-balancing loss over all N tokens.
    """
    stats = routing_stats(router_logits, top_k, renormalize)
    n_tokens, n_experts = stats.dense.shape
    if token_labels is not None and len(token_labels) != n_tokens:
        raise ValueError(f"token_labels has {len(token_labels)} labels for {n_tokens} tokens; give one per row "
                         "of router_logits, or None")
    shown = min(max_tokens, n_tokens)
    fig = Figure(figsize=(8.4, max(3.2, 0.17 * shown + 1.2)), layout="constrained")
    heat_ax, load_ax = fig.subplots(1, 2, width_ratios=[1.1, 1])

    masked = torch.where(stats.dense[:shown] > 0, stats.dense[:shown], torch.nan).numpy()
    image = heat_ax.imshow(masked, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    heat_ax.set_xticks(range(n_experts), [str(e) for e in range(n_experts)])
    labels = [char_label(t) for t in token_labels[:shown]] if token_labels is not None else range(shown)
    heat_ax.set_yticks(range(shown), [str(label) for label in labels], fontsize=8)
    heat_ax.set_xlabel("expert")
    heat_ax.set_ylabel("token" if token_labels is None else "token (its last character)")
    heat_ax.set_title(f"routing weights (top-{top_k}; white = not routed)", fontsize=10)
    fig.colorbar(image, ax=heat_ax, label="weight", shrink=0.8)

    experts = range(n_experts)
    load_ax.bar(experts, stats.load.numpy(), color="tab:blue", label="share of token-slots $f_e$")
    load_ax.plot(experts, stats.mean_prob.numpy(), "o", color="tab:orange", label="mean router prob. $P_e$")
    load_ax.axhline(1 / n_experts, color="0.4", linestyle="--", label=f"even share 1/E = {1 / n_experts:.3f}")
    load_ax.set_xticks(list(experts))
    load_ax.set_ylim(0, max(1.05 * float(max(stats.load.max(), stats.mean_prob.max())), 2 / n_experts))
    load_ax.set_xlabel("expert")
    load_ax.set_ylabel("fraction")
    load_ax.set_title(f"expert load over {n_tokens} tokens", fontsize=10)
    load_ax.legend(fontsize=8, loc="upper right")
    fig.suptitle(title or f"load-balancing loss {stats.aux_loss:.3f} (1 = even, {n_experts} = one expert takes all)",
                 fontsize=11)
    return fig


def synthetic_router_logits(n_experts: int, *, n_tokens: int = 256, n_embd: int = 32, sharpness: float = 1.0,
                            favour: float = 0.0, seed: int = 0) -> Tensor:
    """Router logits `(n_tokens, n_experts)` for random tokens: `sharpness · x W / √C`, plus `favour` on expert 0.

    Tokens x ~ N(0, 1) in C = n_embd dimensions and the router W ~ N(0, 1) are drawn from `seed`;
    expert e always uses column e of the same `(C, MAX_EXPERTS)` matrix, so adding experts leaves
    the scores of the existing ones unchanged. `sharpness` scales how decided the router is;
    `favour` adds a bias towards expert 0, the start of a collapse onto one expert.
    """
    check_int("n_experts", n_experts, 1, below=MAX_EXPERTS + 1)
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(n_tokens, n_embd, generator=generator)
    router = torch.randn(n_embd, MAX_EXPERTS, generator=generator)[:, :n_experts]
    logits = sharpness * tokens @ router / math.sqrt(n_embd)
    logits[:, 0] += favour
    return logits


class MoERoutingExplorer(Explorer):
    """Change a router and see where the tokens go, how the load spreads, and the balancing loss.

    Controls: `n_experts`, `top_k` (its maximum follows n_experts), `sharpness` (scale of the
    router's logits), `favour` (bias towards expert 0) and `renormalize` (Mixtral's weights that
    sum to 1 per token, or Switch's raw probabilities). State after any change: `logits` (N, E),
    `stats` (a `RoutingStats`), `figure` (the `routing_figure`) and `message` (a one-line summary).
    """

    def __init__(self, *, n_experts: int = 8, top_k: int = 2, sharpness: float = 1.0, favour: float = 0.0,
                 n_tokens: int = 256, seed: int = 0) -> None:
        self.n_tokens = n_tokens
        self.seed = seed
        self.logits: Tensor | None = None
        self.stats: RoutingStats | None = None
        self.figure: Figure | None = None

        self.n_experts = widgets.IntSlider(value=n_experts, min=2, max=MAX_EXPERTS, description="experts E",
                                           continuous_update=False)
        self.top_k = widgets.IntSlider(value=top_k, min=1, max=n_experts, description="top k",
                                       continuous_update=False)
        self.sharpness = widgets.FloatSlider(value=sharpness, min=0.0, max=5.0, step=0.25, description="sharpness",
                                             continuous_update=False)
        self.favour = widgets.FloatSlider(value=favour, min=0.0, max=5.0, step=0.25, description="favour e0",
                                          continuous_update=False)
        self.renormalize = widgets.Checkbox(value=True, description="renormalise top-k weights (Mixtral)")
        self.status = widgets.HTML()
        self.chart = widgets.Image(format="png")
        self.watch(self.n_experts, self.top_k, self.sharpness, self.favour, self.renormalize)
        super().__init__([
            widgets.HBox([self.n_experts, self.top_k, self.renormalize]),
            widgets.HBox([self.sharpness, self.favour]),
            self.status, self.chart,
        ])
        self.refresh()

    def _on_change(self, change: dict) -> None:
        if change["owner"] is self.n_experts:
            # Setting max below value clamps value, which fires its own change: refresh once, here.
            with self.top_k.hold_trait_notifications():
                self.top_k.max = self.n_experts.value
        self.refresh()

    def refresh(self) -> None:
        """Recompute the logits, the routing and the picture from the current controls."""
        n_experts, top_k = self.n_experts.value, min(self.top_k.value, self.n_experts.value)
        self.logits = synthetic_router_logits(n_experts, n_tokens=self.n_tokens, sharpness=self.sharpness.value,
                                              favour=self.favour.value, seed=self.seed)
        self.stats = routing_stats(self.logits, top_k, self.renormalize.value)
        self.figure = routing_figure(self.logits, top_k, renormalize=self.renormalize.value)
        self.chart.value = figure_to_png(self.figure, dpi=80)
        busiest = int(self.stats.load.argmax())
        weight_sum = self.stats.dense.sum(1).mean().item()
        self.status.value = html.escape(
            f"load-balancing loss {self.stats.aux_loss:.3f}; busiest expert {busiest} takes "
            f"{self.stats.load[busiest].item():.0%} of the token-slots (even: {1 / n_experts:.0%}); "
            f"a token's weights sum to {weight_sum:.2f} on average", quote=False)


# The name the book uses: building the explorer is just constructing it (display it in Jupyter).
moe_routing_explorer = MoERoutingExplorer
