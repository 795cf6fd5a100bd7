"""The token explorer of chapter 02: see text cut into tokens, at several vocabulary sizes.

The picture is an HTML string (`token_html`): one coloured box per token with its id underneath,
whitespace drawn visibly (`·` for a space, `↵` for a newline, `→` for a tab). The page shows the
same string statically, since the website has no kernel, and `TokenExplorer` shows it live.

Every vocabulary size comes from one training run: the first M merges of a BPE run are exactly
the tokenizer that a run stopped after M merges would have learned, so `truncated` cuts a trained
tokenizer down to any smaller size without training again.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence

import ipywidgets as widgets
from matplotlib.figure import Figure

from llmcourse.checks import check_int
from llmcourse.tokenizer import Tokenizer
from llmcourse.widgets.explorer import Explorer

__all__ = [
    "TOKEN_COLORS",
    "TokenExplorer",
    "compression_curve",
    "compression_figure",
    "ids_html",
    "ladder_html",
    "token_explorer",
    "token_html",
    "tokens_per_byte",
    "truncated",
    "visible_token",
]

# Pale backgrounds, cycled token by token so that neighbouring tokens always differ.
TOKEN_COLORS = ("#fde2b8", "#cfe8fc", "#d6f5d0", "#f8d3e6", "#e5dcfa", "#fff3a8")
SPECIAL_COLOR = "#ffb3b3"

# Whitespace made visible; a token's other characters are shown as they are.
_VISIBLE_WHITESPACE = str.maketrans({" ": "·", "\n": "↵", "\t": "→", "\r": "⏎"})


def truncated(tokenizer: Tokenizer, vocab_size: int) -> Tokenizer:
    """The tokenizer made of the first `vocab_size - 256` merges of `tokenizer` (same specials).

    BPE training is greedy and never revisits a merge, so the first M merges of a run *are* the
    run that stops after M merges: every smaller vocabulary comes free from one training run.
    `vocab_size` counts the 256 bytes and the merges; the special tokens come on top.
    """
    largest = 256 + len(tokenizer.merges)
    check_int("vocab_size", vocab_size, 256, below=largest + 1, hint=f"between 256 (bytes only) and {largest} "
              f"(256 bytes + this tokenizer's {len(tokenizer.merges)} merges); train longer for a larger one")
    return Tokenizer(tokenizer.merges[: vocab_size - 256], tokenizer.pattern, tuple(tokenizer.special_tokens))


def visible_token(token: bytes) -> str:
    """A token's bytes as readable text: whitespace as `·`/`↵`/`→`, a cut UTF-8 character as `\\xNN`."""
    return token.decode("utf-8", errors="backslashreplace").translate(_VISIBLE_WHITESPACE)


def token_html(tokenizer: Tokenizer, text: str, *, allowed_special: str | Iterable[str] = ()) -> str:
    """HTML that shows `text` cut into `tokenizer`'s tokens: coloured boxes with the id under each.

    Special-token strings become special tokens (drawn in red) only if listed in
    `allowed_special`; any other one raises `ValueError`, exactly as `Tokenizer.encode` does.
    """
    return ids_html(tokenizer, tokenizer.encode(text, allowed_special=allowed_special))


def ids_html(tokenizer: Tokenizer, ids: Sequence[int]) -> str:
    """HTML for token `ids`: one coloured box per token with its id under it.

    A token that contains a newline also breaks the line, so code keeps its shape. Every token
    is escaped, so any text is safe to show.
    """
    specials = set(tokenizer.special_tokens.values())
    boxes = []
    for position, token_id in enumerate(ids):
        token = tokenizer.token_bytes(token_id)
        color = SPECIAL_COLOR if token_id in specials else TOKEN_COLORS[position % len(TOKEN_COLORS)]
        boxes.append(
            '<span style="display: inline-flex; flex-direction: column; align-items: center; margin: 1px 0">'
            f'<span style="background: {color}; white-space: pre; padding: 0 1px; border-radius: 2px">'
            f"{html.escape(visible_token(token))}</span>"
            f'<span style="font-size: 0.65em; color: #666">{token_id}</span></span>'
        )
        if b"\n" in token:  # a zero-height, full-width item: the next token starts a new line
            boxes.append('<span style="flex-basis: 100%; height: 0"></span>')
    return (
        '<div style="display: flex; flex-wrap: wrap; align-items: flex-start; gap: 0 1px; '
        f'font-family: monospace; line-height: 1.3">{"".join(boxes)}</div>'
    )


def ladder_html(tokenizers: Mapping[int, Tokenizer], text: str) -> str:
    """`text` rendered by each tokenizer, one row per vocabulary size with its token count."""
    rows = []
    for vocab_size, tokenizer in tokenizers.items():
        n_tokens = len(tokenizer.encode(text))
        rows.append(
            '<div style="margin: 0.4em 0">'
            f"<div><b>vocabulary {vocab_size}</b>: {n_tokens} tokens, "
            f"{n_tokens / max(len(text), 1):.2f} per character</div>"
            f"{token_html(tokenizer, text)}</div>"
        )
    return "".join(rows)


