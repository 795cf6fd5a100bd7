"""The DPO explorer of chapter 14 (`llmcourse.widgets.preference`), driven without a kernel.

The numbers of one pair are checked against the closed forms of DPO's loss and gradient, and the
explorer by setting its sliders.
"""

from __future__ import annotations

import math

import pytest
import torch

from llmcourse.checks import ArgumentError
from llmcourse.widgets.preference import BETAS, DPOExplorer, DPOPoint, dpo_explorer, dpo_figure, dpo_point


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_the_start_is_log_2_with_half_weight():
    point = dpo_point(0.0, 0.0, beta=0.1)
    assert point.loss == pytest.approx(math.log(2))
    assert point.margin == 0.0 and point.weight == pytest.approx(0.5) and point.probability == pytest.approx(0.5)
    assert point.grad_chosen == pytest.approx(-0.05) and point.grad_rejected == pytest.approx(0.05)


@pytest.mark.parametrize("u_c, u_r, beta", [(3.0, -7.0, 0.1), (-12.0, -4.0, 0.5), (-5.0, -20.0, 0.05)])
def test_point_matches_the_closed_forms(u_c, u_r, beta):
    point = dpo_point(u_c, u_r, beta)
    margin = beta * (u_c - u_r)
    assert point.chosen_reward == pytest.approx(beta * u_c)
    assert point.rejected_reward == pytest.approx(beta * u_r)
    assert point.margin == pytest.approx(margin)
    assert point.loss == pytest.approx(-math.log(sigmoid(margin)))
    assert point.weight == pytest.approx(sigmoid(-margin))
    # the gradient by autograd is the closed form: the same size for both replies, opposite signs
    assert point.grad_chosen == pytest.approx(-beta * sigmoid(-margin))
    assert point.grad_rejected == pytest.approx(beta * sigmoid(-margin))


def test_point_works_with_gradients_switched_off():
    with torch.no_grad():
        point = dpo_point(1.0, -1.0, beta=0.5)
    assert point.grad_chosen == pytest.approx(-0.5 * sigmoid(-1.0))


def test_only_the_difference_of_the_log_ratios_matters():
    a, b = dpo_point(-5.0, -20.0, 0.1), dpo_point(10.0, -5.0, 0.1)
    assert a.loss == pytest.approx(b.loss) and a.weight == pytest.approx(b.weight)
    assert a.chosen_reward < 0 < b.chosen_reward  # yet one lowered the chosen reply, the other raised it


def test_bad_arguments_are_named():
    with pytest.raises(ArgumentError, match="beta"):
        dpo_point(0.0, 0.0, beta=0.0)
    with pytest.raises(ArgumentError, match="chosen_logratio"):
        dpo_point(float("nan"), 0.0)
    with pytest.raises(ArgumentError, match="beta"):
        DPOExplorer(beta=-1.0)


def test_figure_draws_one_loss_line_per_beta_and_marks_the_point():
    fig = dpo_figure()
    assert len(fig.axes) == 2 and len(fig.axes[0].get_legend().get_texts()) == len(BETAS)
    point = dpo_point(2.0, -3.0, beta=0.2)  # a beta not in BETAS is added
    fig = dpo_figure(point)
    assert len(fig.axes) == 3
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()].count("β = 0.2") == 1
    assert [bar.get_height() for bar in fig.axes[2].patches] == pytest.approx(
        [point.chosen_reward, point.rejected_reward, point.margin])


def test_explorer_follows_its_sliders():
    explorer = dpo_explorer(beta=0.1)
    assert isinstance(explorer, DPOExplorer) and isinstance(explorer.point, DPOPoint)
    assert explorer.point.loss == pytest.approx(math.log(2))
    assert explorer.chart.value[:4] == b"\x89PNG" and "loss 0.693" in explorer.message
    first_chart = explorer.chart.value
    explorer.chosen.value = -5.0
    explorer.rejected.value = -20.0
    assert explorer.point.margin == pytest.approx(1.5)
    assert explorer.point.chosen_reward < 0 and "Both replies are less likely" in explorer.message
    assert explorer.chart.value != first_chart
    explorer.beta.value = 1.0
    assert explorer.point.beta == pytest.approx(1.0) and explorer.point.margin == pytest.approx(15.0)
    assert explorer.point.weight < 1e-6
    explorer.chosen.value = 10.0
    assert explorer.point.chosen_reward > 0 and "Both replies" not in explorer.message
