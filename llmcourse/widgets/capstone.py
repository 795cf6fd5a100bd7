"""The capstone's pipeline pictured (chapter 18): the stages, and where each of your parts acts.

    pipeline_figure   data -> tokenizer -> pretrain -> SFT -> DPO -> report card -> chat, with the
                      six parts of `capstone.PARTS` feeding the stages they act in; coloured "yours"
                      or "reference" from a part table, with each stage's seconds when given
    stage_table       the seconds of each stage for several runs, as a Markdown table, totals
                      against a time budget
"""

from __future__ import annotations

from collections.abc import Mapping

from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch

from llmcourse.capstone import PARTS
from llmcourse.checks import ArgumentError

__all__ = ["STAGE_BOXES", "STAGE_SPANS", "pipeline_figure", "stage_table"]

STAGE_BOXES = ("data", "tokenizer", "pretrain", "SFT", "DPO", "report card", "chat")
# The boxes each timed stage of `run_capstone` covers (its `stage_seconds` keys): pretraining's time
# includes preparing the data and the tokenizer; the report card and the chat are timed together.
STAGE_SPANS = {"pretrain": (0, 2), "sft": (3, 3), "dpo": (4, 4), "report card and chat": (5, 6)}
# The boxes (first, last) each part acts in: the model's layers run in every stage that runs the
# model, the optimizer in the three training stages, your filters only in the chat's sampling.
PART_SPANS = {"tokenizer": (1, 1), "attention": (2, 6), "norm": (2, 6), "mlp": (2, 6), "optimizer": (2, 4),
              "sampling": (6, 6)}

COLOURS = {"yours": "#b7e4c7", "reference": "#dddddd", None: "#cfe2f3"}  # fills: yours, reference, no table
EDGES = {"yours": "#2d6a4f", "reference": "#777777", None: "#3d6f99"}
STEP = 2.0  # distance between stage centres
WIDTH, HEIGHT = 1.6, 0.8  # a stage box
STAGE_Y = 3.0


def _centre(index: int) -> float:
    return 1.0 + STEP * index


def _whose(parts_table: Mapping[str, str] | None, name: str) -> str | None:
    if parts_table is None:
        return None
    return "yours" if parts_table[name] == "yours" else "reference"


def _box(ax, x: float, y: float, width: float, height: float, text: str, fill: str, edge: str,
         fontsize: float = 9, weight: str = "normal") -> None:
    ax.add_patch(FancyBboxPatch((x - width / 2, y - height / 2), width, height,
                                boxstyle="round,pad=0.04,rounding_size=0.12", facecolor=fill, edgecolor=edge,
                                linewidth=1.2))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, weight=weight)


def _bracket(ax, first: int, last: int, y: float, tip: float, colour: str) -> None:
    """A line over boxes first..last at height y, with short ticks towards the boxes (ending at tip)."""
    left, right = _centre(first) - WIDTH / 2 + 0.1, _centre(last) + WIDTH / 2 - 0.1
    ax.plot([left, right], [y, y], color=colour, linewidth=1.2)
    for x in (left, right):
        ax.plot([x, x], [y, tip], color=colour, linewidth=1.2)


def _arrow(ax, start: tuple[float, float], end: tuple[float, float], colour: str) -> None:
    ax.annotate("", end, start, arrowprops={"arrowstyle": "-|>", "color": colour, "linewidth": 1.2,
                                            "shrinkA": 0, "shrinkB": 0})


def _check(parts_table: Mapping[str, str] | None, stage_seconds: Mapping[str, float] | None) -> None:
    if parts_table is not None and set(parts_table) != set(PARTS):
        raise ArgumentError(f"parts_table must name every part {sorted(PARTS)}, got {sorted(parts_table)}; "
                            "pass the `table` of capstone.assemble or the `parts` of a CapstoneResult")
    if stage_seconds is not None:
        unknown = set(stage_seconds) - set(STAGE_SPANS)
        if unknown:
            raise ArgumentError(f"stage_seconds has unknown stage(s) {sorted(unknown)}; the stages are "
                                f"{list(STAGE_SPANS)} (the `stage_seconds` of a CapstoneResult)")


