"""The decoding explorer of chapter 11, driven without a kernel, on the model chapter 10 recorded.

The distribution it shows is checked against `sampling.process` applied by hand, the number of
tokens it keeps against each filter's definition, and the sample against `generate` itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmcourse.runs import load_model
from llmcourse.sampling import SamplingSettings, process
from llmcourse.widgets.decoding import (
    DecodingExplorer, decoding_explorer, distribution_figure, next_token_logits, prompt_ids,
)

MODEL = Path(__file__).resolve().parents[1] / "book" / "runs" / "cpu-tiny" / "model.pt"


@pytest.fixture(scope="module")
def trained():
    if not MODEL.is_file():
        pytest.skip(f"{MODEL} is not recorded")
    return load_model(MODEL, device="cpu")


def test_next_token_logits_are_the_last_position_of_the_model(trained):
    model, tokenizer = trained
    ids = prompt_ids(tokenizer, "Once upon a time")
    assert ids[0] == tokenizer.special_tokens["<|endoftext|>"]
    with torch.no_grad():
        expected = model(torch.tensor([ids]))[0][0, -1]
    torch.testing.assert_close(next_token_logits(model, tokenizer, "Once upon a time"), expected)


def test_explorer_shows_the_processed_distribution_and_follows_its_controls(trained):
    model, tokenizer = trained
    explorer = decoding_explorer(model, tokenizer, prompt="The capital of Ardmark is", continuation_length=8)
    assert isinstance(explorer, DecodingExplorer)
    logits = next_token_logits(model, tokenizer, "The capital of Ardmark is")
    torch.testing.assert_close(explorer.probs, torch.softmax(logits, -1))  # defaults change nothing
    assert explorer.kept == tokenizer.vocab_size and explorer.chart.value[:4] == b"\x89PNG"

    explorer.top_k.value = 7
    assert explorer.kept == 7 and explorer.settings.top_k == 7
    explorer.top_k.value = 0
    assert explorer.settings.top_k is None
    explorer.temperature.value = 2.0
    explorer.min_p.value = 0.1
    expected = torch.softmax(process(logits[None], None, SamplingSettings(temperature=2.0, min_p=0.1))[0], -1)
    torch.testing.assert_close(explorer.probs, expected)
    assert explorer.kept == int((expected > 0).sum()) and f"{explorer.kept} of" in explorer.message

    explorer.temperature.value = 0.0  # greedy: one token, and the sample is generate's greedy text
    assert explorer.kept == 1
    ids = torch.tensor([prompt_ids(tokenizer, "The capital of Ardmark is")])
    greedy = model.generate(ids, 8, settings=explorer.settings)
    assert explorer.continuation == tokenizer.decode(greedy[0, ids.shape[1]:].tolist())

    explorer.prompt.value = "Once upon a time, there was a"
    assert "Once upon a time" in explorer.sample_view.value


def test_resample_draws_with_the_next_seed(trained):
    model, tokenizer = trained
    explorer = DecodingExplorer(model, tokenizer, temperature=1.5, continuation_length=12, seed=3)
    first = explorer.continuation
    explorer.resample.click()
    assert explorer.seed == 4
    explorer.seed = 3
    explorer.refresh()
    assert explorer.continuation == first


def test_distribution_figure_counts_what_the_settings_keep(trained):
    model, tokenizer = trained
    logits = next_token_logits(model, tokenizer, "Once upon a time, there was a")
    labels = [tokenizer.decode([i]) for i in range(tokenizer.vocab_size)]
    fig = distribution_figure(logits, SamplingSettings(top_k=4), labels, bars=10)
    ax = fig.axes[0]
    assert len(ax.patches) == 20  # the model's bar and the processed bar for each of 10 tokens
    assert ax.get_title() == f"4 of {tokenizer.vocab_size} tokens can be drawn"
    with pytest.raises(ValueError, match="bars"):
        distribution_figure(logits, SamplingSettings(), labels, bars=0)
