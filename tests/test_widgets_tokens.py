"""The token explorer of chapter 02 (`llmcourse.widgets.tokens`).

The rendering is checked against the tokenizer's own encoding (one box per id, in order, whose
visible text decodes back to the input); the explorer is driven by setting its controls' values,
as a learner would; `truncated` is checked against training directly to the smaller size.
"""

from __future__ import annotations

import html
import re

import matplotlib.pyplot as plt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmcourse.data import corpus_text
from llmcourse.tokenizer import ENDOFTEXT, SPECIAL_TOKENS, Tokenizer
from llmcourse.widgets.tokens import (
    SPECIAL_COLOR,
    TOKEN_COLORS,
    TokenExplorer,
    compression_curve,
    compression_figure,
    ids_html,
    ladder_html,
    token_explorer,
    token_html,
    tokens_per_byte,
    truncated,
    visible_token,
)

N_SPECIAL = len(SPECIAL_TOKENS)
# One box: the token's text in a coloured span, then its id in a small span.
BOX = re.compile(r'background: (#[0-9a-f]{6});[^>]*>(.*?)</span><span[^>]*>(\d+)</span>', re.S)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    """A small TinyWorld tokenizer with 256 merges (vocabulary 512 + specials); trains in well under a second."""
    return Tokenizer.train(corpus_text(30_000, seed=0), vocab_size=512 + N_SPECIAL)


def boxes(rendering: str) -> list[tuple[str, str, int]]:
    """(colour, shown text, id) of every token box in a rendering, in order."""
    return [(color, html.unescape(text), int(token_id)) for color, text, token_id in BOX.findall(rendering)]


def from_visible(shown: str) -> str:
    return shown.replace("·", " ").replace("↵", "\n").replace("→", "\t")


# --- truncated ---------------------------------------------------------------------------------


def test_truncated_equals_training_to_the_smaller_size(tokenizer):
    text = corpus_text(30_000, seed=0)
    small = truncated(tokenizer, 300)
    assert small == Tokenizer.train(text, vocab_size=300 + N_SPECIAL)
    assert small.merges == tokenizer.merges[:44]
    assert small.vocab_size == 300 + N_SPECIAL
    assert list(small.special_tokens) == list(tokenizer.special_tokens)


def test_truncated_to_256_is_bytes_only_and_to_the_full_size_is_the_same_tokenizer(tokenizer):
    assert truncated(tokenizer, 256).encode("héllo") == list("héllo".encode("utf-8"))
    assert truncated(tokenizer, 256 + len(tokenizer.merges)) == tokenizer


@pytest.mark.parametrize("size", [255, 0, 513])
def test_truncated_rejects_sizes_out_of_range_naming_the_range(tokenizer, size):
    with pytest.raises(ValueError, match=rf"vocab_size={size}.*between 256.*and 512"):
        truncated(tokenizer, size)


# --- rendering ---------------------------------------------------------------------------------


def test_visible_token_shows_whitespace_and_escapes_a_cut_character():
    assert visible_token(b" the") == "·the"
    assert visible_token(b"\n    ") == "↵····"
    assert visible_token(b"\t") == "→"
    assert visible_token("é".encode("utf-8")[:1]) == "\\xc3"
    assert visible_token("猫".encode("utf-8")) == "猫"


def test_token_html_has_one_box_per_token_with_its_id_in_order(tokenizer):
    text = "Once upon a time, the little fox said hello.\nThe end."
    ids = tokenizer.encode(text)
    shown = boxes(token_html(tokenizer, text))
    assert [token_id for _, _, token_id in shown] == ids
    assert [from_visible(piece) for _, piece, _ in shown] == [tokenizer.decode([i]) for i in ids]
    assert "".join(from_visible(piece) for _, piece, _ in shown) == text


def test_neighbouring_tokens_get_different_colours(tokenizer):
    shown = boxes(token_html(tokenizer, "a b c d e f g h i j k"))
    colors = [color for color, _, _ in shown]
    assert all(c in TOKEN_COLORS for c in colors)
    assert all(a != b for a, b in zip(colors, colors[1:]))


def test_a_newline_token_breaks_the_line(tokenizer):
    rendering = token_html(tokenizer, "one\ntwo")
    newline_boxes = sum("↵" in piece for _, piece, _ in boxes(rendering))
    assert newline_boxes >= 1
    assert rendering.count("flex-basis: 100%") == newline_boxes


def test_token_html_escapes_markup(tokenizer):
    rendering = token_html(tokenizer, "<b>bold</b> & <script>alert(1)</script>")
    assert "<script>" not in rendering and "<b>" not in rendering
    text = "".join(from_visible(piece) for _, piece, _ in boxes(rendering))
    assert text == "<b>bold</b> & <script>alert(1)</script>"


def test_token_html_refuses_a_forged_special_token_and_draws_an_allowed_one_in_red(tokenizer):
    with pytest.raises(ValueError, match="allowed_special"):
        token_html(tokenizer, f"hello{ENDOFTEXT}")
    shown = boxes(token_html(tokenizer, f"hello{ENDOFTEXT}", allowed_special={ENDOFTEXT}))
    color, piece, token_id = shown[-1]
    assert (color, piece, token_id) == (SPECIAL_COLOR, ENDOFTEXT, tokenizer.special_tokens[ENDOFTEXT])