def tokens_per_byte(tokenizer: Tokenizer, text: str) -> float:
    """Tokens per UTF-8 byte of `text` (encoded as ordinary text): 1.0 for bytes only, lower is shorter."""
    n_bytes = len(text.encode("utf-8"))
    if n_bytes == 0:
        raise ValueError("text is empty; tokens per byte needs at least one byte of text")
    return len(tokenizer.encode_ordinary(text)) / n_bytes


def compression_curve(tokenizer: Tokenizer, text: str, vocab_sizes: Sequence[int]) -> list[float]:
    """Tokens per byte of `text` for each vocabulary size, all cut from the one trained `tokenizer`."""
    return [tokens_per_byte(truncated(tokenizer, size), text) for size in vocab_sizes]


def compression_figure(
    curves: Mapping[str, tuple[Sequence[int], Sequence[float]]],
    *,
    title: str | None = None,
) -> Figure:
    """Tokens per byte against vocabulary size (log scale), one line per `{label: (sizes, values)}`.

    Returns:
        The figure; `fig.axes[0].lines` are the curves, in the order given.
    """
    if not curves:
        raise ValueError("curves is empty; pass at least one {label: (vocab_sizes, tokens_per_byte)}")
    fig = Figure(figsize=(6.4, 3.8), layout="constrained")
    ax = fig.add_subplot()
    for (label, (sizes, values)), marker in zip(curves.items(), "os^vD"):
        if len(sizes) != len(values):
            raise ValueError(f"curve {label!r} has {len(sizes)} sizes but {len(values)} values; pass one value per size")
        ax.plot(sizes, values, marker=marker, markersize=4, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("vocabulary size (256 bytes + merges)")
    ax.set_ylabel("tokens per byte (held-out text)")
    ax.set_ylim(bottom=0)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    return fig


def _doubling_sizes(largest: int) -> list[int]:
    """256, 512, 1024, ... below `largest`, then `largest` itself."""
    sizes = [256]
    while sizes[-1] * 2 < largest:
        sizes.append(sizes[-1] * 2)
    return sizes + [largest] if largest > 256 else sizes


class TokenExplorer(Explorer):
    """Type text; see it cut into tokens (coloured, with ids) at the vocabulary size you pick.

    Controls: `text` (a text area) and `vocab_size` (toggle buttons). State a caller (or a test)
    can read after any change: `ids` (the token ids shown), `n_tokens`, `tokens_per_char`,
    `tokenizer` (the one in use) and `message` (the summary line, or why the text cannot be shown).

    Args:
        tokenizer: a trained tokenizer; every size is cut from it with `truncated`.
        text: the initial text in the box.
        vocab_sizes: the sizes to offer, each from 256 to 256 + the number of merges (default:
            256, 512, 1024, ... up to the tokenizer's full size, which is always offered).
        vocab_size: the size selected at first (default: the largest).
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        text: str = "Once upon a time, a little fox lived in a town by the sea.",
        vocab_sizes: Sequence[int] | None = None,
        vocab_size: int | None = None,
    ) -> None:
        if vocab_sizes is None:
            vocab_sizes = _doubling_sizes(256 + len(tokenizer.merges))
        if not vocab_sizes:
            raise ValueError("vocab_sizes is empty; pass sizes such as (256, 512, 1024, 2048)")
        # Built once here, so switching sizes is instant (each keeps its own encoding cache).
        self.tokenizers = {size: truncated(tokenizer, size) for size in sorted(set(vocab_sizes))}
        initial = max(self.tokenizers) if vocab_size is None else vocab_size
        if initial not in self.tokenizers:
            raise ValueError(f"vocab_size={initial} is not one of vocab_sizes={sorted(self.tokenizers)}")
        self.ids: list[int] = []

        self.text = widgets.Textarea(
            value=text, description="text", layout=widgets.Layout(width="40em", height="6em")
        )
        self.vocab_size = widgets.ToggleButtons(
            options=list(self.tokenizers), value=initial, description="vocabulary",
            style={"button_width": "5em"},
        )
        self.status = widgets.HTML()
        self.view = widgets.HTML()
        self.watch(self.text, self.vocab_size)
        super().__init__([self.text, self.vocab_size, self.status, self.view])
        self.refresh()

    @property
    def tokenizer(self) -> Tokenizer:
        return self.tokenizers[self.vocab_size.value]

    @property
    def n_tokens(self) -> int:
        return len(self.ids)

    @property
    def tokens_per_char(self) -> float:
        return self.n_tokens / len(self.text.value) if self.text.value else 0.0


    def refresh(self) -> None:
        """Re-encode the text with the selected vocabulary and redraw."""
        text = self.text.value
        try:
            self.ids = self.tokenizer.encode(text)
        except ValueError as error:  # a special-token string typed as text: say why, show nothing
            self.ids = []
            self.view.value = ""
            self.status.value = f'<span style="color: #b00">{html.escape(str(error))}</span>'
            return
        self.view.value = ids_html(self.tokenizer, self.ids)
        self.status.value = (
            f"<b>{self.n_tokens}</b> tokens for {len(text)} characters "
            f"({len(text.encode('utf-8'))} bytes): <b>{self.tokens_per_char:.2f}</b> tokens per character"
        )


# The name the book uses: building the explorer is just constructing it (display it in Jupyter).
token_explorer = TokenExplorer