def pipeline_figure(parts_table: Mapping[str, str] | None = None,
                    stage_seconds: Mapping[str, float] | None = None) -> Figure:
    """The capstone's stages left to right, with the parts you wrote feeding the stages they act in.

    parts_table: part name -> "yours" or "reference (why)" (`Assembly.table`, `CapstoneResult.parts`);
    colours each part green (yours) or grey (reference). stage_seconds: `CapstoneResult.stage_seconds`;
    writes each stage's time under the boxes it covers, and the total.
    """
    _check(parts_table, stage_seconds)
    fig = Figure(figsize=(9, 4.3), layout="constrained")
    ax = fig.subplots()
    ax.set_xlim(-0.05, _centre(len(STAGE_BOXES) - 1) + 1.05)
    ax.set_ylim(-0.35, 5.75)
    ax.axis("off")

    # the stages, left to right
    for index, stage in enumerate(STAGE_BOXES):
        _box(ax, _centre(index), STAGE_Y, WIDTH, HEIGHT, stage, "white", "black", fontsize=10, weight="bold")
        if index:
            _arrow(ax, (_centre(index - 1) + WIDTH / 2, STAGE_Y), (_centre(index) - WIDTH / 2, STAGE_Y), "black")

    def part_box(name: str, x: float, y: float) -> None:
        whose = _whose(parts_table, name)
        label = f"{name} (ex. {PARTS[name].exercise[:2]})"
        if whose is not None:
            label += f"\n{whose}"
        _box(ax, x, y, 1.92, 0.62 if whose else 0.42, label, COLOURS[whose], EDGES[whose], fontsize=8.5)

    top_y, top_part = STAGE_Y + HEIGHT / 2, 5.0
    # above: the tokenizer, the optimizer (a bracket over the training stages) and the sampling filters
    for name in ("tokenizer", "sampling"):
        index = PART_SPANS[name][0]
        part_box(name, _centre(index), top_part)
        _arrow(ax, (_centre(index), top_part - 0.33), (_centre(index), top_y + 0.05), EDGES[_whose(parts_table, name)])
    first, last = PART_SPANS["optimizer"]
    colour = EDGES[_whose(parts_table, "optimizer")]
    _bracket(ax, first, last, top_y + 0.55, top_y + 0.05, colour)
    middle = (_centre(first) + _centre(last)) / 2
    ax.plot([middle, middle], [top_y + 0.55, top_part - 0.33], color=colour, linewidth=1.2)
    part_box("optimizer", middle, top_part)
    ax.text(middle, top_y + 0.68, "every training step", ha="center", va="bottom", fontsize=8, color="0.35",
            backgroundcolor="white")

    # below: the model's layers, in every stage that runs the model
    first, last = PART_SPANS["attention"]
    bottom_y, bracket_y, layers_y = STAGE_Y - HEIGHT / 2, 1.6, 0.35
    # with times, the bracket stops under the time bars (which sit right under the boxes)
    _bracket(ax, first, last, bracket_y, bottom_y - (0.45 if stage_seconds is not None else 0.05), "0.35")
    middle = (_centre(first) + _centre(last)) / 2
    ax.text(middle, bracket_y - 0.12, "inside the model, in every stage that runs it", ha="center", va="top",
            fontsize=8, color="0.35")
    for offset, name in zip((-2.06, 0.0, 2.06), ("attention", "norm", "mlp")):
        part_box(name, middle + offset, layers_y)
        _arrow(ax, (middle + offset, layers_y + (0.31 if parts_table else 0.21)), (middle + offset, bracket_y - 0.45),
               EDGES[_whose(parts_table, name)])
    ax.plot([middle - 2.06, middle + 2.06], [bracket_y - 0.45, bracket_y - 0.45], color="0.35", linewidth=1.2)
    ax.plot([middle, middle], [bracket_y - 0.45, bracket_y - 0.36], color="0.35", linewidth=1.2)

    if stage_seconds is not None:  # each stage's time, under the boxes it covers
        for stage, seconds in stage_seconds.items():
            first, last = STAGE_SPANS[stage]
            left, right = _centre(first) - WIDTH / 2, _centre(last) + WIDTH / 2
            y = bottom_y - 0.14
            ax.plot([left + 0.05, right - 0.05], [y, y], color="tab:blue", linewidth=2)
            ax.text((left + right) / 2, y - 0.08, f"{seconds:,.0f} s", ha="center", va="top", fontsize=9,
                    color="tab:blue")
        total = sum(stage_seconds.values())
        ax.text(0.0, 5.6, f"total {total:,.0f} s ({total / 60:.1f} min)", ha="left", va="top", fontsize=9,
                color="tab:blue")
    if parts_table is not None:
        handles = [FancyBboxPatch((0, 0), 1, 1, facecolor=COLOURS[w], edgecolor=EDGES[w], label=w)
                   for w in ("yours", "reference")]
        ax.legend(handles=handles, loc="upper right", fontsize=8, frameon=False, ncols=2)
    return fig


def stage_table(runs: Mapping[str, Mapping[str, float]], budget_s: float | None = None) -> str:
    """A Markdown table: one row per stage, one column per run (seconds), then the total (and its
    share of `budget_s`). `runs`: run name -> `stage_seconds`."""
    if not runs:
        raise ArgumentError("no runs to tabulate; pass {run name: stage_seconds}")
    stages = list(dict.fromkeys(stage for seconds in runs.values() for stage in seconds))
    rows = ["| stage | " + " | ".join(runs) + " |", "|---|" + "---:|" * len(runs)]
    for stage in stages:
        cells = [f"{seconds[stage]:,.1f} s" if stage in seconds else "" for seconds in runs.values()]
        rows.append(f"| {stage} | " + " | ".join(cells) + " |")
    totals = [sum(seconds.values()) for seconds in runs.values()]
    rows.append("| **total** | " + " | ".join(f"**{t:,.0f} s** ({t / 60:.1f} min)" for t in totals) + " |")
    if budget_s is not None:
        rows.append(f"| share of the {budget_s / 60:.0f}-minute budget | "
                    + " | ".join(f"{t / budget_s:.0%}" for t in totals) + " |")
    return "\n".join(rows)
