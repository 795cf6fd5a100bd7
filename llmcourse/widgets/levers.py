"""The levers explorer of chapter 16: what each smaller model costs on the report card.

Each lever (a quantization setting, a pruning setting) makes a variant of one model; chapter 15's
report card grades it. `levers_figure` places every variant by its size against what it still
knows; `LeverExplorer` picks one variant and sets its card beside the unchanged model's.
"""

from __future__ import annotations

import html
from collections.abc import Mapping

import ipywidgets as widgets
from matplotlib.figure import Figure

from llmcourse.checks import ArgumentError, check_choice
from llmcourse.evaluate import REPORT_ROWS, REPORT_SCHEMA
from llmcourse.plots import figure_to_png
from llmcourse.widgets.explorer import Explorer

__all__ = ["UNCHANGED", "LeverExplorer", "card_comparison", "lever_explorer", "levers_figure"]

UNCHANGED = "unchanged"  # the name of the model every variant is compared with
# (label, path into a card) of the two measures the figure plots against size
KNOWLEDGE = (("facts taught in SFT", ("facts", "sft", "correct")),
             ("facts only in pretraining", ("facts", "heldout", "correct")))


def _value(card: dict, path: tuple[str, ...]) -> float:
    for key in path:
        card = card[key]
    return card


def _check_rows(rows: Mapping[str, dict]) -> None:
    if UNCHANGED not in rows:
        raise ArgumentError(f"rows need an {UNCHANGED!r} entry to compare with; got {sorted(rows)}")
    for name, row in rows.items():
        if not isinstance(row, dict) or "bytes" not in row or row.get("card", {}).get("schema") != REPORT_SCHEMA:
            raise ArgumentError(f"row {name!r} must be {{'bytes': int, 'card': a report card}}, as "
                                "book/runs/record.py levers writes them")


def levers_figure(rows: Mapping[str, dict], selected: str | None = None) -> Figure:
    """Size in bytes against the share of facts answered correctly, one point per variant (quantized
    variants as circles, pruned ones, which keep their float size, as squares); `selected` circled."""
    _check_rows(rows)
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    for ax, (label, path) in zip(fig.subplots(1, 2, sharex=True), KNOWLEDGE):
        for name, row in rows.items():
            pruned = "%" in name
            marker = "s" if pruned else "o"
            color = "0.2" if name == UNCHANGED else ("tab:orange" if pruned else "tab:blue")
            x, y = row["bytes"] / 1e6, _value(row["card"], path)
            ax.plot([x], [y], marker, color=color, markersize=6)
            ax.annotate(name, (x, y), (4, 3), textcoords="offset points", fontsize=7)
            if name == selected:
                ax.plot([x], [y], "o", markersize=14, markerfacecolor="none", markeredgecolor="crimson")
        ax.set_xlabel("size (MB): packed weights, float embeddings")
        ax.set_ylabel(f"{label}: correct")
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
    fig.suptitle("Smaller models, graded by the report card (circles: quantized; squares: pruned, float size)",
                 fontsize=10)
    return fig


def card_comparison(rows: Mapping[str, dict], name: str) -> str:
    """A Markdown table: every report-card row of variant `name` beside the unchanged model's."""
    _check_rows(rows)
    check_choice("name", name, list(rows), hint="a variant of the recorded rows")
    lines = [f"| | {UNCHANGED} | {name} |", "|---|---|---|",
             f"| size (bytes) | {rows[UNCHANGED]['bytes']:,} | {rows[name]['bytes']:,} |"]
    for label, path, fmt in REPORT_ROWS:
        lines.append(f"| {label} | {fmt.format(_value(rows[UNCHANGED]['card'], path))} | "
                     f"{fmt.format(_value(rows[name]['card'], path))} |")
    return "\n".join(lines)


class LeverExplorer(Explorer):
    """Pick a variant; see its report card beside the unchanged model's and its place on the figure.

    Control: `variant` (dropdown). State after any change: `figure` and `message` (the table as HTML).
    """

    def __init__(self, rows: Mapping[str, dict], variant: str | None = None) -> None:
        _check_rows(rows)
        self.rows = dict(rows)
        names = [name for name in self.rows if name != UNCHANGED]
        if variant is not None:
            check_choice("variant", variant, names)
        self.figure: Figure | None = None
        self.variant = widgets.Dropdown(options=names, value=variant or names[0], description="variant")
        self.status = widgets.HTML()
        self.chart = widgets.Image(format="png")
        self.watch(self.variant)
        super().__init__([self.variant, self.status, self.chart])
        self.refresh()

    def refresh(self) -> None:
        table = card_comparison(self.rows, self.variant.value).splitlines()
        cells = [[html.escape(cell.strip()) for cell in line.strip("|").split("|")] for line in table if "---" not in line]
        body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in cells)
        self.status.value = f"<table>{body}</table>"
        self.figure = levers_figure(self.rows, self.variant.value)
        self.chart.value = figure_to_png(self.figure, dpi=80)


# The name the book uses: building the explorer is just constructing it (display it in Jupyter).
lever_explorer = LeverExplorer
