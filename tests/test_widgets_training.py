"""The optimizer race and the loss-landscape slice of chapter 09, driven without a kernel.

Paths are checked against closed forms (gradient descent on a quadratic contracts each coordinate
by 1 - lr * curvature) and torch's own Adam; the landscape slice against a direct evaluation.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from llmcourse.widgets.training import (
    SURFACES,
    OptimizerRace,
    landscape_figure,
    loss_slice,
    optimizer_path,
    optimizer_race,
    race,
    race_figure,
    random_direction,
)


def test_sgd_on_the_ravine_matches_the_closed_form():
    lr, steps = 0.3, 12
    path, losses = optimizer_path("ravine", "SGD", lr, steps)
    x0, y0 = SURFACES["ravine"].start
    t = torch.arange(steps + 1, dtype=torch.float64)
    # f = 0.02 x² + 2 y²: curvatures 0.04 and 4, so x_t = x0 (1 - 0.04 lr)^t, y_t = y0 (1 - 4 lr)^t.
    torch.testing.assert_close(path[:, 0], x0 * (1 - 0.04 * lr) ** t)
    torch.testing.assert_close(path[:, 1], y0 * (1 - 4 * lr) ** t)
    torch.testing.assert_close(losses, 0.02 * path[:, 0] ** 2 + 2 * path[:, 1] ** 2)


def test_adam_path_matches_torch_adam():
    path, _ = optimizer_path("rosenbrock", "Adam", 0.05, 30)
    point = torch.tensor(SURFACES["rosenbrock"].start, dtype=torch.float64, requires_grad=True)
    reference = torch.optim.Adam([point], lr=0.05)
    for step in range(30):
        reference.zero_grad()
        SURFACES["rosenbrock"].loss(point).backward()
        reference.step()
        torch.testing.assert_close(path[step + 1], point.detach())


def test_sgd_past_two_over_curvature_diverges_and_stops():
    path, losses = optimizer_path("ravine", "SGD", 0.6, 400)  # 0.6 > 2 / 4
    assert len(losses) < 401 and len(path) == len(losses)
    assert losses[-1] > 1e6 or not math.isfinite(losses[-1].item())


def test_momentum_beats_sgd_along_the_ravine():
    results = race("ravine", {"SGD": 0.45, "momentum": 0.45}, 100)
    assert results["momentum"][1][-1] < results["SGD"][1][-1]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown surface"):
        optimizer_path("bowl", "SGD", 0.1, 5)
    with pytest.raises(ValueError, match="unknown optimizer"):
        optimizer_path("ravine", "Lion", 0.1, 5)
    with pytest.raises(ValueError, match="steps"):
        optimizer_path("ravine", "SGD", 0.1, 0)


def test_explorer_follows_its_controls():
    explorer = optimizer_race("ravine", sgd_lr=0.3, adam_lr=0.1, steps=20)
    assert isinstance(explorer, OptimizerRace)
    assert set(explorer.results) == {"SGD", "momentum", "Adam"}
    assert all(len(path) == 21 for path, _ in explorer.results.values())
    assert explorer.chart.value[:4] == b"\x89PNG" and "loss after 20 steps" in explorer.message
    explorer.sgd_lr.value = 0.7  # unstable for SGD on the ravine
    assert explorer.lrs["SGD"] == pytest.approx(0.7)
    assert explorer.final_losses["SGD"] == math.inf and math.isfinite(explorer.final_losses["Adam"])
    explorer.surface.value = "rosenbrock"
    explorer.sgd_lr.value = 1e-3
    explorer.steps.value = 40
    assert all(len(path) == 41 for path, _ in explorer.results.values())
    assert explorer.figure.axes[0].get_title().startswith("rosenbrock")


def test_race_figure_draws_one_path_per_optimizer():
    lrs = {"SGD": 0.45, "Adam": 0.3}
    fig = race_figure("ravine", race("ravine", lrs, 10), lrs)
    labels = [line.get_label() for line in fig.axes[0].lines]
    assert any(label.startswith("SGD, lr 0.45") for label in labels)
    assert any(label.startswith("Adam, lr 0.3") for label in labels)


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))


def test_random_direction_is_filter_normalised_and_zero_on_vectors():
    model = _tiny_model()
    direction = random_direction(model, torch.Generator().manual_seed(0))
    for param, d in zip(model.parameters(), direction):
        assert d.shape == param.shape
        if param.dim() == 1:
            assert torch.all(d == 0)
        else:
            torch.testing.assert_close(d.norm(dim=1), param.detach().norm(dim=1))


def test_loss_slice_matches_direct_evaluation_and_restores_weights():
    model = _tiny_model()
    inputs, targets = torch.randn(8, 3, generator=torch.Generator().manual_seed(1)), torch.zeros(8, 1)
    loss_fn = lambda m: ((m(inputs) - targets) ** 2).mean()  # noqa: E731
    generator = torch.Generator().manual_seed(2)
    d1, d2 = random_direction(model, generator), random_direction(model, generator)
    before = [p.detach().clone() for p in model.parameters()]
    alphas, betas = torch.tensor([-0.5, 0.0, 1.0]), torch.tensor([0.0, 0.25])
    grid = loss_slice(model, loss_fn, d1, d2, alphas, betas)
    assert grid.shape == (2, 3)
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)
    shifted = _tiny_model()
    with torch.no_grad():
        for p, a, b in zip(shifted.parameters(), d1, d2):
            p.add_(1.0 * a + 0.25 * b)
    assert grid[1, 2].item() == pytest.approx(loss_fn(shifted).item(), rel=1e-6)
    assert grid[0, 1].item() == pytest.approx(loss_fn(model).item(), rel=1e-6)
    assert landscape_figure(alphas, betas, grid).axes


def test_loss_slice_rejects_directions_of_another_model():
    model = _tiny_model()
    with pytest.raises(ValueError, match="random_direction"):
        loss_slice(model, lambda m: torch.zeros(()), [], [], torch.zeros(1), torch.zeros(1))