@given(st.text(max_size=40))
def test_any_text_renders_and_reads_back(text):
    bytes_only = Tokenizer([], special_tokens=())
    shown = boxes(ids_html(bytes_only, bytes_only.encode(text)))
    assert [token_id for _, _, token_id in shown] == list(text.encode("utf-8"))


def test_ladder_html_has_a_row_per_size_with_its_token_count(tokenizer):
    sizes = {256: truncated(tokenizer, 256), 512: tokenizer}
    rendering = ladder_html(sizes, "the little fox")
    counts = [int(n) for n in re.findall(r"<b>vocabulary \d+</b>: (\d+) tokens", rendering)]
    assert counts == [len("the little fox"), len(tokenizer.encode("the little fox"))]


# --- measuring ---------------------------------------------------------------------------------


def test_tokens_per_byte_counts_tokens_over_utf8_bytes(tokenizer):
    assert tokens_per_byte(truncated(tokenizer, 256), "héllo") == 1.0
    text = "Once upon a time, the fox"
    assert tokens_per_byte(tokenizer, text) == len(tokenizer.encode(text)) / len(text)
    with pytest.raises(ValueError, match="empty"):
        tokens_per_byte(tokenizer, "")


def test_compression_curve_matches_each_truncated_tokenizer_and_falls(tokenizer):
    text = corpus_text(5_000, seed=1)
    sizes = [256, 300, 400, 512]
    curve = compression_curve(tokenizer, text, sizes)
    assert curve == [tokens_per_byte(truncated(tokenizer, s), text) for s in sizes]
    assert curve[0] == 1.0 and all(a > b for a, b in zip(curve, curve[1:]))


def test_compression_figure_draws_one_line_per_curve_and_leaves_pyplot_alone():
    before = plt.get_fignums()
    fig = compression_figure({"prose": ([256, 512], [1.0, 0.5]), "code": ([256, 1024], [1.0, 0.4])}, title="t")
    assert plt.get_fignums() == before
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines] == ["prose", "code"]
    assert list(ax.lines[1].get_xdata()) == [256, 1024] and list(ax.lines[1].get_ydata()) == [1.0, 0.4]
    assert ax.get_xscale() == "log" and ax.get_title() == "t"
    with pytest.raises(ValueError, match="one value per size"):
        compression_figure({"bad": ([256, 512], [1.0])})
    with pytest.raises(ValueError, match="empty"):
        compression_figure({})


# --- the explorer ------------------------------------------------------------------------------


def test_explorer_follows_the_text_and_the_vocabulary_size(tokenizer):
    explorer = token_explorer(tokenizer, text="the little fox", vocab_sizes=(256, 400, 512))
    assert isinstance(explorer, TokenExplorer)
    assert explorer.vocab_size.value == 512  # the largest by default
    assert explorer.ids == tokenizer.encode("the little fox")

    explorer.vocab_size.value = 256  # what clicking a button does
    assert explorer.ids == list(b"the little fox")
    assert explorer.n_tokens == 14 and explorer.tokens_per_char == 1.0
    assert "<b>14</b> tokens for 14 characters" in explorer.message

    explorer.vocab_size.value = 400
    explorer.text.value = "Once upon a time"  # what typing does
    expected = truncated(tokenizer, 400).encode("Once upon a time")
    assert explorer.ids == expected
    assert explorer.tokens_per_char == pytest.approx(len(expected) / len("Once upon a time"))
    assert [token_id for _, _, token_id in boxes(explorer.view.value)] == expected


def test_explorer_explains_a_special_token_string_instead_of_crashing(tokenizer):
    explorer = TokenExplorer(tokenizer, text="fine")
    explorer.text.value = f"end{ENDOFTEXT}"
    assert explorer.ids == [] and explorer.view.value == ""
    assert "special token" in explorer.message and "&#x27;&lt;|endoftext|&gt;&#x27;" in explorer.message
    explorer.text.value = ""
    assert explorer.n_tokens == 0 and explorer.tokens_per_char == 0.0


def test_explorer_rejects_bad_sizes(tokenizer):
    with pytest.raises(ValueError, match="vocab_size=9999"):
        TokenExplorer(tokenizer, vocab_sizes=(256, 9999))
    with pytest.raises(ValueError, match="not one of vocab_sizes"):
        TokenExplorer(tokenizer, vocab_sizes=(256, 512), vocab_size=300)
    with pytest.raises(ValueError, match="empty"):
        TokenExplorer(tokenizer, vocab_sizes=())


def test_explorer_offers_doubling_sizes_up_to_the_full_vocabulary_by_default(tokenizer):
    assert list(TokenExplorer(tokenizer).tokenizers) == [256, 512]
    three_hundred = truncated(tokenizer, 300)
    assert list(TokenExplorer(three_hundred).tokenizers) == [256, 300]
    assert list(TokenExplorer(truncated(tokenizer, 256)).tokenizers) == [256]
