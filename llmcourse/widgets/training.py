"""The optimizer race of chapter 09, and the loss-landscape slice its page draws.

Two pictures of "training is walking downhill":

* `optimizer_path` runs plain SGD, SGD with momentum and Adam on a two-parameter loss surface, so
  every step can be drawn as a point on a contour map (`race_figure`); `OptimizerRace` is the
  explorer around it (learning-rate sliders, a choice of surface).
* `random_direction` and `loss_slice` cut a real model's loss along two random directions through
  its weights (Li et al. 2018), a 2-D window into a landscape with many thousands of dimensions;
  `landscape_figure` draws it.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import ipywidgets as widgets
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from llmcourse.optim import AdamW
from llmcourse.plots import figure_to_png
from llmcourse.widgets.explorer import Explorer

OPTIMIZERS = ("SGD", "momentum", "Adam")
OPTIMIZER_COLORS = {"SGD": "C0", "momentum": "C1", "Adam": "C2"}
# A run whose loss passes this is called diverged and stopped (it would only leave the picture).
DIVERGED_LOSS = 1e6


@dataclass(frozen=True)
class Surface:
    """A loss over two parameters (x, y), where the race starts, and the window the map shows."""

    name: str
    loss: Callable[[Tensor], Tensor]  # (..., 2) -> (...)
    start: tuple[float, float]
    minimum: tuple[float, float]
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    description: str


def _ravine(xy: Tensor) -> Tensor:
    x, y = xy[..., 0], xy[..., 1]
    return 0.02 * x**2 + 2.0 * y**2  # curvature 0.04 along x, 4 along y: 100 times steeper across


def _rosenbrock(xy: Tensor) -> Tensor:
    x, y = xy[..., 0], xy[..., 1]
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2  # Rosenbrock (1960): a curved, flat-bottomed valley


SURFACES: dict[str, Surface] = {
    "ravine": Surface("ravine", _ravine, start=(-4.5, 1.5), minimum=(0.0, 0.0), x_range=(-5.0, 5.0),
                      y_range=(-2.0, 2.0),
                      description="0.02 x² + 2 y²: steep across, shallow along (curvatures 4 and 0.04)"),
    "rosenbrock": Surface("rosenbrock", _rosenbrock, start=(-1.5, 2.0), minimum=(1.0, 1.0),
                          x_range=(-2.0, 2.0), y_range=(-1.0, 3.0),
                          description="(1 - x)² + 100 (y - x²)²: a curved valley, minimum at (1, 1)"),
}


def _surface(surface: str | Surface) -> Surface:
    if isinstance(surface, Surface):
        return surface
    if surface not in SURFACES:
        raise ValueError(f"unknown surface {surface!r}; choose one of {sorted(SURFACES)}")
    return SURFACES[surface]


def make_optimizer_2d(name: str, params: list[Tensor], lr: float) -> torch.optim.Optimizer:
    """SGD, SGD with momentum 0.9 (heavy ball) or Adam (llmcourse's AdamW with no decay) on `params`."""
    if name == "SGD":
        return torch.optim.SGD(params, lr=lr)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if name == "Adam":
        return AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=0.0)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")


