"""Chapter 17's induction heads: data, the attention-only model, head scores, losses, the recording."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from llmcourse.checks import ArgumentError
from llmcourse.induction import (
    InductionConfig, attention_only_model, attention_patterns, copy_loss_by_gap, gap_sequences,
    induction_scores, load_induction_run, loss_by_position, previous_token_scores, repeated_sequences,
    save_induction_run, token_losses, train_induction_model)

RECORDING = Path(__file__).resolve().parents[1] / "book" / "runs" / "induction"
SMALL = InductionConfig(vocab_size=16, block_size=16, n_embd=32, n_head=2, min_length=3, max_length=8,
                        batch_size=8, steps=30, lr=1e-2)


@pytest.fixture(scope="module")
def recorded():
    return load_induction_run(RECORDING)


def test_repeated_sequences_repeat_themselves():
    ids = repeated_sequences(4, 7, 10, torch.Generator().manual_seed(0))
    assert ids.shape == (4, 14) and ids.dtype == torch.long
    assert torch.equal(ids[:, 7:], ids[:, :7]) and int(ids.max()) < 10
    gapped = gap_sequences(3, 5, 4, 10, torch.Generator().manual_seed(0))
    assert gapped.shape == (3, 14) and torch.equal(gapped[:, :5], gapped[:, 9:])
    with pytest.raises(ArgumentError):
        repeated_sequences(2, 0, 10)


def test_the_model_has_no_mlp_parameters():
    model = attention_only_model(SMALL.model_config())
    assert not [name for name, _ in model.named_parameters() if ".mlp." in name]
    x = torch.randn(2, 5, SMALL.n_embd)
    assert torch.equal(model.blocks[0].mlp(x), torch.zeros_like(x))


def test_patterns_are_causal_distributions_and_the_model_is_restored():
    model = attention_only_model(SMALL.model_config()).train()
    ids = repeated_sequences(3, 5, SMALL.vocab_size)
    patterns = attention_patterns(model, ids)
    assert patterns.shape == (SMALL.n_layer, SMALL.n_head, 10, 10)
    torch.testing.assert_close(patterns.sum(-1), torch.ones(SMALL.n_layer, SMALL.n_head, 10))
    assert torch.all(patterns.triu(diagonal=1) == 0)
    assert model.training and all(block.attn.attention_fn.__name__ == "attention_fast" for block in model.blocks)


def test_scores_of_perfect_heads():
    length, t = 5, 10
    previous = torch.zeros(t, t)
    previous[0, 0] = 1
    previous[torch.arange(1, t), torch.arange(t - 1)] = 1
    induction = torch.eye(t)
    rows = torch.arange(length, t)
    induction[rows] = 0
    induction[rows, rows - length + 1] = 1
    scores = torch.stack([previous, induction])
    torch.testing.assert_close(previous_token_scores(scores), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(induction_scores(scores, length)[1], torch.tensor(1.0))
    with pytest.raises(ArgumentError):
        induction_scores(scores, 6)  # T = 10 < 2 * 6


def test_loss_by_position_matches_cross_entropy():
    model = attention_only_model(SMALL.model_config()).eval()
    ids = repeated_sequences(4, 6, SMALL.vocab_size)
    logits, _ = model(ids)
    expected = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none").mean(0)
    torch.testing.assert_close(loss_by_position(model, ids), expected)


def test_a_long_sequence_is_read_with_a_sliding_window():
    model = attention_only_model(SMALL.model_config()).eval()
    ids = torch.randint(SMALL.vocab_size, (2, 24))
    with torch.no_grad():
        losses = token_losses(model, ids)
        # the prediction after position 20 sees only positions 5..20
        logits, _ = model(ids[:, 5:21])
    torch.testing.assert_close(losses[:, 20], F.cross_entropy(logits[:, -1], ids[:, 21], reduction="none"))


def test_recording_copies_inside_the_window_only(recorded):
    model, history, config = recorded
    assert config == InductionConfig() and len(history.second_half) == config.steps
    ids = repeated_sequences(64, 20, config.vocab_size, torch.Generator().manual_seed(1))
    by_position = loss_by_position(model, ids)
    assert by_position[:19].mean() > math.log(config.vocab_size) - 0.2  # the first copy: random
    assert by_position[20:].mean() < 1.0  # the repeat: copied (the recording measured about 0.6)
    scores = induction_scores(attention_patterns(model, ids), 20)
    assert scores[1].max() > 0.5 and scores[0].max() < 0.1  # the induction head sits in layer 1
    losses = copy_loss_by_gap(model, 16, [16, 56], batch_size=16, generator=torch.Generator().manual_seed(2))
    assert losses[0] < 1.5 and losses[1] > math.log(config.vocab_size)  # gap 56 > 64 - 16: out of the window


def test_a_short_run_lowers_the_loss_and_round_trips(tmp_path):
    model, history = train_induction_model(SMALL, progress=False)
    assert sum(history.losses[-5:]) / 5 < sum(history.losses[:5]) / 5
    save_induction_run(tmp_path, model, history, SMALL)
    loaded, loaded_history, loaded_config = load_induction_run(tmp_path)
    assert loaded_config == SMALL and loaded_history == history
    ids = repeated_sequences(2, 4, SMALL.vocab_size)
    torch.testing.assert_close(loaded(ids)[0], model(ids)[0])


def test_config_rejects_repeats_that_do_not_fit():
    with pytest.raises(ArgumentError, match="max_length"):
        InductionConfig(block_size=32, max_length=20)


def test_figures_draw_the_numbers(recorded):
    from llmcourse.widgets.induction import gap_figure, head_scores_figure, induction_pattern_figure, phase_change_figure

    model, history, config = recorded
    fig = phase_change_figure(history, config.vocab_size, smooth=10)
    assert len(fig.axes[0].lines) == 3 and fig.axes[0].lines[2].get_ydata()[0] == pytest.approx(math.log(128))
    patterns = attention_patterns(model, repeated_sequences(4, 6, config.vocab_size))
    fig = induction_pattern_figure(patterns, (0, 1), (1, 1), 6)
    torch.testing.assert_close(torch.as_tensor(fig.axes[1].images[0].get_array().data), patterns[1, 1])
    fig = head_scores_figure(previous_token_scores(patterns), induction_scores(patterns, 6))
    assert len(fig.axes[0].patches) == 2 * config.n_layer * config.n_head
    fig = gap_figure([0, 8], [0.5, 5.0], 64, 16, 128)
    assert list(fig.axes[0].lines[0].get_ydata()) == [0.5, 5.0]
    # gap 47 is the last copyable one (the key's previous token, 16 + 47 = 63 back, is the window's
    # first), gap 48 the first that is not: the edge lies between them
    assert list(fig.axes[0].lines[1].get_xdata()) == [47.5, 47.5]
    with pytest.raises(ArgumentError):
        gap_figure([0], [1.0, 2.0], 64, 16, 128)
