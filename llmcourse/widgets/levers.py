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


def _style(name: str) -> dict:
    """How a variant is drawn: quantized as circles coloured by bits (GPTQ filled, rounding hollow),
    pruned as squares coloured by what is removed, the unchanged model as a black star."""
    if name == UNCHANGED:
        return {"marker": "*", "color": "black", "markersize": 11, "label": "unchanged (float32)"}
    if "%" in name:  # "heads 25%"
        kind = name.split()[0]
        color = {"magnitude": "tab:orange", "heads": "tab:red", "neurons": "tab:green"}.get(kind, "0.5")
        return {"marker": "s", "color": color, "markersize": 6, "label": f"{kind} pruning"}
    bits = int(name.split()[0].removeprefix("int"))
    color = {8: "#08306b", 4: "#2171b5", 3: "#6baed6", 2: "#c6dbef"}.get(bits, "tab:blue")
    gptq = "GPTQ" in name
    return {"marker": "o", "color": color, "markersize": 7, "markerfacecolor": color if gptq else "white",
            "label": f"int{bits} " + ("GPTQ" if gptq else "rounding")}


def levers_figure(rows: Mapping[str, dict], selected: str | None = None) -> Figure:
    """Size in MB against the share of facts answered correctly, one point per variant (the legend
    says which), `selected` circled and named."""
    _check_rows(rows)
    fig = Figure(figsize=(10.5, 4.0), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True)
    for ax, (label, path) in zip(axes, KNOWLEDGE):
        drawn = {}
        for name, row in rows.items():
            style = _style(name)
            x, y = row["bytes"] / 1e6, _value(row["card"], path)
            line, = ax.plot([x], [y], linestyle="none", **{k: v for k, v in style.items() if k != "label"})
            drawn.setdefault(style["label"], line)
            if name == selected:
                ax.plot([x], [y], "o", markersize=16, markerfacecolor="none", markeredgecolor="crimson")
                ax.annotate(name, (x, y), (10, -14), textcoords="offset points", fontsize=8, color="crimson")
        ax.set_xlabel("size (MB): packed weights, float embeddings")
        ax.set_ylabel(f"{label}: correct")
        ax.set_ylim(-0.03, 1.05)
        ax.grid(alpha=0.3)
    axes[1].legend(drawn.values(), drawn.keys(), fontsize=7, frameon=False, loc="center left",
                   bbox_to_anchor=(1.0, 0.5))
    fig.suptitle("Smaller models, graded by the report card (pruned models keep their float size)", fontsize=10)
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
