"""The rotary-position explorer of chapter 04, driven without a kernel.

The rotation is checked against the 2-D rotation matrix written out, the dot product against the
closed form |q| |k| cos(angle between them), and the explorer by moving its sliders as a learner
would and reading its state.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from llmcourse.widgets.rope import (
    DEFAULT_KEY, DEFAULT_QUERY, RopePairExplorer, rope_explorer, rope_grid_figure, rope_pair_figure, rotate_pair,
)


def rotation_matrix(angle: float) -> torch.Tensor:
    return torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]],
                        dtype=torch.float64)


def closed_form_dot(q, k, m: int, n: int, theta: float) -> float:
    """q_m · k_n = |q| |k| cos(angle(k) - angle(q) + (n - m) θ)."""
    q, k = torch.tensor(q, dtype=torch.float64), torch.tensor(k, dtype=torch.float64)
    between = math.atan2(k[1], k[0]) - math.atan2(q[1], q[0]) + (n - m) * theta
    return float(q.norm() * k.norm()) * math.cos(between)


@given(st.integers(-50, 50), st.floats(0.01, 2.0), st.floats(-3, 3), st.floats(-3, 3))
def test_rotate_pair_is_the_rotation_matrix(position, theta, x, y):
    vector = torch.tensor([x, y], dtype=torch.float64)
    expected = rotation_matrix(position * theta) @ vector
    torch.testing.assert_close(rotate_pair(vector, position, theta), expected)


def test_rotate_pair_rejects_a_vector_that_is_not_a_pair():
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        rotate_pair([1.0, 2.0, 3.0], 1, 0.5)


def test_pair_figure_marks_the_dot_product_on_the_offset_curve():
    fig = rope_pair_figure(DEFAULT_QUERY, DEFAULT_KEY, m=5, n=2, theta=0.3, max_offset=10)
    _, curve = fig.axes
    line, marker = curve.lines[:2]
    assert list(line.get_xdata()) == list(range(-10, 11))
    expected = [closed_form_dot(DEFAULT_QUERY, DEFAULT_KEY, offset, 0, 0.3) for offset in range(-10, 11)]
    assert list(line.get_ydata()) == pytest.approx(expected)
    assert marker.get_xdata()[0] == 3
    assert marker.get_ydata()[0] == pytest.approx(closed_form_dot(DEFAULT_QUERY, DEFAULT_KEY, 5, 2, 0.3))
    assert "m − n = 3" in curve.get_title()


def test_grid_rows_share_one_dot_product_and_rows_differ():
    fig = rope_grid_figure(offsets=(0, 2, 5), shifts=(0, 3, 7, 12), theta=0.4)
    assert len(fig.axes) == 12
    for offset, row in zip((0, 2, 5), fig.dot_products):
        expected = closed_form_dot(DEFAULT_QUERY, DEFAULT_KEY, offset, 0, 0.4)
        assert row == pytest.approx([expected] * 4)
    assert len({round(row[0], 6) for row in fig.dot_products}) == 3
    assert fig.axes[5].get_title() == f"m=5, n=3\nq·k = {fig.dot_products[1][1]:.3f}"


def test_figures_leave_pyplot_state_alone():
    before = plt.get_fignums()
    rope_pair_figure()
    rope_grid_figure()
    assert plt.get_fignums() == before
    with pytest.raises(ValueError, match="non-empty"):
        rope_grid_figure(offsets=())


def test_explorer_shows_the_rotated_pair_and_its_dot_product():
    explorer = rope_explorer(m=4, n=1, theta=0.5)
    assert isinstance(explorer, RopePairExplorer)
    torch.testing.assert_close(explorer.q_rotated, rotation_matrix(2.0) @ torch.tensor(DEFAULT_QUERY).double())
    torch.testing.assert_close(explorer.k_rotated, rotation_matrix(0.5) @ torch.tensor(DEFAULT_KEY).double())
    assert explorer.dot == pytest.approx(closed_form_dot(DEFAULT_QUERY, DEFAULT_KEY, 4, 1, 0.5))
    assert bytes(explorer.chart.value).startswith(b"\x89PNG")
    assert "offset m − n = 3" in explorer.message


def test_explorer_shifting_both_positions_keeps_the_dot_product():
    explorer = rope_explorer(m=4, n=1)
    dot, q_before = explorer.dot, explorer.q_rotated
    png = bytes(explorer.chart.value)
    for shift in (1, 7, 20):
        explorer.shift.value = shift  # what dragging the slider does
        assert (explorer.m_total, explorer.n_total) == (4 + shift, 1 + shift)
        assert explorer.dot == pytest.approx(dot, abs=1e-12)
    assert not torch.allclose(explorer.q_rotated, q_before), "the arrows should have turned"
    assert bytes(explorer.chart.value) != png


def test_explorer_moving_one_position_changes_the_dot_product():
    explorer = rope_explorer(m=4, n=1, theta=0.4)
    before = explorer.dot
    explorer.n.value = 3
    assert explorer.dot != pytest.approx(before)
    assert explorer.dot == pytest.approx(closed_form_dot(DEFAULT_QUERY, DEFAULT_KEY, 4, 3, 0.4))
    explorer.theta.value = 0.8
    assert explorer.dot == pytest.approx(closed_form_dot(DEFAULT_QUERY, DEFAULT_KEY, 4, 3, 0.8))
    assert "θ = 0.80" in explorer.figure.axes[0].get_title()


def test_explorer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="max_position=.* must be an integer >= 1"):
        rope_explorer(max_position=0)
    with pytest.raises(ValueError, match="q must be one pair"):
        rope_explorer(q=[1.0, 2.0, 3.0])
