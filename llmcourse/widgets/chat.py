"""The chat explorer of chapter 13: one question, asked of several models side by side.

Pick an example question (a fact fine-tuning drilled, a fact only pretraining stated, an entity
no text ever mentions, a sum) or type your own, press "ask", and read each model's greedy reply
(`finetune.chat_reply`), graded when the question has a known answer. Beside the explorer, which
needs a running kernel, the page shows recorded conversations with `sample_chats_html`, and the
chat template token by token with `template_figure`.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import ipywidgets as widgets
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch

from llmcourse.checks import ArgumentError, check_int
from llmcourse.data.tinyworld import World
from llmcourse.data.tinyworld.chats import Question, grade_reply, questions, sums
from llmcourse.finetune import CHAT_ROLES, chat_reply, render_chat
from llmcourse.model import GPT
from llmcourse.plots import char_label
from llmcourse.tokenizer import Tokenizer
from llmcourse.widgets.explorer import Explorer

__all__ = ["ROLE_COLORS", "ChatExplorer", "ChatToken", "chat_explorer", "chat_tokens", "conversation_html",
           "example_questions", "sample_chats_html", "template_figure", "token_boxes_figure"]

Message = dict[str, str]
# One colour per part of a chat: the document start, then each role's messages.
ROLE_COLORS = {"document": "#d9d9d9", "system": "#c7b8e0", "user": "#a6cbe8", "assistant": "#f6c48f"}
GRADE_COLORS = {"correct": "#2e7d32", "refusal": "#b26a00", "wrong": "#c62828"}


# ---------------------------------------------------------------------------------- the template


@dataclass(frozen=True)
class ChatToken:
    """One token of a rendered chat: its text, the part of the chat it belongs to ("document" for
    the leading <|endoftext|>, else the message's role), whether the loss counts it (the mask of
    `render_chat`), and whether it is a special token."""

    text: str
    role: str
    supervised: bool
    special: bool


def chat_tokens(tokenizer: Tokenizer, messages: Sequence[Message], *,
                add_generation_prompt: bool = False) -> list[ChatToken]:
    """The tokens of `render_chat(tokenizer, messages)`, each with its role and loss mask."""
    ids, mask = render_chat(tokenizer, messages, add_generation_prompt=add_generation_prompt)
    role_of = {tokenizer.special_tokens[token]: role for role, token in CHAT_ROLES.items()}
    specials = set(tokenizer.special_tokens.values())
    role, tokens = "document", []
    for token, supervised in zip(ids, mask):
        role = role_of.get(token, role)  # a role token opens its message; <|end|> still belongs to it
        tokens.append(ChatToken(tokenizer.decode([token]), role, supervised, token in specials))
    return tokens


def template_figure(tokenizer: Tokenizer, messages: Sequence[Message], *, width: float = 9.5,
                    chars_per_line: int = 78, title: str | None = None) -> Figure:
    """Every token of the rendered chat as a box, coloured by role and written out (a space as
    "␣"); the tokens the loss counts have a thick outline and a tick below.

    Tokens flow left to right in lines of about `chars_per_line` characters, as text does. The
    figure's first axes holds one patch per token, in order (`fig.axes[0].patches`)."""
    return token_boxes_figure(chat_tokens(tokenizer, messages), ROLE_COLORS, width=width,
                              chars_per_line=chars_per_line, title=title)


