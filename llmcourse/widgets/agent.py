"""Figures of chapter 17: a tool-use chat token by token, and accuracy with and without tools.

`tool_template_figure` draws every token of `agent.render_tool_chat` as a box coloured by the
part of the chat it belongs to (the roles of chapter 13's `template_figure`, plus a call and a
tool's result), with the tokens the loss counts outlined. `accuracy_figure` draws the table of
`agent_train.accuracy_table` (one per condition) as grouped bars.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from matplotlib.figure import Figure

from llmcourse.agent import CALL, RESULT, render_tool_chat
from llmcourse.checks import ArgumentError
from llmcourse.finetune import CHAT_ROLES
from llmcourse.tokenizer import Tokenizer
from llmcourse.widgets.chat import ROLE_COLORS, token_boxes_figure

__all__ = ["CONDITION_COLORS", "TOOL_ROLE_COLORS", "ToolChatToken", "accuracy_figure", "tool_chat_tokens",
           "tool_template_figure"]

Message = dict[str, str]
TOOL_ROLE_COLORS = {**ROLE_COLORS, "call": "#f08a5d", "result": "#b5e3b0"}
CONDITION_COLORS = {"direct": "0.6", "tools banned": "#8fb3d9", "tools": "#e07b39"}


@dataclass(frozen=True)
class ToolChatToken:
    """One token of a rendered tool chat: its text, the part of the chat it belongs to
    ("document" for the leading <|endoftext|>, else a role of `TOOL_ROLE_COLORS`), whether the
    loss counts it, and whether it is a special token."""

    text: str
    role: str
    supervised: bool
    special: bool


def tool_chat_tokens(tokenizer: Tokenizer, messages: Sequence[Message]) -> list[ToolChatToken]:
    """The tokens of `render_tool_chat(tokenizer, messages)`, each with its role and loss mask.
    An `<|assistant|>` followed by `<|call|>` opens a call, and belongs to it."""
    ids, mask = render_tool_chat(tokenizer, messages)
    special = tokenizer.special_tokens
    role_of = {special[token]: role for role, token in CHAT_ROLES.items()} | {special[RESULT]: "result"}
    call = special[CALL]
    specials = set(special.values())
    role, tokens = "document", []
    for i, (token, supervised) in enumerate(zip(ids, mask)):
        if token in role_of:
            role = role_of[token]
            if role == "assistant" and i + 1 < len(ids) and ids[i + 1] == call:
                role = "call"
        tokens.append(ToolChatToken(tokenizer.decode([token]), role, supervised, token in specials))
    return tokens


def tool_template_figure(tokenizer: Tokenizer, messages: Sequence[Message], *, width: float = 9.5,
                         chars_per_line: int = 80, title: str | None = None) -> Figure:
    """Every token of the rendered tool chat as a box, coloured by role and written out (a space
    as "␣"); the tokens the loss counts have a thick outline and a tick below (chapter 13's
    `token_boxes_figure`). The first axes holds one patch per token."""
    return token_boxes_figure(tool_chat_tokens(tokenizer, messages), TOOL_ROLE_COLORS, width=width,
                              chars_per_line=chars_per_line, title=title)


def accuracy_figure(tables: Mapping[str, Mapping[str, Mapping[str, float]]], *,
                    groups: Sequence[str] | None = None, title: str | None = None) -> Figure:
    """Share correct per group (x) and condition (one bar each), from `{condition: accuracy_table}`.

    `groups` picks and orders the groups (default: those of the first table, in order). Each bar
    is labelled with its percentage; the group's size n is under its name."""
    if not tables:
        raise ArgumentError("tables is empty; pass {condition: accuracy_table(runs)}")
    conditions = list(tables)
    groups = list(groups) if groups is not None else list(next(iter(tables.values())))
    for condition in conditions:
        missing = [g for g in groups if g not in tables[condition]]
        if missing:
            raise ArgumentError(f"the table of {condition!r} has no group {missing[0]!r}; "
                                f"its groups are {', '.join(tables[condition])}")
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(conditions)
    for c, condition in enumerate(conditions):
        xs = [g + (c - (len(conditions) - 1) / 2) * width for g in range(len(groups))]
        heights = [100 * tables[condition][group]["correct"] for group in groups]
        bars = ax.bar(xs, heights, width * 0.95, label=condition,
                      color=CONDITION_COLORS.get(condition, f"C{c}"))
        ax.bar_label(bars, [f"{h:.0f}" for h in heights], fontsize=7, padding=1)
    first = tables[conditions[0]]
    ax.set_xticks(range(len(groups)), [_group_label(group, int(first[group]["n"])) for group in groups], fontsize=8)
    ax.set_ylabel("correct (%)")
    ax.set_ylim(0, 110)
    ax.grid(axis="y", alpha=0.3)
    # above the axes, where no bar or bar label can hide under it
    fig.legend(fontsize=8, frameon=False, ncol=len(conditions), loc="outside upper center")
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def _group_label(group: str, n: int) -> str:
    """A group's name in short lines under its bars: "multi_hop: town_capital" ->
    "multi_hop:\ntown\ncapital\n(n=11)"."""
    head, _, detail = group.partition(": ")
    if detail:
        return f"{head}:\n{detail.replace('_', chr(10))}\n(n={n})"
    return group.replace(", ", ",\n") + f"\n(n={n})"
