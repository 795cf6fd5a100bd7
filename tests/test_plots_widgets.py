"""The book's figures (`llmcourse.plots`) and explorers (`llmcourse.widgets`).

Each plot is checked on a small input against what it should draw (the data behind the image,
the bars, the lines, the labels); each explorer is driven by setting its controls' values, as a
learner would, and its new state is checked against the bigram table computed independently.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from matplotlib.colors import LogNorm, to_rgba

from llmcourse import plots
from llmcourse.bigram import CountingBigram, NeuralBigram, sample_bigram
from llmcourse.data.chars import CharVocab
from llmcourse.widgets.next_char import NextCharExplorer, apply_temperature, bigram_table, next_char_explorer


LABELS = ["\n", " ", "a", "b", "c"]


def probability_table(seed: int = 0, size: int = len(LABELS)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 20, (size, size), generator=generator).float() + 1
    return counts / counts.sum(dim=1, keepdim=True)


def tick_texts(ticks) -> list[str]:
    return [tick.get_text() for tick in ticks]


# --- plots -----------------------------------------------------------------------------------


def test_char_label_makes_whitespace_visible_and_keeps_other_characters():
    assert plots.char_label(" ") == "␣"
    assert plots.char_label("\n") == "↵"
    assert plots.char_label("\t") == "⇥"
    assert plots.char_label("a") == "a"
    assert plots.char_label("to be") == "to␣be"


def test_plot_functions_leave_pyplot_state_alone():
    before = plt.get_fignums()
    plots.bigram_heatmap(probability_table(), LABELS)
    plots.next_token_bars(probability_table()[0], LABELS)
    plots.loss_curve([2.0, 1.0])
    plots.generation_loop_diagram("ab", [("c", 0.7), ("a", 0.3)], "c")
    assert plt.get_fignums() == before


def test_heatmap_draws_the_whole_table_with_labelled_axes():
    table = probability_table()
    fig = plots.bigram_heatmap(table, LABELS, title="bigrams")
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), table.double().numpy())
    assert tick_texts(ax.get_xticklabels()) == ["↵", "␣", "a", "b", "c"]
    assert tick_texts(ax.get_yticklabels()) == ["↵", "␣", "a", "b", "c"]
    assert ax.get_xlabel() == "next character"
    assert ax.get_ylabel() == "current character"
    assert ax.get_title() == "bigrams"
    assert len(fig.axes) == 2, "the heatmap should come with a colour bar"
    assert fig.axes[1].get_ylabel() == "P(next | current)"
    assert isinstance(ax.images[0].norm, LogNorm)


def test_heatmap_keep_selects_rows_and_columns_in_the_given_order():
    table = probability_table(seed=3)
    fig = plots.bigram_heatmap(table, LABELS, keep=["c", " ", "a"], log_color=False)
    ax = fig.axes[0]
    rows = [4, 1, 2]  # the indices of "c", " ", "a" in LABELS
    expected = table.double().numpy()[np.ix_(rows, rows)]
    np.testing.assert_allclose(ax.images[0].get_array(), expected)
    assert tick_texts(ax.get_xticklabels()) == ["c", "␣", "a"]
    assert not isinstance(ax.images[0].norm, LogNorm)


def test_heatmap_accepts_integer_counts_and_draws_zeros_white():
    counts = torch.tensor([[0, 3], [5, 0]])
    fig = plots.bigram_heatmap(counts, ["x", "y"], colorbar_label="count")
    image = fig.axes[0].images[0]
    np.testing.assert_array_equal(image.get_array(), counts.numpy())
    assert fig.axes[1].get_ylabel() == "count"
    # A zero has no logarithm: the log norm masks it and the colour map paints it white.
    zero_and_three = image.norm(np.array([0.0, 3.0]))
    assert np.ma.is_masked(zero_and_three[0]) and not np.ma.is_masked(zero_and_three[1])
    assert tuple(image.cmap(zero_and_three)[0]) == pytest.approx(to_rgba("white"))


@pytest.mark.parametrize(
    "matrix, labels, keep, message",
    [
        (torch.ones(2, 3), ["a", "b"], None, "square"),
        (torch.ones(3), ["a", "b", "c"], None, "square"),
        (torch.ones(3, 3), ["a", "b"], None, "one label per row"),
        (torch.ones(2, 2), ["a", "b"], ["a", "z"], "'z'"),
    ],
)
def test_heatmap_rejects_bad_input_with_a_clear_message(matrix, labels, keep, message):
    with pytest.raises(ValueError, match=message):
        plots.bigram_heatmap(matrix, labels, keep=keep)


def test_next_token_bars_show_the_top_k_tallest_first():
    probs = torch.tensor([0.05, 0.4, 0.1, 0.3, 0.15])
    fig = plots.next_token_bars(probs, LABELS, top_k=3, highlight="b", title="after 'a'")
    ax = fig.axes[0]
    heights = [bar.get_height() for bar in ax.patches]
    assert heights == pytest.approx([0.4, 0.3, 0.15])
    assert tick_texts(ax.get_xticklabels()) == ["␣", "b", "c"]
    colors = [bar.get_facecolor() for bar in ax.patches]
    assert colors[1] == to_rgba(plots.HIGHLIGHT_COLOR)
    assert colors[0] == colors[2] == to_rgba(plots.BAR_COLOR)
    assert ax.get_title() == "after 'a'"
    assert ax.get_xlabel() == "next token"
    assert ax.get_ylabel() == "probability"


def test_next_token_bars_without_top_k_show_every_token_and_ties_keep_vocabulary_order():
    probs = torch.full((5,), 0.2)
    fig = plots.next_token_bars(probs, LABELS, top_k=99, xlabel="next character")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "next character"
    assert len(ax.patches) == 5
    assert tick_texts(ax.get_xticklabels()) == ["↵", "␣", "a", "b", "c"]


@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=30), st.integers(1, 40))
def test_next_token_bars_heights_are_the_sorted_probabilities(values, top_k):
    labels = [chr(ord("A") + i) for i in range(len(values))]
    fig = plots.next_token_bars(values, labels, top_k=top_k)
    heights = [bar.get_height() for bar in fig.axes[0].patches]
    assert heights == pytest.approx(sorted(values, reverse=True)[:top_k])


@pytest.mark.parametrize(
    "probs, labels, top_k",
    [(torch.ones(3), ["a", "b"], None), (torch.ones(2, 2), ["a", "b"], None), (torch.ones(2), ["a", "b"], 0)],
)
def test_next_token_bars_reject_bad_input(probs, labels, top_k):
    with pytest.raises(ValueError):
        plots.next_token_bars(probs, labels, top_k=top_k)


def test_loss_curve_plots_every_step_and_labelled_reference_lines():
    losses = [3.0, 2.5, 2.2, 2.1]
    references = {"uniform guess, ln V": math.log(20), "counting bigram": 2.05}
    fig = plots.loss_curve(losses, reference_lines=references, title="neural bigram")
    ax = fig.axes[0]
    curve, uniform, counting = ax.lines
    np.testing.assert_allclose(curve.get_xdata(), [0, 1, 2, 3])
    np.testing.assert_allclose(curve.get_ydata(), losses)
    assert list(uniform.get_ydata()) == pytest.approx([math.log(20)] * 2)
    assert list(counting.get_ydata()) == pytest.approx([2.05] * 2)
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == ["training loss", "uniform guess, ln V (2.996)", "counting bigram (2.050)"]
    assert ax.get_xlabel() == "training step"
    assert "nats" in ax.get_ylabel()
    assert ax.get_title() == "neural bigram"


def test_loss_curve_accepts_a_tensor_and_rejects_an_empty_history():
    fig = plots.loss_curve(torch.tensor([1.0, 0.5], requires_grad=True))
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), [1.0, 0.5])
    with pytest.raises(ValueError, match="non-empty"):
        plots.loss_curve([])


def test_generation_loop_diagram_shows_context_distribution_and_choice():
    context = "Once upon a time there was a very long context indeed"
    fig = plots.generation_loop_diagram(context, [("d", 0.6), ("e", 0.3), (" ", 0.1)], "e", max_context_chars=10)
    diagram, bars = fig.axes
    texts = " ".join(text.get_text() for text in diagram.texts)
    assert "…" + context[-10:] in texts
    assert context[:20] not in texts
    assert "“e”" in texts
    assert [bar.get_height() for bar in bars.patches] == pytest.approx([0.6, 0.3, 0.1])
    assert tick_texts(bars.get_xticklabels()) == ["d", "e", "␣"]
    assert bars.patches[1].get_facecolor() == to_rgba(plots.HIGHLIGHT_COLOR)
    with pytest.raises(ValueError, match="candidates"):
        plots.generation_loop_diagram("ab", [], "c")


def test_figure_to_png_returns_png_bytes():
    png = plots.figure_to_png(plots.loss_curve([1.0, 0.5]))
    assert png.startswith(b"\x89PNG\r\n\x1a\n")


# --- widgets ---------------------------------------------------------------------------------

TEXT = "the cat sat on the mat. the dog ate the hat.\nthe end.\n"


@pytest.fixture(scope="module")
def fitted():
    vocab = CharVocab.from_text(TEXT)
    model = CountingBigram.fit(vocab.encode(TEXT), vocab.size, smoothing=0.5)
    return model, vocab


def test_explorer_shows_the_bigram_row_of_the_last_character(fitted):
    model, vocab = fitted
    explorer = next_char_explorer(model, vocab, context="the c", top_k=5, continuation_length=30)
    assert isinstance(explorer, NextCharExplorer)
    assert explorer.conditioning_char == "c"
    torch.testing.assert_close(explorer.probs, model.probs[vocab.stoi["c"]].float())
    assert bytes(explorer.chart.value).startswith(b"\x89PNG")
    assert len(explorer.figure.axes[0].patches) == 5
    assert len(explorer.continuation) == 30
    assert "the c" in explorer.sample_view.value


def test_explorer_reacts_to_a_new_context(fitted):
    model, vocab = fitted
    explorer = next_char_explorer(model, vocab, context="the c")
    before_png = bytes(explorer.chart.value)
    explorer.context.value = "the d"
    assert explorer.conditioning_char == "d"
    torch.testing.assert_close(explorer.probs, model.probs[vocab.stoi["d"]].float())
    assert bytes(explorer.chart.value) != before_png
    # The continuation is now sampled from the row of "d" (same seed, so any change is the row's).
    expected = sample_bigram(model.probs, vocab.stoi["d"], explorer.continuation_length,
                             generator=torch.Generator().manual_seed(explorer.seed))
    assert explorer.continuation == vocab.decode(expected)
    assert "the d" in explorer.sample_view.value


def test_explorer_only_looks_at_the_last_character(fitted):
    model, vocab = fitted
    explorer = next_char_explorer(model, vocab, context="the cat sat on the mat")
    first_probs, first_sample = explorer.probs, explorer.continuation
    explorer.context.value = "a dog ate the hat"  # different text, same last character
    assert torch.equal(explorer.probs, first_probs)
    assert explorer.continuation == first_sample


def test_explorer_continuation_is_sample_bigram_with_the_same_seed(fitted):
    model, vocab = fitted
    explorer = next_char_explorer(model, vocab, context="the", continuation_length=40, seed=7)
    ids = sample_bigram(model.probs, vocab.stoi["e"], 40, generator=torch.Generator().manual_seed(7))
    assert explorer.continuation == vocab.decode(ids)


def test_explorer_temperature_reshapes_the_distribution(fitted):
    model, vocab = fitted
    explorer = next_char_explorer(model, vocab, context="th")
    row = model.probs[vocab.stoi["h"]].double()
    explorer.temperature.value = 0.5
    sharpened = row**2 / (row**2).sum()
    torch.testing.assert_close(explorer.probs.double(), sharpened, rtol=1e-5, atol=1e-6)
    assert explorer.probs.max() > row.max()
    assert "temperature 0.5" in explorer.figure.axes[0].get_title()


def test_explorer_new_sample_button_draws_another_continuation(fitted):
    model, vocab = fitted
    explorer = next_char_explorer(model, vocab, context="the ", seed=0)
    first = explorer.continuation
    explorer.resample.click()
    assert explorer.seed == 1
    assert explorer.continuation != first


def test_explorer_explains_an_unknown_character_or_an_empty_context(fitted):
    model, vocab = fitted
    explorer = next_char_explorer(model, vocab, context="the")
    explorer.context.value = "the Zebra"
    assert explorer.probs is None and explorer.figure is None
    assert "Z" in explorer.message
    assert bytes(explorer.chart.value) == b""
    explorer.context.value = ""
    assert "at least one character" in explorer.message
    explorer.context.value = "the"  # recovers once the text is usable again
    assert explorer.conditioning_char == "e"


def test_explorer_accepts_a_neural_bigram_and_a_plain_table(fitted):
    _, vocab = fitted
    untrained = NeuralBigram(vocab.size)  # zero logits: every next character equally likely
    explorer = next_char_explorer(untrained, vocab, context="a")
    torch.testing.assert_close(explorer.probs, torch.full((vocab.size,), 1 / vocab.size))
    table = probability_table(seed=1, size=vocab.size)
    explorer = next_char_explorer(table, vocab, context="a")
    torch.testing.assert_close(explorer.probs, table[vocab.stoi["a"]])


def test_bigram_table_rejects_the_wrong_model_or_vocabulary(fitted):
    model, vocab = fitted
    with pytest.raises(TypeError, match="CountingBigram"):
        bigram_table("not a model", vocab.size)
    with pytest.raises(ValueError, match="vocabulary"):
        bigram_table(model, vocab.size + 1)
    with pytest.raises(ValueError, match="continuation_length"):
        next_char_explorer(model, vocab, continuation_length=0)


@given(
    st.lists(st.floats(0.0, 1.0), min_size=2, max_size=20).filter(lambda v: sum(v) > 1e-3),
    st.floats(0.1, 5.0),
)
def test_apply_temperature_matches_powering_and_renormalising(values, temperature):
    probs = torch.tensor(values, dtype=torch.float64)
    probs = probs / probs.sum()
    expected = probs ** (1 / temperature)
    expected = expected / expected.sum()
    torch.testing.assert_close(apply_temperature(probs, temperature), expected, rtol=1e-6, atol=1e-9)


def test_apply_temperature_one_is_identity_and_rejects_non_positive():
    probs = probability_table(seed=2)
    torch.testing.assert_close(apply_temperature(probs, 1.0), probs)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="temperature"):
            apply_temperature(probs, bad)
