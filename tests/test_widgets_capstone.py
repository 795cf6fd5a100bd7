"""The capstone's pipeline figure and stage table (`llmcourse.widgets.capstone`)."""

from __future__ import annotations

import pytest
from matplotlib.colors import to_rgba
from matplotlib.patches import FancyBboxPatch

from llmcourse.capstone import PARTS
from llmcourse.checks import ArgumentError
from llmcourse.widgets.capstone import COLOURS, STAGE_BOXES, STAGE_SPANS, pipeline_figure, stage_table

SECONDS = {"pretrain": 430.0, "sft": 115.5, "dpo": 35.2, "report card and chat": 61.0}


def texts(figure) -> list[str]:
    return [text.get_text() for text in figure.axes[0].texts]


def fills(figure) -> list[tuple]:
    return [patch.get_facecolor() for patch in figure.axes[0].patches if isinstance(patch, FancyBboxPatch)]


def test_every_stage_and_part_is_drawn_with_its_exercise():
    figure = pipeline_figure()
    labels = texts(figure)
    for stage in STAGE_BOXES:
        assert stage in labels
    for part in PARTS.values():
        assert f"{part.name} (ex. {part.exercise[:2]})" in labels
    assert not any(label.endswith("s") and label[:-2].replace(",", "").isdigit() for label in labels)  # no times


def test_parts_are_coloured_by_whose_they_are():
    table = {name: "yours" for name in PARTS}
    table["optimizer"] = "reference (adamw_update is not implemented yet)"
    figure = pipeline_figure(table)
    colours = fills(figure)
    # five parts of the learner's, one of the reference (the legend's swatches are not the axes' patches)
    assert colours.count(to_rgba(COLOURS["yours"])) == len(PARTS) - 1
    assert colours.count(to_rgba(COLOURS["reference"])) == 1
    assert "optimizer (ex. 09)\nreference" in texts(figure)
    assert "attention (ex. 05)\nyours" in texts(figure)


def test_stage_times_and_total_are_written():
    labels = texts(pipeline_figure(None, SECONDS))
    for seconds in SECONDS.values():
        assert f"{seconds:,.0f} s" in labels
    total = sum(SECONDS.values())
    assert f"total {total:,.0f} s ({total / 60:.1f} min)" in labels
    assert set(STAGE_SPANS) == set(SECONDS)  # the keys run_capstone times


def test_bad_inputs_are_named():
    with pytest.raises(ArgumentError, match="every part"):
        pipeline_figure({"attention": "yours"})
    with pytest.raises(ArgumentError, match="unknown stage.*tokenize"):
        pipeline_figure(None, {"tokenize": 1.0})
    with pytest.raises(ArgumentError, match="no runs"):
        stage_table({})


def test_stage_table_sums_and_compares_with_the_budget():
    table = stage_table({"reference": SECONDS, "yours": {**SECONDS, "pretrain": 900.0}}, budget_s=1200)
    lines = table.splitlines()
    assert lines[0] == "| stage | reference | yours |"
    assert "| pretrain | 430.0 s | 900.0 s |" in lines
    total = sum(SECONDS.values())
    assert f"**{total:,.0f} s** ({total / 60:.1f} min)" in lines[-2]
    assert lines[-1] == f"| share of the 20-minute budget | {total / 1200:.0%} | {(total + 470) / 1200:.0%} |"
