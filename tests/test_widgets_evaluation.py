"""The calibration and abstention explorer of chapter 15 (`llmcourse.widgets.evaluation`), without a kernel."""

from __future__ import annotations

import random

import pytest

from llmcourse.checks import ArgumentError
from llmcourse.evaluate import Answers, abstention_score, penalty_for
from llmcourse.widgets.evaluation import (BREAK_EVENS, GRID, AbstentionExplorer, abstention_curve, abstention_figure,
                                          reliability_figure)


@pytest.fixture(scope="module")
def calibrated():
    rng = random.Random(0)
    confidences = [rng.random() for _ in range(2_000)]
    grades = ["correct" if rng.random() < c else "wrong" for c in confidences]
    return Answers([], [""] * len(grades), grades, confidences)


def test_curve_is_the_score_at_each_threshold(calibrated):
    curve = abstention_curve(calibrated, 3.0, [0.0, 0.5, 1.0])
    assert curve == [abstention_score(calibrated, 3.0, t)["score"] for t in (0.0, 0.5, 1.0)]
    assert curve[-1] == 0.0  # nothing is answered at a threshold of 1 (no confidence reaches it here)


def test_explorer_follows_its_sliders(calibrated):
    overconfident = Answers([], ["", ""], ["wrong", "correct"], [0.99, 0.2])
    explorer = AbstentionExplorer({"calibrated": calibrated, "overconfident": overconfident})
    assert "always answering" in explorer.message
    explorer.threshold.value = 0.75
    assert explorer.result == abstention_score(calibrated, penalty_for(0.75), 0.75)
    explorer.break_even.value = 0.0
    assert explorer.result["wrong"] > 0 and "costs 0" in explorer.message
    explorer.model.value = "overconfident"
    assert explorer.result == abstention_score(overconfident, 0.0, 0.75)
    assert explorer.figure is not None


def test_best_threshold_reported_is_near_the_break_even_for_calibrated_answers(calibrated):
    explorer = AbstentionExplorer({"m": calibrated}, break_even=0.5)
    best = float(explorer.message.split("best threshold for this penalty is ")[1].split(" ")[0])
    assert abs(best - 0.5) <= 0.06


def test_figures_draw_and_bad_input_is_named(calibrated):
    assert len(reliability_figure({"a": calibrated, "b": calibrated}).axes) == 2
    # per penalty a curve and its best point, plus the zero line and the threshold line
    assert len(abstention_figure(calibrated, threshold=0.3).axes[0].lines) == 2 * len(BREAK_EVENS) + 2
    with pytest.raises(ArgumentError, match="no answers"):
        reliability_figure({})
    with pytest.raises(ArgumentError, match="no answers"):
        AbstentionExplorer({})
    with pytest.raises(ArgumentError, match="break_even"):
        AbstentionExplorer({"m": calibrated}, break_even=0.99)
