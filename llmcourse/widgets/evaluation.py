"""The calibration and abstention explorer of chapter 15.

A model's answers, each graded ("correct", "refusal" or "wrong") and with its confidence (the
probability of the whole reply), are enough to draw two pictures:

    reliability_figure    accuracy against confidence, bin by bin: on the diagonal when calibrated
    abstention_figure     the mean score against the confidence below which the model abstains,
                          for several penalties on a wrong answer (Kalai et al. 2025)

`AbstentionExplorer` moves the penalty and the abstention threshold over the answers of one model:
under binary grading (penalty 0) abstaining never helps; with penalty t / (1 - t) a calibrated
model does best abstaining below t.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

import ipywidgets as widgets
from matplotlib.figure import Figure

from llmcourse.checks import ArgumentError, check_real
from llmcourse.evaluate import Answers, abstention_score, penalty_for, reliability_bins
from llmcourse.plots import figure_to_png
from llmcourse.widgets.explorer import Explorer

__all__ = ["BREAK_EVENS", "AbstentionExplorer", "abstention_curve", "abstention_explorer", "abstention_figure",
           "reliability_figure"]

BREAK_EVENS = (0.0, 0.5, 0.75, 0.9)  # thresholds t whose penalties t / (1 - t) the figure compares
GRID = tuple(i / 100 for i in range(101))  # abstention thresholds on the x axis


def abstention_curve(answers: Answers, penalty: float, thresholds: Sequence[float] = GRID) -> list[float]:
    """The mean score at each abstention threshold (`evaluate.abstention_score`)."""
    return [abstention_score(answers, penalty, t)["score"] for t in thresholds]


def reliability_figure(named: Mapping[str, Answers], n_bins: int = 10, title: str | None = None) -> Figure:
    """One reliability diagram per model: bars of accuracy per confidence bin against the diagonal of
    perfect calibration, and how many answers fall in each bin (the bars' labels)."""
    if not named:
        raise ArgumentError("no answers to draw; pass {model name: Answers}")
    fig = Figure(figsize=(3.6 * len(named), 3.4), layout="constrained")
    axes = fig.subplots(1, len(named), squeeze=False)[0]
    for ax, (name, answers) in zip(axes, named.items()):
        bins = reliability_bins(answers.confidences, [g == "correct" for g in answers.grades], n_bins)
        centres = ((bins["edges"][:-1] + bins["edges"][1:]) / 2).numpy()
        filled = bins["count"] > 0
        ax.bar(centres[filled], bins["accuracy"][filled].numpy(), width=1 / n_bins, edgecolor="white",
               color="tab:blue", label="accuracy in the bin")
        ax.plot(bins["confidence"][filled].numpy(), bins["accuracy"][filled].numpy(), "o", color="crimson",
                markersize=4, label="(mean confidence, accuracy)")
        ax.plot([0, 1], [0, 1], "--", color="0.5", linewidth=1, label="calibrated")
        for x, y, count in zip(centres[filled], bins["accuracy"][filled].tolist(), bins["count"][filled].tolist()):
            ax.annotate(f"{count:.0f}", (x, y), (0, 2), textcoords="offset points", ha="center", fontsize=7)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.08)
        ax.set_xlabel("confidence (probability of the reply)")
        ax.set_title(name, fontsize=10)
    axes[0].set_ylabel("share of replies that are correct")
    axes[0].legend(fontsize=7, frameon=False, loc="upper left")
    fig.suptitle(title or "Reliability: how often the model is right at each level of confidence", fontsize=10)
    return fig


def abstention_figure(answers: Answers, break_evens: Sequence[float] = BREAK_EVENS, *,
                      threshold: float | None = None, title: str | None = None, ax=None) -> Figure:
    """The mean score against the abstention threshold, one line per penalty t / (1 - t), with each
    line's best threshold marked (and `threshold`, if given, as a vertical line); drawn on `ax`
    (a matplotlib Axes) if given, else on a new figure."""
    if ax is None:
        ax = Figure(figsize=(6.4, 3.6), layout="constrained").subplots()
    fig = ax.figure
    for t in break_evens:
        scores = abstention_curve(answers, penalty_for(t))
        best = max(range(len(GRID)), key=scores.__getitem__)
        line, = ax.plot(GRID, scores, label=f"wrong costs {penalty_for(t):.3g} (break-even {t:g})")
        ax.plot([GRID[best]], [scores[best]], "o", color=line.get_color())
    if threshold is not None:
        ax.axvline(threshold, color="crimson", linewidth=1)
    ax.axhline(0, color="0.6", linewidth=0.8)
    ax.set_xlabel("abstain when the confidence is below")
    ax.set_ylabel("mean score per question")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    ax.set_title(title or "Guessing pays only when a wrong answer costs nothing", fontsize=10)
    return fig


class AbstentionExplorer(Explorer):
    """Pick a model, the penalty on a wrong answer (as its break-even confidence t) and the threshold
    below which the model abstains; see the score, what was answered, and the curves.

    Controls: `model` (dropdown), `break_even` (t: a wrong answer costs t / (1 - t)), `threshold`.
    State after any change: `result` (`evaluate.abstention_score`'s dict), `figure`, `message`.
    """

    def __init__(self, named: Mapping[str, Answers], break_even: float = 0.75, threshold: float = 0.0) -> None:
        if not named:
            raise ArgumentError("no answers to explore; pass {model name: Answers}")
        check_real("break_even", break_even, minimum=0, maximum=0.95)
        check_real("threshold", threshold, minimum=0, maximum=1)
        self.named = dict(named)
        self.result: dict[str, float] = {}
        self.figure: Figure | None = None
        self.model = widgets.Dropdown(options=list(self.named), description="model")
        style = {"description_width": "initial"}
        self.break_even = widgets.FloatSlider(value=break_even, min=0, max=0.95, step=0.05, style=style,
                                              description="break-even t (wrong costs t/(1−t))",
                                              continuous_update=False)
        self.threshold = widgets.FloatSlider(value=threshold, min=0, max=1, step=0.01, style=style,
                                             description="abstain below confidence", continuous_update=False)
        self.status = widgets.HTML()
        self.chart = widgets.Image(format="png")
        self.watch(self.model, self.break_even, self.threshold)
        super().__init__([self.model, widgets.HBox([self.break_even, self.threshold]), self.status, self.chart])
        self.refresh()

    def refresh(self) -> None:
        answers = self.named[self.model.value]
        t = self.break_even.value
        self.result = r = abstention_score(answers, penalty_for(t), self.threshold.value)
        scores = abstention_curve(answers, penalty_for(t))
        best = max(range(len(GRID)), key=scores.__getitem__)
        self.status.value = html.escape(
            f"score {r['score']:+.3f} per question: {r['correct']:.1%} right, {r['wrong']:.1%} wrong, "
            f"{r['abstained']:.1%} withheld (a wrong answer costs {penalty_for(t):.3g}). The best threshold for "
            f"this penalty is {GRID[best]:.2f} (score {scores[best]:+.3f}); always answering scores "
            f"{scores[0]:+.3f}.")
        self.figure = abstention_figure(answers, sorted({*BREAK_EVENS, t}), threshold=self.threshold.value)
        self.chart.value = figure_to_png(self.figure, dpi=80)


# The name the book uses: building the explorer is just constructing it (display it in Jupyter).
abstention_explorer = AbstentionExplorer

