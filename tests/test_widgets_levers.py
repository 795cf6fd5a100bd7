"""The levers explorer of chapter 16 (`llmcourse.widgets.levers`), on hand-made report cards."""

from __future__ import annotations

import copy

import pytest

from llmcourse.checks import ArgumentError
from llmcourse.evaluate import REPORT_ROWS, REPORT_SCHEMA
from llmcourse.widgets.levers import UNCHANGED, LeverExplorer, card_comparison, levers_figure


def card(sft: float, heldout: float) -> dict:
    facts = {split: {"correct": 0.0, "refusal": 0.0, "wrong": 1.0, "n": 1} for split in ("sft", "heldout", "unseen", "unknown")}
    facts["sft"]["correct"], facts["heldout"]["correct"] = sft, heldout
    return {"schema": REPORT_SCHEMA, "asked_as": "chat", "facts": facts, "invention_rate": 0.2,
            "text": {"loss": 1.0, "bits_per_byte": 0.5},
            "calibration": {"ece": 0.1, "mean_confidence": 0.8, "accuracy": 0.9},
            "stories": {"repetition_4": 0.0, "distinct_2": 0.4, "tokens_per_s": 1000.0}}


@pytest.fixture
def rows():
    return {UNCHANGED: {"bytes": 3_700_000, "card": card(0.99, 0.52)},
            "int8": {"bytes": 1_400_000, "card": card(0.98, 0.51)},
            "magnitude 50%": {"bytes": 3_700_000, "card": card(0.6, 0.3)}}


def test_comparison_has_every_row_of_the_card(rows):
    table = card_comparison(rows, "int8")
    assert len(table.splitlines()) == 3 + len(REPORT_ROWS)
    assert "| size (bytes) | 3,700,000 | 1,400,000 |" in table
    assert "| facts taught in SFT: correct | 99.0% | 98.0% |" in table


def test_explorer_follows_its_dropdown(rows):
    explorer = LeverExplorer(rows)
    assert explorer.variant.value == "int8" and "1,400,000" in explorer.message
    explorer.variant.value = "magnitude 50%"
    assert "60.0%" in explorer.message and explorer.figure is not None
    assert len(levers_figure(rows, "int8").axes) == 2


def test_bad_rows_are_named(rows):
    without = {k: v for k, v in rows.items() if k != UNCHANGED}
    with pytest.raises(ArgumentError, match="unchanged"):
        LeverExplorer(without)
    broken = copy.deepcopy(rows)
    broken["int8"]["card"]["schema"] = "x"
    with pytest.raises(ArgumentError, match="int8"):
        levers_figure(broken)
    with pytest.raises(ArgumentError):
        LeverExplorer(rows, variant="int5")
