"""The figures of chapter 17 (`llmcourse.widgets.agent`), on a tiny tokenizer and hand-made tables."""

from __future__ import annotations

import pytest

from llmcourse.agent import add_tool_tokens, render_tool_chat
from llmcourse.checks import ArgumentError
from llmcourse.tokenizer import Tokenizer
from llmcourse.widgets.agent import accuracy_figure, tool_chat_tokens, tool_template_figure

TRACE = [{"role": "user", "content": "What is 12 * 7?"}, {"role": "call", "content": "calculator(12 * 7)"},
         {"role": "result", "content": "84"}, {"role": "assistant", "content": "It is 84."}]


@pytest.fixture(scope="module")
def tokenizer():
    return add_tool_tokens(Tokenizer.train("What is 12 * 7? calculator(12 * 7) 84 It is 84. " * 20, 280))


def test_tokens_follow_the_template_and_its_mask(tokenizer):
    ids, mask = render_tool_chat(tokenizer, TRACE)
    tokens = tool_chat_tokens(tokenizer, TRACE)
    assert [t.supervised for t in tokens] == mask and len(tokens) == len(ids)
    assert "".join(t.text for t in tokens) == tokenizer.decode(ids)
    roles = [t.role for t in tokens]
    assert roles[0] == "document"
    call_start = next(i for i, t in enumerate(tokens) if t.text == "<|call|>")
    assert roles[call_start - 1] == "call" and not tokens[call_start - 1].supervised  # its <|assistant|>
    assert all(not t.supervised for t in tokens if t.role == "result")
    assert {t.role for t in tokens if t.supervised} == {"call", "assistant"}


def test_template_figure_draws_one_box_per_token(tokenizer):
    fig = tool_template_figure(tokenizer, TRACE, title="trace")
    assert len(fig.axes[0].patches) == len(render_tool_chat(tokenizer, TRACE)[0])


def table(correct: float) -> dict:
    return {"arithmetic, 1 digit": {"n": 10, "correct": correct, "refusal": 0.0, "wrong": 1 - correct},
            "all": {"n": 10, "correct": correct, "refusal": 0.0, "wrong": 1 - correct}}


def test_accuracy_figure_has_a_bar_per_group_and_condition():
    fig = accuracy_figure({"direct": table(0.1), "tools": table(0.9)})
    heights = sorted(round(p.get_height()) for p in fig.axes[0].patches)
    assert heights == [10, 10, 90, 90]
    assert len(fig.legends) == 1 and not fig.axes[0].get_legend()  # the legend sits above, off the bars
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["arithmetic,\n1 digit\n(n=10)", "all\n(n=10)"]


def test_accuracy_figure_breaks_long_group_names():
    two_step = {"multi_hop: town_capital": {"n": 11, "correct": 0.5, "refusal": 0.0, "wrong": 0.5}}
    fig = accuracy_figure({"tools": two_step})
    assert fig.axes[0].get_xticklabels()[0].get_text() == "multi_hop:\ntown\ncapital\n(n=11)"


def test_accuracy_figure_names_a_missing_group():
    with pytest.raises(ArgumentError, match="no group 'all'"):
        accuracy_figure({"direct": table(0.1), "tools": {"arithmetic, 1 digit": table(0.9)["all"]}})
    with pytest.raises(ArgumentError, match="empty"):
        accuracy_figure({})