def optimizer_path(
    surface: str | Surface, optimizer: str, lr: float, steps: int, start: Sequence[float] | None = None
) -> tuple[Tensor, Tensor]:
    """Run `optimizer` for `steps` steps on a 2-D surface from `start` (default: the surface's).

    Returns `(path, losses)`: `path` is `(n + 1, 2)`, the point before each step and after the
    last; `losses` is `(n + 1,)`, the loss at each point. n = `steps` unless the run diverged
    (loss above `DIVERGED_LOSS` or not finite), in which case it stops at the first such point.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    surf = _surface(surface)
    point = torch.tensor(surf.start if start is None else start, dtype=torch.float64, requires_grad=True)
    opt = make_optimizer_2d(optimizer, [point], lr)
    path, losses = [point.detach().clone()], []
    for _ in range(steps):
        loss = surf.loss(point)
        losses.append(loss.item())
        if not math.isfinite(losses[-1]) or losses[-1] > DIVERGED_LOSS:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
        path.append(point.detach().clone())
    else:
        losses.append(surf.loss(point.detach()).item())
    return torch.stack(path[: len(losses)]), torch.tensor(losses, dtype=torch.float64)


def race(surface: str | Surface, lrs: dict[str, float], steps: int) -> dict[str, tuple[Tensor, Tensor]]:
    """`optimizer_path` for each optimizer named in `lrs` (name -> learning rate)."""
    return {name: optimizer_path(surface, name, lr, steps) for name, lr in lrs.items()}


def race_figure(surface: str | Surface, results: dict[str, tuple[Tensor, Tensor]],
                lrs: dict[str, float] | None = None, *, title: str | None = None) -> Figure:
    """Left: the contour map with each optimizer's path; right: each loss against the step (log scale)."""
    surf = _surface(surface)
    fig = Figure(figsize=(10.0, 4.0), layout="constrained")
    ax_map, ax_loss = fig.subplots(1, 2, width_ratios=[1.3, 1.0])
    xs = torch.linspace(*surf.x_range, 200, dtype=torch.float64)
    ys = torch.linspace(*surf.y_range, 200, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (200, 200, 2)
    levels = torch.quantile(surf.loss(grid).flatten(), torch.linspace(0.0, 0.95, 14, dtype=torch.float64))
    ax_map.contour(xs.numpy(), ys.numpy(), surf.loss(grid).numpy(), levels=levels.unique().numpy(),
                   colors="0.7", linewidths=0.8)
    ax_map.plot(*surf.minimum, marker="*", color="k", markersize=12, linestyle="none", label="minimum")
    for name, (path, losses) in results.items():
        label = name if lrs is None else f"{name}, lr {lrs[name]:.3g}"
        diverged = len(losses) > 1 and (not math.isfinite(losses[-1]) or losses[-1] > DIVERGED_LOSS)
        if diverged:
            label += " (diverged)"
        ax_map.plot(path[:, 0].numpy(), path[:, 1].numpy(), ".-", color=OPTIMIZER_COLORS.get(name),
                    markersize=3, linewidth=1, label=label)
        finite = losses[torch.isfinite(losses) & (losses <= DIVERGED_LOSS)]
        ax_loss.plot(range(len(finite)), (finite + 1e-12).numpy(), color=OPTIMIZER_COLORS.get(name), label=name)
    ax_map.plot(*surf.start, marker="o", color="k", markersize=5, linestyle="none")
    ax_map.set_xlim(*surf.x_range)
    ax_map.set_ylim(*surf.y_range)
    ax_map.set_xlabel("parameter x")
    ax_map.set_ylabel("parameter y")
    ax_map.set_title(title or f"{surf.name}: {surf.description}", fontsize=9)
    ax_map.legend(fontsize=8, loc="lower right")
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("loss along each path")
    ax_loss.legend(fontsize=8)
    return fig


class OptimizerRace(Explorer):
    """SGD, momentum and Adam racing downhill on a 2-D surface; move the learning rates and watch.

    Controls: `surface` (dropdown), `sgd_lr` (SGD and momentum share it), `adam_lr`, `steps`.
    State after any change: `lrs` (optimizer -> lr), `results` (optimizer -> `(path, losses)` as
    returned by `optimizer_path`), `final_losses` (optimizer -> last finite loss, or inf if it
    diverged) and `figure`.
    """

    def __init__(self, surface: str = "ravine", *, sgd_lr: float = 0.45, adam_lr: float = 0.3,
                 steps: int = 100) -> None:
        _surface(surface)
        self.results: dict[str, tuple[Tensor, Tensor]] = {}
        self.lrs: dict[str, float] = {}
        self.final_losses: dict[str, float] = {}
        self.figure: Figure | None = None
        self.surface = widgets.Dropdown(options=sorted(SURFACES), value=surface, description="surface")
        self.sgd_lr = widgets.FloatLogSlider(value=sgd_lr, base=10, min=-4, max=0.3, step=0.05,
                                             description="SGD lr", continuous_update=False, readout_format=".3g")
        self.adam_lr = widgets.FloatLogSlider(value=adam_lr, base=10, min=-3, max=0.3, step=0.05,
                                              description="Adam lr", continuous_update=False, readout_format=".3g")
        self.steps = widgets.IntSlider(value=steps, min=5, max=500, step=5, description="steps",
                                       continuous_update=False)
        self.status = widgets.HTML()
        self.chart = widgets.Image(format="png")
        self.watch(self.surface, self.sgd_lr, self.adam_lr, self.steps)
        super().__init__([widgets.HBox([self.surface, self.steps]), widgets.HBox([self.sgd_lr, self.adam_lr]),
                          self.status, self.chart])
        self.refresh()

    def refresh(self) -> None:
        """Rerun the three optimizers with the current controls and redraw."""
        self.lrs = {"SGD": self.sgd_lr.value, "momentum": self.sgd_lr.value, "Adam": self.adam_lr.value}
        self.results = race(self.surface.value, self.lrs, self.steps.value)
        self.final_losses = {}
        for name, (_, losses) in self.results.items():
            last = losses[-1].item()
            self.final_losses[name] = last if math.isfinite(last) and last <= DIVERGED_LOSS else math.inf
        self.figure = race_figure(self.surface.value, self.results, self.lrs)
        self.chart.value = figure_to_png(self.figure, dpi=80)
        parts = [f"{html.escape(name)}: {loss:.3g}" for name, loss in self.final_losses.items()]
        self.status.value = f"loss after {self.steps.value} steps: " + ", ".join(parts)


# The name the book uses.
optimizer_race = OptimizerRace


# ---------------------------------------------------------------------------------- landscape


def random_direction(model: nn.Module, generator: torch.Generator) -> list[Tensor]:
    """A random direction in weight space, filter-normalised as in Li et al. (2018).

    One tensor per parameter of `model` (in `parameters()` order). For a matrix, each row (the
    weights into one output unit) is a Gaussian vector rescaled to that row's norm in the model,
    so a step of 1 along the direction changes every unit by about as much as its own size: a
    scale-free unit for the axes. Vectors (biases, norm gains) get a zero direction, as in the paper.
    """
    directions = []
    for param in model.parameters():
        if param.dim() < 2:
            directions.append(torch.zeros_like(param))
            continue
        noise = torch.randn(param.shape, generator=generator, dtype=param.dtype).to(param.device)
        rows, weight_rows = noise.flatten(1), param.detach().flatten(1)
        scale = weight_rows.norm(dim=1, keepdim=True) / (rows.norm(dim=1, keepdim=True) + 1e-10)
        directions.append((rows * scale).view_as(param))
    return directions


@torch.no_grad()
def loss_slice(model: nn.Module, loss_fn: Callable[[nn.Module], Tensor], direction_1: list[Tensor],
               direction_2: list[Tensor], alphas: Tensor, betas: Tensor) -> Tensor:
    """The loss at `weights + a * direction_1 + b * direction_2` for every a in `alphas`, b in `betas`.

    Returns `(len(betas), len(alphas))` (rows follow b, ready for `contour`). The model's weights
    are restored afterwards, even if `loss_fn` raises.
    """
    params = list(model.parameters())
    if not len(params) == len(direction_1) == len(direction_2):
        raise ValueError(f"directions have {len(direction_1)} and {len(direction_2)} tensors, the model "
                         f"{len(params)} parameters; build them with random_direction(model, ...)")
    saved = [param.detach().clone() for param in params]
    losses = torch.empty(len(betas), len(alphas))
    try:
        for i, b in enumerate(betas.tolist()):
            for j, a in enumerate(alphas.tolist()):
                for param, w, d1, d2 in zip(params, saved, direction_1, direction_2):
                    param.copy_(w + a * d1 + b * d2)
                losses[i, j] = loss_fn(model).item()
    finally:
        for param, w in zip(params, saved):
            param.copy_(w)
    return losses


def landscape_figure(alphas: Tensor, betas: Tensor, losses: Tensor, *, title: str | None = None) -> Figure:
    """Filled contours of a `loss_slice`, the trained weights marked at (0, 0)."""
    fig = Figure(figsize=(5.6, 4.4), layout="constrained")
    ax = fig.add_subplot()
    filled = ax.contourf(alphas.numpy(), betas.numpy(), losses.numpy(), levels=20, cmap="viridis")
    ax.contour(alphas.numpy(), betas.numpy(), losses.numpy(), levels=20, colors="white", linewidths=0.3)
    ax.plot(0, 0, marker="*", color="red", markersize=12, linestyle="none", label="trained weights")
    fig.colorbar(filled, ax=ax, label="loss (nats per token)")
    ax.set_xlabel("step along random direction 1")
    ax.set_ylabel("step along random direction 2")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title or "The loss around the trained weights")
    return fig