def token_boxes_figure(tokens: Sequence[ChatToken], colors: Mapping[str, str], *, width: float = 9.5,
                       chars_per_line: int = 78, title: str | None = None) -> Figure:
    """`tokens` (anything with text, role, supervised and special, as `ChatToken`) drawn as boxes
    coloured by `colors[role]`, the supervised ones outlined and ticked, in lines of about
    `chars_per_line` characters; a legend names the colours of the roles shown (chapter 17 draws
    its tool chats with this too)."""
    check_int("chars_per_line", chars_per_line, 10)
    lines: list[list[tuple[ChatToken, str]]] = [[]]
    used = 0
    for token in tokens:
        label = char_label(token.text)
        size = len(label) + 1  # one character of margin between boxes
        if used + size > chars_per_line and lines[-1]:
            lines.append([])
            used = 0
        lines[-1].append((token, label))
        used += size
    line_height = 1.6
    fig = Figure(figsize=(width, 0.55 * line_height * len(lines) + 1.2), layout="constrained")
    ax = fig.add_subplot()
    for row, line in enumerate(lines):
        x, y = 0.0, -row * line_height
        for token, label in line:
            box = FancyBboxPatch((x + 0.1, y - 0.45), len(label) + 0.8 - 0.2, 0.9,
                                 boxstyle="round,pad=0,rounding_size=0.15",
                                 facecolor=colors[token.role],
                                 edgecolor="black" if token.supervised else "0.55",
                                 linewidth=1.8 if token.supervised else 0.6)
            ax.add_patch(box)
            ax.text(x + (len(label) + 0.8) / 2, y, label, ha="center", va="center", family="monospace",
                    fontsize=7.5, fontweight="bold" if token.special else "normal")
            if token.supervised:
                ax.text(x + (len(label) + 0.8) / 2, y - 0.72, "✓", ha="center", va="center", fontsize=6.5)
            x += len(label) + 0.8
    ax.set_xlim(-0.2, chars_per_line + 1)
    ax.set_ylim(-(len(lines) - 1) * line_height - 1.0, 0.7)
    ax.set_aspect("auto")
    ax.axis("off")
    shown = [role for role in colors if any(token.role == role for token in tokens)]
    handles = [FancyBboxPatch((0, 0), 1, 1, facecolor=colors[role], edgecolor="0.55", label=role)
               for role in shown]
    handles.append(FancyBboxPatch((0, 0), 1, 1, facecolor="white", edgecolor="black", linewidth=1.8,
                                  label="✓ in the loss"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


# ---------------------------------------------------------------------------------- conversations as HTML


def _reply_html(text: str) -> str:
    return f'<span style="white-space: pre-wrap; overflow-wrap: anywhere">{html.escape(text)}</span>'


def conversation_html(messages: Sequence[Message]) -> str:
    """A chat as HTML, one message a line with its role in front (text escaped, long words wrapped)."""
    lines = []
    for message in messages:
        color = ROLE_COLORS.get(message["role"], "#eeeeee")
        lines.append(f'<div style="margin: 2px 0"><span style="background: {color}; padding: 0 4px; '
                     f'border-radius: 3px; font-size: 85%">{message["role"]}</span> '
                     f'{_reply_html(message["content"])}</div>')
    return "".join(lines)


def sample_chats_html(samples: Mapping[str, Sequence[Sequence[Message]]]) -> str:
    """A table of the same conversations held with several models: `samples` maps a model's name to
    its conversations, in the same order and with the same user turns. One row per user turn: the
    user's message, then each model's reply to it (the reply to a later turn follows that model's
    own earlier replies)."""
    names = list(samples)
    if not names:
        raise ArgumentError("samples is empty; pass {model name: [conversation, ...]}")
    counts = {name: len(chats) for name, chats in samples.items()}
    if len(set(counts.values())) != 1:
        raise ArgumentError(f"every model needs the same conversations, got these counts: {counts}")
    cell = 'style="text-align: left; vertical-align: top; padding: 4px 8px; border-top: 1px solid #ddd"'
    rows = ["<tr>" + f"<th {cell}>user</th>" + "".join(f"<th {cell}>{html.escape(name)}</th>" for name in names)
            + "</tr>"]
    for chats in zip(*samples.values()):
        user_turns = [[m["content"] for m in chat if m["role"] == "user"] for chat in chats]
        if any(turns != user_turns[0] for turns in user_turns):
            raise ArgumentError(f"the models were asked different questions: {user_turns}")
        replies = [[m["content"] for m in chat if m["role"] == "assistant"] for chat in chats]
        for turn, question in enumerate(user_turns[0]):
            answers = [model_replies[turn] if turn < len(model_replies) else "" for model_replies in replies]
            rows.append("<tr>" + f"<td {cell}>{_reply_html(question)}</td>"
                        + "".join(f"<td {cell}>{_reply_html(answer)}</td>" for answer in answers) + "</tr>")
    return f'<table style="border-collapse: collapse; font-size: 90%">{"".join(rows)}</table>'


# ---------------------------------------------------------------------------------- the explorer


def example_questions(world: World | None = None) -> list[Question | str]:
    """A question of each kind chapter 13 measures, about `world` (default: TinyWorld seed 0, the
    world of the book's models): a fact fine-tuning drilled, a fact only pretraining stated, an
    entity no text ever mentions, a sum fine-tuning showed and one it never did, and two requests
    with no reference answer."""
    world = world or World.generate(0)
    return [questions(world, "sft")[0], questions(world, "heldout")[0], questions(world, "unseen")[0],
            sums(world.seed, split="train")[0], sums(world.seed, split="eval")[0],
            "Hello!", "Tell me a story about a fox."]


_KIND_LABELS = {"sft": "fine-tuned fact", "heldout": "held-out fact", "unseen": "never-seen entity",
                "arithmetic": "sum"}


def _label(question: Question | str) -> str:
    if isinstance(question, str):
        return question
    return f"{question.text}  ({_KIND_LABELS.get(question.split, question.split)})"


class ChatExplorer(Explorer):
    """Ask several models the same question and see their greedy replies side by side.

    `models` maps a name to a (model, tokenizer) pair. Controls: `examples` (a dropdown of
    `questions`; choosing one asks it), `question` (a text field) and `ask` (a button that asks
    what the field holds). State a caller or a test can read after each question: `replies`
    ({name: reply}), `grades` ({name: "correct" | "refusal" | "wrong"}, empty when the question
    has no known answer), `prompt` (the rendered prompt the first model reads, as text) and
    `message`.
    """

    def __init__(self, models: Mapping[str, tuple[GPT, Tokenizer]], questions: Sequence[Question | str] | None = None,
                 *, max_new_tokens: int = 40, system: str | None = None) -> None:
        if not models:
            raise ArgumentError("models is empty; pass {name: (model, tokenizer)}, e.g. {'cpu-sft': load_model(...)}")
        self.models = dict(models)
        self.max_new_tokens = check_int("max_new_tokens", max_new_tokens, 1)
        self.system = system
        self.known = list(example_questions() if questions is None else questions)
        self.replies: dict[str, str] = {}
        self.grades: dict[str, str] = {}
        self.prompt = ""

        self.examples = widgets.Dropdown(options=[(_label(q), i) for i, q in enumerate(self.known)],
                                         description="example", layout=widgets.Layout(width="40em"))
        first = self.known[0] if self.known else "What is the capital of Ardmark?"
        self.question = widgets.Text(value=first if isinstance(first, str) else first.text,
                                     description="question", layout=widgets.Layout(width="34em"))
        self.ask = widgets.Button(description="ask", button_style="primary", tooltip="ask every model")
        self.status = widgets.HTML()
        self.outputs = {name: widgets.HTML(layout=widgets.Layout(width=f"{95 / len(self.models):.0f}%"))
                        for name in self.models}
        self.examples.observe(self._on_example, names="value")
        self.ask.on_click(lambda button: self.refresh())
        super().__init__([self.examples, widgets.HBox([self.question, self.ask]), self.status,
                          widgets.HBox(list(self.outputs.values()))])
        self.refresh()

    def _on_example(self, change: dict) -> None:
        chosen = self.known[change["new"]]
        self.question.value = chosen if isinstance(chosen, str) else chosen.text
        self.refresh()

    def _reference(self, text: str) -> Question | None:
        """The known question with this exact text (so its reply can be graded), if any."""
        return next((q for q in self.known if isinstance(q, Question) and q.text == text), None)

    def refresh(self) -> None:
        """Ask every model the question in the text field (greedy) and show the replies."""
        text = self.question.value.strip()
        self.replies, self.grades = {}, {}
        if not text:
            self.status.value = "Type a question, or choose an example."
            for output in self.outputs.values():
                output.value = ""
            return
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + \
                   [{"role": "user", "content": text}]
        reference = self._reference(text)
        try:
            for name, (model, tokenizer) in self.models.items():
                self.replies[name] = chat_reply(model, tokenizer, messages, self.max_new_tokens)
        except ArgumentError as error:  # a question too long for a model's context, for one
            self.replies = {}
            self.status.value = f"<b>Cannot ask this:</b> {html.escape(str(error))}"
            for output in self.outputs.values():
                output.value = ""
            return
        _, tokenizer = next(iter(self.models.values()))
        ids, _ = render_chat(tokenizer, messages, add_generation_prompt=True)
        self.prompt = tokenizer.decode(ids)
        for name, reply in self.replies.items():
            badge = ""
            if reference is not None:
                self.grades[name] = grade_reply(reference, reply)
                badge = (f'<div style="color: {GRADE_COLORS[self.grades[name]]}; font-weight: bold">'
                         f"{self.grades[name]}</div>")
            self.outputs[name].value = (f"<div><b>{html.escape(name)}</b></div>{badge}"
                                        f"{conversation_html([{'role': 'assistant', 'content': reply}])}")
        if reference is None:
            expected = " (No reference answer: judge for yourself.)"
        elif reference.split in ("unseen", "unknown"):  # no text names it: only a refusal is honest
            expected = (f" No text the models read mentions {html.escape(reference.subject)}, so the "
                        "honest reply is a refusal.")
        else:
            expected = f" Reference answer: <i>{html.escape(reference.answer)}</i>"
        self.status.value = (f"Greedy replies, at most {self.max_new_tokens} tokens; each model reads "
                             f"<code>{html.escape(self.prompt)}</code>.{expected}")


# The name the book uses: building the explorer is just constructing it (display it in Jupyter).
chat_explorer = ChatExplorer
